"""Argon2id hashing in a bounded pool: NIST SP 800-63B-4 §3.1.1.2."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher

from idp.security.passwords import PasswordHashing

FAST = {"time_cost": 1, "memory_cost_kib": 8192}
FAST_PREFIX = "$argon2id$v=19$m=8192,t=1,p=1$"
PASSWORD = "violet-harbor7x"


@pytest.fixture
def hashing() -> Iterator[PasswordHashing]:
    hashing = PasswordHashing(max_concurrent=2, **FAST)
    yield hashing
    hashing.close()


def test_hash_then_verify_roundtrip(hashing: PasswordHashing) -> None:
    stored = hashing.hash(PASSWORD)
    assert stored.startswith(FAST_PREFIX)
    assert PASSWORD not in stored
    assert hashing.verify(stored, PASSWORD) is True


def test_same_password_hashes_differently_each_time(hashing: PasswordHashing) -> None:
    assert hashing.hash(PASSWORD) != hashing.hash(PASSWORD)


def test_wrong_password_does_not_verify(hashing: PasswordHashing) -> None:
    assert hashing.verify(hashing.hash(PASSWORD), PASSWORD + "!") is False


def test_nfkc_equivalent_password_verifies(hashing: PasswordHashing) -> None:
    stored = hashing.hash("cafe\u0301-au-lait-12")  # e + combining acute
    assert hashing.verify(stored, "caf\u00e9-au-lait-12") is True  # precomposed é


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param("", id="empty"),
        pytest.param("not-a-hash", id="garbage"),
        pytest.param(FAST_PREFIX + "c2FsdHNhbHQ", id="truncated"),
        pytest.param("$argon2id$v=19$m=0,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaA", id="impossible parameters"),
        pytest.param("$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW", id="bcrypt"),
    ],
)
def test_corrupt_hash_verifies_false_without_raising(hashing: PasswordHashing, corrupt: str) -> None:
    assert hashing.verify(corrupt, PASSWORD) is False
    assert hashing.needs_rehash(corrupt) is True


def test_overlong_password_never_reaches_argon2(hashing: PasswordHashing) -> None:
    stored = hashing.hash(PASSWORD)
    assert hashing.verify(stored, "x" * 129) is False
    with pytest.raises(ValueError) as refused:
        hashing.hash("x" * 129)
    assert "xxxx" not in str(refused.value)


def test_lone_surrogate_verifies_false_without_raising(hashing: PasswordHashing) -> None:
    assert hashing.verify(hashing.hash(PASSWORD), "violet\ud800harbor") is False


def test_dummy_verification_is_real_uses_same_parameters_and_fails(
    hashing: PasswordHashing, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified_hashes: list[str] = []
    original = PasswordHasher.verify

    def recording_verify(hasher: PasswordHasher, hash: str, password: str) -> bool:
        verified_hashes.append(hash)
        return original(hasher, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", recording_verify)
    assert hashing.verify_dummy(PASSWORD) is False
    assert hashing.verify_dummy(PASSWORD) is False
    assert len(verified_hashes) == 2
    assert verified_hashes[0] == verified_hashes[1]  # made once
    assert verified_hashes[0].startswith(FAST_PREFIX)


def test_needs_rehash_when_parameters_change(hashing: PasswordHashing) -> None:
    stored = hashing.hash(PASSWORD)
    assert hashing.needs_rehash(stored) is False
    stronger = PasswordHashing(max_concurrent=1, time_cost=2, memory_cost_kib=8192)
    try:
        assert stronger.needs_rehash(stored) is True
    finally:
        stronger.close()


def test_max_concurrent_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PasswordHashing(max_concurrent=0, **FAST)


def test_async_hash_and_verify(hashing: PasswordHashing) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        stored = await hashing.hash_async(PASSWORD)
        return (
            await hashing.verify_async(stored, PASSWORD),
            await hashing.verify_async(stored, "wrong-password-here"),
            await hashing.verify_async(None, PASSWORD),
        )

    assert asyncio.run(scenario()) == (True, False, False)


class ConcurrencyProbe:
    """Wraps a PasswordHasher method to record how many calls overlap, and on which threads."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.thread_names: set[str] = set()
        self._lock = threading.Lock()

    def wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def probed(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
                self.thread_names.add(threading.current_thread().name)
            try:
                time.sleep(0.02)  # widen each call so calls that may overlap surely do
                return original(*args, **kwargs)
            finally:
                with self._lock:
                    self.running -= 1

        return probed


def test_pool_never_runs_more_than_max_concurrent_hashes_at_once(
    hashing: PasswordHashing, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = hashing.hash(PASSWORD)
    probe = ConcurrencyProbe()
    monkeypatch.setattr(PasswordHasher, "verify", probe.wrap(PasswordHasher.verify))

    async def eight_logins() -> list[bool]:
        # half known users, half unknown (dummy verification): both go through the pool
        logins = [hashing.verify_async(stored if i % 2 else None, PASSWORD) for i in range(8)]
        return await asyncio.gather(*logins)

    assert asyncio.run(eight_logins()) == [False, True] * 4
    assert probe.peak == hashing.max_concurrent == 2  # reached, never exceeded
    assert all(name.startswith("argon2") for name in probe.thread_names)


def test_event_loop_keeps_ticking_while_hashes_run(hashing: PasswordHashing, monkeypatch: pytest.MonkeyPatch) -> None:
    original = PasswordHasher.hash
    hash_started = threading.Event()
    loop_ticked_during_hash = threading.Event()

    def hash_after_the_loop_ticks(hasher: PasswordHasher, password: str, **kwargs: Any) -> str:
        hash_started.set()
        # On the event loop this wait could never end: the ticker would be blocked.
        if not loop_ticked_during_hash.wait(timeout=5):
            raise AssertionError("the event loop stalled while a hash was running")
        return original(hasher, password, **kwargs)

    monkeypatch.setattr(PasswordHasher, "hash", hash_after_the_loop_ticks)

    async def scenario() -> int:
        ticks_while_hashing = 0

        async def ticker() -> None:
            nonlocal ticks_while_hashing
            while True:
                await asyncio.sleep(0.001)
                if hash_started.is_set():
                    ticks_while_hashing += 1
                    loop_ticked_during_hash.set()

        ticking = asyncio.create_task(ticker())
        hashes = await asyncio.gather(*(hashing.hash_async(PASSWORD) for _ in range(6)))
        ticking.cancel()
        assert all(hashing.verify(stored, PASSWORD) for stored in hashes)
        return ticks_while_hashing

    assert asyncio.run(scenario()) >= 1
