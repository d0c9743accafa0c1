"""In-process state store: the same TTL, SET NX, GETDEL and counter semantics as Redis.

It serves one process only; with several workers each would see its own state, so the
server warns at start-up when it is used that way (DESIGN.md §2). It holds at most
`max_keys` entries and `max_bytes` of keys and values: a write that would pass either
sweeps the expired entries, then is refused (StoreUnavailable) if it still does not fit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from idp.state.store import StoreUnavailable, verify_ttl_seconds, verify_value

Entry = tuple[bytes, float]  # (value, expires_at on the injected clock)


class MemoryStore:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1_000_000,
        max_bytes: int = 64 * 1024 * 1024,
        sweep_every_writes: int = 1000,
    ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        # Counting keys alone let a few large values (parked requests) take any amount of
        # memory; 64 MiB is ~8,000 parked requests at their 8 KiB cap, far more of the small
        # entries (challenges, counters, markers) idp writes most.
        self._max_bytes = max_bytes
        self._bytes = 0  # keys (UTF-8) and values held, expired ones too until purged
        self._sweep_every_writes = sweep_every_writes
        self._writes_since_sweep = 0
        self._entries: dict[str, Entry] = {}
        # one lock around every operation is what makes take/add/incr atomic
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Entries held in memory, expired ones included until they are purged."""
        with self._lock:
            return len(self._entries)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._live_entry(key)
            return None if entry is None else entry[0]

    def set(self, key: str, value: bytes, *, ttl_seconds: int) -> None:
        verify_ttl_seconds(ttl_seconds)
        verify_value(value)
        with self._lock:
            self._write(key, value, self._clock() + ttl_seconds)

    def add(self, key: str, value: bytes, *, ttl_seconds: int) -> bool:
        verify_ttl_seconds(ttl_seconds)
        verify_value(value)
        with self._lock:
            if self._live_entry(key) is not None:
                return False
            self._write(key, value, self._clock() + ttl_seconds)
            return True

    def take(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._live_entry(key)
            self._drop(key)
            return None if entry is None else entry[0]

    def incr(self, key: str, *, ttl_seconds: int) -> int:
        verify_ttl_seconds(ttl_seconds)
        with self._lock:
            entry = self._live_entry(key)
            if entry is None:
                entry = (b"0", self._clock() + ttl_seconds)
            # a running counter keeps the expiry it was created with: fixed window
            count = _as_counter(entry[0]) + 1
            self._write(key, str(count).encode(), entry[1])
            return count

    def delete(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        # nothing to release; entries stay, as they would in Redis after a client closes
        pass

    def _live_entry(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] <= self._clock():
            self._drop(key)
            return None
        return entry

    def _write(self, key: str, value: bytes, expires_at: float) -> None:
        self._count_write()
        size = _size(key, value)
        if not self._fits(key, size):
            self._sweep()
            if not self._fits(key, size):
                raise StoreUnavailable("in-process store is full")
        self._drop(key)
        self._entries[key] = (value, expires_at)
        self._bytes += size

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= _size(key, entry[0])

    def _count_write(self) -> None:
        # lazy purging only sees keys that are read again; the sweep catches the rest
        self._writes_since_sweep += 1
        if self._writes_since_sweep >= self._sweep_every_writes:
            self._sweep()

    def _fits(self, key: str, size: int) -> bool:
        """Whether `size` bytes may be written at `key`: a new key needs a free slot, and
        replacing a value frees what the old one took."""
        old = self._entries.get(key)
        if old is None:
            return len(self._entries) < self._max_keys and self._bytes + size <= self._max_bytes
        return self._bytes - _size(key, old[0]) + size <= self._max_bytes

    def _sweep(self) -> None:
        now = self._clock()
        expired = [key for key, (_, expires_at) in self._entries.items() if expires_at <= now]
        for key in expired:
            self._drop(key)
        self._writes_since_sweep = 0


def _size(key: str, value: bytes) -> int:
    return len(key.encode()) + len(value)


def _as_counter(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        # same refusal as Redis: "value is not an integer"
        raise ValueError("value is not an integer counter") from None
