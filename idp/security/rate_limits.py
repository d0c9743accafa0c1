"""Rate limits (issue 4; issue 14 item 10) on the `limits` library: fixed windows, several
per rule.

- Login, passkey-options, authorize, reset and token limits are counted in Redis when IDP_REDIS_URL
  is set, so each limit holds across every process. While Redis cannot be reached they fall back
  to per-process counters (and say so in the log, once per outage); Redis is tried again
  after FALLBACK_SECONDS, so everything resumes by itself.
- The site-wide limit per client IP is always per process: it is checked on every request,
  static documents included, and must not cost a network round trip. nginx's `limit_req`
  (deploy/nginx.conf) is the cross-process first line in front of it.

Limits are checked before any expensive work: callers are admitted first, then run Argon2.
Identifiers are keyed digests (never raw account names) so Redis holds no usernames.

A login's limits fit an office behind one NAT without helping a password sprayer:
- `login_failures_ip` is a budget only failed credential checks spend: every 401 a
  credential step answers (wrong password or unknown name, wrong code or backup code,
  failed passkey assertion, a locked account's refusal too: a right password must cost
  what a wrong one does). `admit` tests it before the step, `record` spends it after a
  failure. Attempts admitted together before any failed are all counted afterwards; the
  flood guard bounds such a burst.
- `login_ip` is the flood guard: every credential step is counted, successful or not.
- `passkey_options_ip` counts options requests apart: the login page asks on every load.
- `login_account` counts every step per account name typed, known or not.
- `authorize_ip` counts the authorization requests that park a login or consent transaction
  (issue 15): state anyone can make idp hold without signing in.
- `reset_ip` and `reset_account` count "Forgot password?" requests (issue 18) per client IP
  and per account name typed, known or not: each may send a mail.
- Per-IP keys are the address, or its /64 for IPv6 (a subscriber's prefix, whose
  addresses they may rotate through at will).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter

from idp.observability import metrics
from idp.settings import Settings

log = logging.getLogger("idp.rate_limits")

FALLBACK_SECONDS = 5.0  # how long to stay on per-process counters after a Redis failure
SHARED_SCOPES = (
    "login_ip",
    "login_failures_ip",
    "login_account",
    "passkey_options_ip",
    "authorize_ip",
    "token_client",
    "reset_ip",
    "reset_account",
)
LOCAL_SCOPES = ("site_ip",)
IP_SCOPES = ("login_ip", "login_failures_ip", "passkey_options_ip", "authorize_ip", "site_ip", "reset_ip")
FAILURE_SCOPES = ("login_failures_ip",)  # spent by `record` after a failure, only tested by `admit`
IPV6_PREFIX = 64


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # seconds until the window that refused the request ends
    scope: str = ""


ALLOWED = Verdict(True)
Operation = Callable[[FixedWindowRateLimiter, tuple[RateLimitItem, ...], str, str], Verdict]


def _rules(value: str) -> tuple[RateLimitItem, ...]:
    return () if value.strip().lower() == "off" else tuple(parse_many(value))


def ip_bucket(address: str) -> str:
    """The address a per-IP limit counts: IPv4 as it is, IPv6 by its /64 (an IPv4-mapped
    IPv6 address is the IPv4 one); anything else (no address known: "-") as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class RateLimits:
    def __init__(self, settings: Settings, *, digest: Callable[[str], str]) -> None:
        self._digest = digest  # the keyring's keyed digest: names and addresses never reach Redis
        self.rules: dict[str, tuple[RateLimitItem, ...]] = {
            "login_ip": _rules(settings.rate_limit_login_ip),
            "login_failures_ip": _rules(settings.rate_limit_login_failures_ip),
            "login_account": _rules(settings.rate_limit_login_account),
            "passkey_options_ip": _rules(settings.rate_limit_passkey_options_ip),
            "authorize_ip": _rules(settings.rate_limit_authorize_ip),
            "token_client": _rules(settings.rate_limit_token_client),
            "site_ip": _rules(settings.rate_limit_site_ip),
            "reset_ip": _rules(settings.rate_limit_reset_ip),
            "reset_account": _rules(settings.rate_limit_reset_account),
        }
        self._local = FixedWindowRateLimiter(MemoryStorage())
        self._shared: FixedWindowRateLimiter | None = None
        self._shared_errors: tuple[type[BaseException], ...] = (StorageError, OSError)
        if settings.redis_url:
            # imported only with Redis configured: the client and its asyncio half are 7 MB
            # of every process's resident memory, which the in-process deployment never uses
            import redis

            self._shared_errors = (StorageError, redis.RedisError, OSError)
            storage = RedisStorage(
                settings.redis_url,
                key_prefix="idp:limits",
                wrap_exceptions=True,
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
            )
            self._shared = FixedWindowRateLimiter(storage)
        self._shared_down_until = 0.0
        self._lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """True when login and token limits are counted across processes (Redis)."""
        return self._shared is not None

    def hit(self, scope: str, key: str) -> Verdict:
        """Counts one request against every window of the rule; refused if any is full.
        May block on Redis for a shared scope: call it off the event loop then."""
        return self._run(self._hit, scope, key)

    def admit(self, scope: str, key: str) -> Verdict:
        """Whether a request may go on: a failure budget (FAILURE_SCOPES) is only tested
        here, as `record` spends it; any other rule counts the request (`hit`)."""
        return self._run(self._test if scope in FAILURE_SCOPES else self._hit, scope, key)

    def record(self, scope: str, key: str) -> None:
        """Spends one of a failure budget in every window of the rule (the step failed)."""
        self._run(self._spend, scope, key)

    def _run(self, operation: Operation, scope: str, key: str) -> Verdict:
        items = self.rules[scope]
        if not items:
            return ALLOWED
        limiter = self._limiter_for(scope)
        key = self._counter_key(scope, key)
        try:
            return operation(limiter, items, scope, key)
        except self._shared_errors as exc:
            if limiter is self._local:
                raise
            self._fall_back(exc)
            return operation(self._local, items, scope, key)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one RateLimits per process, kept for its life
    def _counter_key(self, scope: str, key: str) -> str:
        """The counter's name: the keyed digest of scope and bucket. Remembered, because every
        request pays it for the site-wide limit (parsing the address and an HMAC were a fifth
        of a JWKS request's time); bounded, because names and addresses come from clients."""
        return self._digest(f"rate-limit:{scope}:{ip_bucket(key) if scope in IP_SCOPES else key}")

    def needs_network(self, scope: str) -> bool:
        return bool(self.rules[scope]) and scope in SHARED_SCOPES and self._shared is not None

    def _limiter_for(self, scope: str) -> FixedWindowRateLimiter:
        if scope in SHARED_SCOPES and self._shared is not None and time.monotonic() >= self._shared_down_until:
            return self._shared
        return self._local

    def _hit(self, limiter: FixedWindowRateLimiter, items: tuple[RateLimitItem, ...], scope: str, key: str) -> Verdict:
        for item in items:
            if not limiter.hit(item, scope, key):
                return self._refused(limiter, item, scope, key)
        return ALLOWED

    def _test(self, limiter: FixedWindowRateLimiter, items: tuple[RateLimitItem, ...], scope: str, key: str) -> Verdict:
        for item in items:
            if not limiter.test(item, scope, key):
                return self._refused(limiter, item, scope, key)
        return ALLOWED

    @staticmethod
    def _spend(limiter: FixedWindowRateLimiter, items: tuple[RateLimitItem, ...], scope: str, key: str) -> Verdict:
        for item in items:
            limiter.hit(item, scope, key)  # counted even past the limit: the failure happened
        return ALLOWED

    @staticmethod
    def _refused(limiter: FixedWindowRateLimiter, item: RateLimitItem, scope: str, key: str) -> Verdict:
        metrics.rate_limit_hits.labels(scope).inc()
        reset_at = limiter.get_window_stats(item, scope, key).reset_time
        return Verdict(False, max(1, math.ceil(reset_at - time.time())), scope)

    def _fall_back(self, exc: BaseException) -> None:
        with self._lock:
            first = self._shared_down_until == 0.0 or time.monotonic() >= self._shared_down_until + FALLBACK_SECONDS
            self._shared_down_until = time.monotonic() + FALLBACK_SECONDS
        if first:
            log.warning(
                "rate limits: Redis unreachable (%s); counting per process until it answers again", type(exc).__name__
            )
