"""private_key_jwt clients' `jwks_uri` key sets (RFC 7523 §2.2, OIDC Core §9), per process.

Fetched off the request path, in a background thread, one fetch per URI at a time (single
flight). A token request never waits on the network longer than REQUEST_WAIT_SECONDS: it
starts the fetch it needs and waits for it at most until that fetch's own bound, which every
request sharing the fetch shares, so a flood of forged assertions costs one wait, not one
each. Failures are remembered with exponential backoff (no new fetch while it runs), and an
unknown `kid` asks the RP again at most once per KID_REFETCH_SECONDS."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from joserfc.jwk import KeySet

from idp.security.outbound import Outbound, OutboundError, Reply

log = logging.getLogger("idp.oidc")

REQUEST_WAIT_SECONDS = 0.5  # the longest a token request waits for a key set fetch
FRESH_SECONDS = 300  # a fetched key set is used this long without asking the RP again
STALE_SECONDS = 3600  # …and, while refreshes fail, still used up to this age
KID_REFETCH_SECONDS = 60  # an unknown kid refetches a URI at most once per this interval
BACKOFF_SECONDS = (5.0, 300.0)  # after a failure, no fetch for 5 s, doubling per failure up to 300 s
_NEVER = float("-inf")


class KeySetUnavailable(Exception):
    """No usable key set for this URI right now (nothing fetched yet, or failing)."""

    public_message = "The client's keys could not be loaded; try again later."  # no URL, no kid


@dataclass
class _Flight:
    wait_until: float  # requests sharing this fetch stop waiting then, whatever its state
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Entry:
    keys: KeySet | None = None
    kids: frozenset[str] = frozenset()
    fetched_at: float = _NEVER
    failures: int = 0
    retry_at: float = _NEVER  # the negative cache: no fetch before this
    kid_refetched_at: float = _NEVER
    flight: _Flight | None = None


class ClientKeySets:
    """One per process (OidcContext.client_key_sets), shared by every request thread."""

    def __init__(self, outbound: Outbound, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.outbound, self.monotonic = outbound, monotonic
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, uri: str, *, kid: str | None) -> KeySet:
        """The key set to check an assertion with `kid` against; raises KeySetUnavailable."""
        with self._lock:
            entry = self._entries.setdefault(uri, _Entry())
            now = self.monotonic()
            flight = self._fetch_if_needed(uri, entry, kid, now)
            if flight is None or self._usable(entry, kid, now):
                return self._current(entry, now)
        flight.done.wait(max(0.0, flight.wait_until - self.monotonic()))
        with self._lock:
            return self._current(entry, self.monotonic())

    def _fetch_if_needed(self, uri: str, entry: _Entry, kid: str | None, now: float) -> _Flight | None:
        """The fetch this request may wait for: one in flight, or one started now if needed."""
        if entry.flight is not None:
            return entry.flight
        unknown_kid = self._unknown_kid(entry, kid) and now - entry.kid_refetched_at >= KID_REFETCH_SECONDS
        if not (entry.keys is None or now - entry.fetched_at >= FRESH_SECONDS or unknown_kid):
            return None
        if now < entry.retry_at:
            return None  # failed recently: answer from what we have
        if unknown_kid:
            entry.kid_refetched_at = now
        entry.flight = _Flight(wait_until=now + REQUEST_WAIT_SECONDS)
        threading.Thread(target=self._fetch, args=(uri, entry), name="idp-client-jwks", daemon=True).start()
        return entry.flight

    def _usable(self, entry: _Entry, kid: str | None, now: float) -> bool:
        """Good enough to answer without waiting (a refresh may still be under way)."""
        return entry.keys is not None and now - entry.fetched_at < STALE_SECONDS and not self._unknown_kid(entry, kid)

    @staticmethod
    def _unknown_kid(entry: _Entry, kid: str | None) -> bool:
        return entry.keys is not None and kid is not None and kid not in entry.kids

    @staticmethod
    def _current(entry: _Entry, now: float) -> KeySet:
        if entry.keys is None or now - entry.fetched_at >= STALE_SECONDS:
            raise KeySetUnavailable
        return entry.keys

    def _fetch(self, uri: str, entry: _Entry) -> None:
        keys: KeySet | None = None
        try:
            keys = _key_set(self.outbound.get(uri))
        except (OutboundError, ValueError) as exc:
            log.warning("fetching a client's jwks_uri %s failed: %s", uri, exc)
        except Exception:  # noqa: BLE001 - the flight must end whatever happened
            log.exception("fetching a client's jwks_uri %s failed", uri)
        with self._lock:
            self._record(entry, keys, self.monotonic())
            flight, entry.flight = entry.flight, None
        if flight is not None:
            flight.done.set()

    @staticmethod
    def _record(entry: _Entry, keys: KeySet | None, now: float) -> None:
        if keys is not None:
            entry.keys, entry.fetched_at, entry.failures, entry.retry_at = keys, now, 0, _NEVER
            entry.kids = frozenset(k.kid for k in keys.keys if k.kid)
            return
        entry.failures += 1
        first, most = BACKOFF_SECONDS
        entry.retry_at = now + min(first * 2 ** (entry.failures - 1), most)


def _key_set(reply: Reply) -> KeySet:
    """The JWK Set a 200 answer holds, or ValueError (a redirect is not followed: it fails)."""
    if reply.status != 200:
        raise ValueError(f"HTTP {reply.status}")
    data = json.loads(reply.body)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWK Set")
    try:
        return KeySet.import_key_set(data)
    except Exception as exc:  # noqa: BLE001 - joserfc raises several kinds for a bad key
        raise ValueError(f"a key could not be read ({type(exc).__name__})") from None
