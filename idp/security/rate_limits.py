"""Rate limits (issue 4) on the `limits` library: fixed windows, several per rule.

- Login steps per client IP and per account name, and token requests per client, are
  counted in Redis when IDP_REDIS_URL is set, so the limit holds across every process.
  While Redis cannot be reached they fall back to per-process counters (and say so in the
  log, once per outage); Redis is tried again after FALLBACK_SECONDS, so everything
  resumes by itself.
- The site-wide limit per client IP is always per process: it is checked on every request,
  static documents included, and must not cost a network round trip. nginx's `limit_req`
  (deploy/nginx.conf) is the cross-process first line in front of it.

Limits are checked before any expensive work: callers hit the limit first, then run Argon2.
Identifiers are keyed digests (never raw account names) so Redis holds no usernames.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import FixedWindowRateLimiter

from idp.observability import metrics
from idp.settings import Settings

log = logging.getLogger("idp.rate_limits")

FALLBACK_SECONDS = 5.0  # how long to stay on per-process counters after a Redis failure
SHARED_SCOPES = ("login_ip", "login_account", "token_client")
LOCAL_SCOPES = ("site_ip",)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # seconds until the window that refused the request ends
    scope: str = ""


ALLOWED = Verdict(True)


def _rules(value: str) -> tuple[RateLimitItem, ...]:
    return () if value.strip().lower() == "off" else tuple(parse_many(value))


class RateLimits:
    def __init__(self, settings: Settings, *, digest: Callable[[str], str]) -> None:
        self._digest = digest  # the keyring's keyed digest: names and addresses never reach Redis
        self.rules: dict[str, tuple[RateLimitItem, ...]] = {
            "login_ip": _rules(settings.rate_limit_login_ip),
            "login_account": _rules(settings.rate_limit_login_account),
            "token_client": _rules(settings.rate_limit_token_client),
            "site_ip": _rules(settings.rate_limit_site_ip),
        }
        self._local = FixedWindowRateLimiter(MemoryStorage())
        self._shared: FixedWindowRateLimiter | None = None
        if settings.redis_url:
            storage = RedisStorage(settings.redis_url, key_prefix="idp:limits", wrap_exceptions=True,
                                   socket_timeout=0.5, socket_connect_timeout=0.5)
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
        items = self.rules[scope]
        if not items:
            return ALLOWED
        limiter = self._limiter_for(scope)
        key = self._digest(f"rate-limit:{scope}:{key}")
        try:
            return self._hit(limiter, items, scope, key)
        except (StorageError, redis.RedisError, OSError) as exc:
            if limiter is self._local:
                raise
            self._fall_back(exc)
            return self._hit(self._local, items, scope, key)

    def needs_network(self, scope: str) -> bool:
        return bool(self.rules[scope]) and scope in SHARED_SCOPES and self._shared is not None

    def _limiter_for(self, scope: str) -> FixedWindowRateLimiter:
        if scope in SHARED_SCOPES and self._shared is not None and time.monotonic() >= self._shared_down_until:
            return self._shared
        return self._local

    def _hit(self, limiter: FixedWindowRateLimiter, items: tuple[RateLimitItem, ...], scope: str, key: str) -> Verdict:
        for item in items:
            if not limiter.hit(item, scope, key):
                metrics.rate_limit_hits.labels(scope).inc()
                reset_at = limiter.get_window_stats(item, scope, key).reset_time
                return Verdict(False, max(1, math.ceil(reset_at - time.time())), scope)
        return ALLOWED

    def _fall_back(self, exc: BaseException) -> None:
        with self._lock:
            first = self._shared_down_until == 0.0 or time.monotonic() >= self._shared_down_until + FALLBACK_SECONDS
            self._shared_down_until = time.monotonic() + FALLBACK_SECONDS
        if first:
            log.warning("rate limits: Redis unreachable (%s); counting per process until it answers again",
                        type(exc).__name__)
