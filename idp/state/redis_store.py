"""Redis-backed state store, shared by every idp process (needs Redis >= 6.2 for GETDEL).

Every Redis error surfaces as StoreUnavailable, so callers handle one exception and fail
closed; the one exception is incrementing a non-counter, a programming error (ValueError).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from idp.state.store import StoreUnavailable, verify_ttl_seconds, verify_value

# INCR and EXPIRE in one script so a counter can never be left without a TTL (which would
# lock a rate-limit window forever). TTL == -1 means INCR has just created the key; a
# running counter keeps its original expiry: fixed window.
_INCR_IN_WINDOW = """
local count = redis.call('INCR', KEYS[1])
if redis.call('TTL', KEYS[1]) == -1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return count
"""


class RedisStore:
    def __init__(self, url: str, *, key_prefix: str = "idp:", socket_timeout: float = 1.0) -> None:
        self._prefix = key_prefix
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            decode_responses=False,
            # no retries: INCR and GETDEL are not idempotent, and a request that waits on a
            # down Redis should fail fast rather than queue behind backoff sleeps
            retry=Retry(NoBackoff(), 0),
        )
        self._incr_script = self._client.register_script(_INCR_IN_WINDOW)

    def __repr__(self) -> str:
        # never the URL: it may carry a password
        return f"RedisStore(key_prefix={self._prefix!r})"

    def get(self, key: str) -> bytes | None:
        with _unavailable_on_error("get"):
            return cast("bytes | None", self._client.get(self._key(key)))  # the client is made without decode_responses

    def set(self, key: str, value: bytes, *, ttl_seconds: int) -> None:
        verify_ttl_seconds(ttl_seconds)
        verify_value(value)
        with _unavailable_on_error("set"):
            self._client.set(self._key(key), value, ex=ttl_seconds)

    def add(self, key: str, value: bytes, *, ttl_seconds: int) -> bool:
        verify_ttl_seconds(ttl_seconds)
        verify_value(value)
        with _unavailable_on_error("add"):
            return bool(self._client.set(self._key(key), value, ex=ttl_seconds, nx=True))

    def take(self, key: str) -> bytes | None:
        with _unavailable_on_error("take"):
            return cast("bytes | None", self._client.getdel(self._key(key)))

    def incr(self, key: str, *, ttl_seconds: int) -> int:
        verify_ttl_seconds(ttl_seconds)
        with _unavailable_on_error("incr"):
            try:
                return int(self._incr_script(keys=[self._key(key)], args=[ttl_seconds]))
            except redis.ResponseError as exc:
                if "not an integer" not in str(exc):
                    raise
                # a programming error, reported as MemoryStore reports it
                raise ValueError("value is not an integer counter") from None

    def delete(self, key: str) -> None:
        with _unavailable_on_error("delete"):
            self._client.delete(self._key(key))

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._client.close()

    def _key(self, key: str) -> str:
        return self._prefix + key


@contextmanager
def _unavailable_on_error(operation: str) -> Iterator[None]:
    try:
        yield
    except redis.RedisError as exc:
        # the class name only: redis-py messages name host and port, and that is for logs
        # (kept on __cause__), not for whoever catches StoreUnavailable
        raise StoreUnavailable(f"state store {operation} failed: {type(exc).__name__}") from exc
