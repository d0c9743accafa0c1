"""One contract for the short-lived state store, run against MemoryStore and RedisStore.

Redis tests skip when no server answers, except under CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar
from uuid import uuid4

import pytest
import redis

from idp.state.memory import MemoryStore
from idp.state.redis_store import RedisStore
from idp.state.store import StateStore, StoreUnavailable, open_store

REDIS_URL = "redis://127.0.0.1:6379/11"  # a database of its own on the shared server
CLOSED_PORT_URL = "redis://:s3cret-password@127.0.0.1:1/0"

T = TypeVar("T")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def redis_url() -> str:
    probe = RedisStore(REDIS_URL)
    reachable = probe.ping()
    probe.close()
    if not reachable:
        message = f"Redis is not reachable at {REDIS_URL}"
        if _running_in_ci():
            pytest.fail(f"{message}; CI is set, so the Redis contract tests must run")
        pytest.skip(f"{message}; start redis-server to run the Redis contract tests")
    return REDIS_URL


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[StateStore]:
    if request.param == "memory":
        yield MemoryStore(clock=clock)
        return
    url = request.getfixturevalue("redis_url")
    prefix = f"idp-test:{uuid4().hex}:"
    store = RedisStore(url, key_prefix=prefix)
    yield store
    store.close()
    _delete_prefixed(url, prefix)


def _delete_prefixed(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def advance(store: StateStore, clock: FakeClock) -> Callable[[float], None]:
    """Move time forward: the injected clock for memory, a real wait for Redis."""
    return clock.advance if isinstance(store, MemoryStore) else time.sleep


def _run_together(count: int, work: Callable[[], T]) -> list[T]:
    """Start `count` threads at one barrier so they really race; their results, in any order."""
    barrier = threading.Barrier(count)
    results: list[T] = []
    results_lock = threading.Lock()

    def racer() -> None:
        barrier.wait()
        result = work()
        with results_lock:
            results.append(result)

    threads = [threading.Thread(target=racer) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == count, "a racer did not finish"
    return results


# --- the contract -------------------------------------------------------------------------


def test_both_implementations_satisfy_the_protocol(store: StateStore) -> None:
    assert isinstance(store, StateStore)


def test_get_of_a_missing_key_is_none(store: StateStore) -> None:
    assert store.get("missing") is None


def test_set_then_get_returns_the_bytes(store: StateStore) -> None:
    store.set("k", b"\x00value\xff", ttl_seconds=60)
    assert store.get("k") == b"\x00value\xff"


def test_set_replaces_the_previous_value(store: StateStore) -> None:
    store.set("k", b"old", ttl_seconds=60)
    store.set("k", b"new", ttl_seconds=60)
    assert store.get("k") == b"new"


def test_values_markers_and_counters_all_expire_after_their_ttl(
    store: StateStore, advance: Callable[[float], None]
) -> None:
    # one combined test so Redis waits out a TTL only once
    store.set("value", b"v", ttl_seconds=1)
    assert store.add("marker", b"1", ttl_seconds=1) is True
    assert store.incr("window", ttl_seconds=1) == 1
    assert store.incr("window", ttl_seconds=1000) == 2  # must not extend the window
    advance(1.1)
    assert store.get("value") is None
    assert store.take("value") is None
    assert store.add("marker", b"1", ttl_seconds=1) is True
    assert store.incr("window", ttl_seconds=1) == 1


def test_add_stores_only_when_absent(store: StateStore) -> None:
    assert store.add("once", b"first", ttl_seconds=60) is True
    assert store.add("once", b"second", ttl_seconds=60) is False
    assert store.get("once") == b"first"


def test_take_returns_the_value_once_then_none(store: StateStore) -> None:
    store.set("code", b"grant", ttl_seconds=60)
    assert store.take("code") == b"grant"
    assert store.take("code") is None
    assert store.get("code") is None


def test_take_of_a_missing_key_is_none(store: StateStore) -> None:
    assert store.take("missing") is None


@pytest.mark.parametrize("round_number", range(10))
def test_take_under_a_race_of_16_threads_gives_the_value_to_exactly_one(store: StateStore, round_number: int) -> None:
    store.set("challenge", b"c", ttl_seconds=60)
    results = _run_together(16, lambda: store.take("challenge"))
    assert results.count(b"c") == 1
    assert results.count(None) == 15


def test_add_under_a_race_of_16_threads_stores_for_exactly_one(store: StateStore) -> None:
    results = _run_together(16, lambda: store.add("replay", b"1", ttl_seconds=60))
    assert results.count(True) == 1


def test_incr_counts_from_one(store: StateStore) -> None:
    assert [store.incr("n", ttl_seconds=60) for _ in range(3)] == [1, 2, 3]
    assert store.get("n") == b"3"


def test_incr_from_8_threads_times_50_ends_at_exactly_400(store: StateStore) -> None:
    def fifty_increments() -> list[int]:
        return [store.incr("hits", ttl_seconds=60) for _ in range(50)]

    results = _run_together(8, fifty_increments)
    every_count = sorted(count for counts in results for count in counts)
    assert every_count == list(range(1, 401))
    assert store.incr("hits", ttl_seconds=60) == 401


def test_incr_of_a_value_that_is_not_a_counter_raises_value_error(store: StateStore) -> None:
    store.set("k", b"not a number", ttl_seconds=60)
    with pytest.raises(ValueError):
        store.incr("k", ttl_seconds=60)


def test_delete_removes_the_key_and_ignores_a_missing_one(store: StateStore) -> None:
    store.set("k", b"v", ttl_seconds=60)
    store.delete("k")
    store.delete("k")
    assert store.get("k") is None


def test_keys_are_independent(store: StateStore) -> None:
    store.set("a", b"1", ttl_seconds=60)
    store.set("b", b"2", ttl_seconds=60)
    store.take("a")
    assert store.get("b") == b"2"


INVALID_TTLS = [
    pytest.param(0, id="refuses zero"),
    pytest.param(-5, id="refuses a negative ttl"),
    pytest.param(1.5, id="refuses a float"),
    pytest.param(True, id="refuses a bool"),
    pytest.param("60", id="refuses a string"),
]


@pytest.mark.parametrize("ttl_seconds", INVALID_TTLS)
def test_invalid_ttl_raises_value_error(store: StateStore, ttl_seconds: object) -> None:
    with pytest.raises(ValueError):
        store.set("k", b"v", ttl_seconds=ttl_seconds)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.add("k", b"v", ttl_seconds=ttl_seconds)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.incr("k", ttl_seconds=ttl_seconds)  # type: ignore[arg-type]
    assert store.get("k") is None


def test_values_must_be_bytes(store: StateStore) -> None:
    with pytest.raises(TypeError):
        store.set("k", "text", ttl_seconds=60)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.add("k", "text", ttl_seconds=60)  # type: ignore[arg-type]


def test_ping_is_true_when_the_backend_answers(store: StateStore) -> None:
    assert store.ping() is True


# --- MemoryStore only ---------------------------------------------------------------------


def test_memory_entry_lives_until_exactly_its_ttl(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    store.set("k", b"v", ttl_seconds=10)
    clock.advance(9.999)
    assert store.get("k") == b"v"
    clock.advance(0.001)
    assert store.get("k") is None


def test_memory_store_full_raises_store_unavailable(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_keys=3)
    for key in ("a", "b", "c"):
        store.set(key, b"v", ttl_seconds=10)
    for write in (
        lambda: store.set("d", b"v", ttl_seconds=10),
        lambda: store.add("d", b"v", ttl_seconds=10),
        lambda: store.incr("d", ttl_seconds=10),
    ):
        with pytest.raises(StoreUnavailable, match="in-process store is full"):
            write()
    store.set("a", b"replaced", ttl_seconds=10)  # overwriting needs no room
    assert store.get("a") == b"replaced"


def test_memory_store_full_of_expired_entries_makes_room(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_keys=3)
    for key in ("a", "b", "c"):
        store.set(key, b"v", ttl_seconds=10)
    clock.advance(10)
    store.set("d", b"v", ttl_seconds=10)
    assert store.get("d") == b"v"
    assert len(store) == 1


def test_memory_store_over_its_byte_budget_raises_store_unavailable(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_bytes=100)  # keys (UTF-8) and values
    store.set("a", b"v" * 49, ttl_seconds=10)
    store.set("b", b"v" * 49, ttl_seconds=10)  # 100 bytes: full, with 2 of a million keys used
    for write in (
        lambda: store.set("c", b"", ttl_seconds=10),
        lambda: store.add("c", b"v", ttl_seconds=10),
        lambda: store.incr("c", ttl_seconds=10),
        lambda: store.set("a", b"v" * 50, ttl_seconds=10),  # a replacement may not grow past it either
    ):
        with pytest.raises(StoreUnavailable, match="in-process store is full"):
            write()
    store.set("a", b"v" * 49, ttl_seconds=10)  # replacing frees what the old value took
    store.set("a", b"v", ttl_seconds=10)
    store.set("c", b"v" * 46, ttl_seconds=10)  # ... and a smaller one leaves room
    assert store.get("c") == b"v" * 46 and len(store) == 3


def test_memory_store_gives_back_the_bytes_of_taken_deleted_and_expired_entries(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_bytes=100)
    for release in (
        lambda: store.take("k"),
        lambda: store.delete("k"),
        lambda: clock.advance(10),  # an expired entry is purged before a write is refused
    ):
        store.set("k", b"v" * 99, ttl_seconds=10)
        release()
        store.set("other", b"v" * 95, ttl_seconds=10)
        store.delete("other")
    store.set("k", b"v" * 99, ttl_seconds=10)
    clock.advance(10)
    assert store.get("k") is None  # read after expiry: dropped, and its bytes with it
    store.set("other", b"v" * 95, ttl_seconds=10)


def test_memory_store_byte_budget_counts_utf8_keys(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, max_bytes=10)
    with pytest.raises(StoreUnavailable):
        store.set("ééééé", b"v", ttl_seconds=10)  # 5 characters, 10 bytes, plus the value
    store.set("ééééé", b"", ttl_seconds=10)


def test_memory_sweep_purges_expired_entries_nobody_reads_again(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock, sweep_every_writes=100)
    for number in range(50):
        store.set(f"old-{number}", b"v", ttl_seconds=1)
    clock.advance(2)
    for number in range(50):
        store.set(f"new-{number}", b"v", ttl_seconds=60)
    assert len(store) == 50


# --- RedisStore only ----------------------------------------------------------------------


def test_redis_counter_always_carries_a_ttl(redis_url: str) -> None:
    prefix = f"idp-test:{uuid4().hex}:"
    store = RedisStore(redis_url, key_prefix=prefix)
    try:
        store.incr("n", ttl_seconds=30)
        client = redis.Redis.from_url(redis_url)
        assert 0 < client.ttl(prefix + "n") <= 30
        assert client.get(prefix + "n") == b"1"  # keys are prefixed
        client.close()
    finally:
        store.close()
        _delete_prefixed(redis_url, prefix)


UNREACHABLE_OPERATIONS = [
    pytest.param(lambda s: s.get("k"), id="get"),
    pytest.param(lambda s: s.set("k", b"v", ttl_seconds=10), id="set"),
    pytest.param(lambda s: s.add("k", b"v", ttl_seconds=10), id="add"),
    pytest.param(lambda s: s.take("k"), id="take"),
    pytest.param(lambda s: s.incr("k", ttl_seconds=10), id="incr"),
    pytest.param(lambda s: s.delete("k"), id="delete"),
]


@pytest.mark.parametrize("operation", UNREACHABLE_OPERATIONS)
def test_redis_on_a_closed_port_raises_store_unavailable_quickly(
    operation: Callable[[RedisStore], object],
) -> None:
    store = RedisStore(CLOSED_PORT_URL, socket_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        operation(store)
    assert time.monotonic() - started < 1.0
    assert "s3cret" not in str(raised.value)
    store.close()


def test_redis_ping_is_false_on_a_closed_port() -> None:
    store = RedisStore(CLOSED_PORT_URL, socket_timeout=0.5)
    assert store.ping() is False
    assert "s3cret" not in repr(store)
    store.close()


# --- open_store ---------------------------------------------------------------------------


@pytest.mark.parametrize("url", [None, ""], ids=["None", "empty string"])
def test_open_store_without_a_url_is_the_memory_store(url: str | None) -> None:
    assert isinstance(open_store(url), MemoryStore)


def test_open_store_with_a_url_is_a_prefixed_redis_store() -> None:
    # constructing connects lazily, so the closed port is fine here
    store = open_store(CLOSED_PORT_URL, key_prefix="tenant:")
    assert isinstance(store, RedisStore)
    assert repr(store) == "RedisStore(key_prefix='tenant:')"
    store.close()
