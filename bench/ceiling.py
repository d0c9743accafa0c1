"""The Argon2 ceiling: how many password verifications per second one core does with idp's
configured Argon2id parameters. A password login can never be faster than this."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from argon2 import PasswordHasher, Type

from idp.settings import Settings

MAX_VERIFICATIONS = 10_000


@dataclass(frozen=True)
class Argon2Ceiling:
    verifications_per_second: float
    time_cost: int
    memory_kib: int


def measure_argon2_ceiling(seconds: float, cpus: Sequence[int] = ()) -> Argon2Ceiling:
    """Verifies one password in a loop on one thread (pinned to cpus[0] when given)."""
    defaults = Settings()  # what `idp serve` uses when IDP_ARGON2_* are not set, as here
    hasher = PasswordHasher(
        time_cost=defaults.argon2_time_cost, memory_cost=defaults.argon2_memory_kib, parallelism=1, type=Type.ID
    )
    stored = hasher.hash("benchmark password for the ceiling")
    affinity = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, {cpus[0]})
    try:
        started, count = time.perf_counter(), 0
        while time.perf_counter() - started < seconds and count < MAX_VERIFICATIONS:
            hasher.verify(stored, "benchmark password for the ceiling")
            count += 1
        rate = count / (time.perf_counter() - started)
    finally:
        os.sched_setaffinity(0, affinity)
    return Argon2Ceiling(rate, defaults.argon2_time_cost, defaults.argon2_memory_kib)
