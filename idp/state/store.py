"""The short-lived state store: one small interface for everything that may expire.

Login transactions, MFA and WebAuthn challenges, rate-limit windows and replay markers live
here (DESIGN.md §2, "Durable vs ephemeral"). Two real implementations share one contract:
`MemoryStore` (one process) and `RedisStore` (any number of processes).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class StoreUnavailable(RuntimeError):
    """The backend cannot be reached or cannot take more data; the message holds no secrets."""


@runtime_checkable
class StateStore(Protocol):
    def get(self, key: str) -> bytes | None:
        """The value, or None when absent or expired."""

    def set(self, key: str, value: bytes, *, ttl_seconds: int) -> None:
        """Store `value`, replacing any previous one and its TTL."""

    def add(self, key: str, value: bytes, *, ttl_seconds: int) -> bool:
        """Store only if absent (SET NX); True if stored. For once-only markers."""

    def take(self, key: str) -> bytes | None:
        """Atomic get-and-delete (GETDEL): under races exactly one caller gets the value."""

    def incr(self, key: str, *, ttl_seconds: int) -> int:
        """Atomic increment; the TTL is set when the counter is created (fixed window)."""

    def delete(self, key: str) -> None:
        """Remove the key if present."""

    def ping(self) -> bool:
        """True when the backend answers; never raises."""

    def close(self) -> None:
        """Release connections."""


def verify_ttl_seconds(ttl_seconds: int) -> int:
    # bool is an int subclass, but `ttl_seconds=True` is always a bug
    if type(ttl_seconds) is not int or ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be a positive int")
    return ttl_seconds


def verify_value(value: bytes) -> bytes:
    # Redis would silently encode a str; refuse it so both stores behave the same
    if not isinstance(value, bytes):
        raise TypeError("state store values must be bytes")
    return value


def open_store(redis_url: str | None, *, key_prefix: str = "idp:") -> StateStore:
    """A RedisStore for a URL; the in-process MemoryStore when no URL is configured."""
    # imported here: both implementations import this module for the shared checks
    if not redis_url:
        from idp.state.memory import MemoryStore

        return MemoryStore()
    from idp.state.redis_store import RedisStore

    return RedisStore(redis_url, key_prefix=key_prefix)
