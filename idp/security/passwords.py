"""Argon2id hashing of passwords in a bounded thread pool: NIST SP 800-63B-4 §3.1.1.2
(salted, memory-hard one-way function; NFKC-normalised before hashing).

At most `max_concurrent` hashes run at once, in the pool or on a caller's own thread, so a
login flood costs at most max_concurrent * memory_cost_kib of memory (or the largest memory
cost among the stored hashes, while older ones remain) and queues instead of exhausting the
host.

Equal work for unknown names: stored hashes keep the parameters they were made with until
their user's next successful sign-in, so after a change of parameters the accounts cost
several amounts of work. An unknown name is verified against a dummy hash whose parameters
are drawn from a census of the stored ones ({parameter set: count}, given by the
composition root) with the same odds, deterministically from a keyed hash of the name: its
cost looks like that of some account, and the same on every try.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import os
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import HashingError, InvalidHashError, VerificationError
from argon2.low_level import ARGON2_VERSION, hash_secret

from idp.security.password_policy import MAX_LENGTH, normalize_password

T = TypeVar("T")

# The encoded prefix that says what verifying a hash costs. A missing `v=` is Argon2 1.0.
_PREFIX = re.compile(r"\$(argon2id|argon2i|argon2d)\$(?:v=(\d+)\$)?m=(\d+),t=(\d+),p=(\d+)\$")
_TYPES = {"argon2id": Type.ID, "argon2i": Type.I, "argon2d": Type.D}


@dataclass(frozen=True, order=True)
class HashParameters:
    """One parameter set: what verifying against a hash that has it costs."""

    type_name: str  # argon2id | argon2i | argon2d
    version: int
    memory_cost: int  # KiB
    time_cost: int
    parallelism: int

    @classmethod
    def of(cls, encoded: str) -> HashParameters | None:
        """The parameters an encoded hash (or just its prefix) names; None if not Argon2."""
        match = _PREFIX.match(encoded)
        if match is None:
            return None
        type_name, version, memory, time, lanes = match.groups()
        return cls(type_name, int(version or 0x10), int(memory), int(time), int(lanes))

    @classmethod
    def argon2id(cls, *, time_cost: int, memory_cost_kib: int, parallelism: int = 1) -> HashParameters:
        return cls("argon2id", ARGON2_VERSION, memory_cost_kib, time_cost, parallelism)

    def __str__(self) -> str:
        return f"${self.type_name}$v={self.version}$m={self.memory_cost},t={self.time_cost},p={self.parallelism}$"


class PasswordHashing:
    def __init__(
        self,
        *,
        max_concurrent: int | None = None,
        time_cost: int = 3,
        memory_cost_kib: int = 65536,
        parallelism: int = 1,
        name_digest: Callable[[str], str] | None = None,
    ) -> None:
        """`name_digest` is a keyed hash of a login name (the composition root passes the
        keyring's HMAC of the normalised name): it must be the same in every process, so that
        an unknown name costs the same wherever it lands. Without one, a key made here is
        used (enough for one process: the CLI, tests)."""
        if max_concurrent is None:
            max_concurrent = os.cpu_count() or 1
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.max_concurrent = max_concurrent  # size the web threadpool and DB pool with this
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost_kib,
            parallelism=parallelism,
            type=Type.ID,
        )
        self.current = HashParameters.argon2id(
            time_cost=time_cost, memory_cost_kib=memory_cost_kib, parallelism=parallelism
        )
        # argon2-cffi releases the GIL, so these threads hash truly in parallel.
        self._executor = ThreadPoolExecutor(max_workers=self.max_concurrent, thread_name_prefix="argon2")
        # The same bound for callers that run Argon2 on their own worker threads: taken once,
        # around the Argon2 call only (never nested), so the pool's threads take it once too.
        self._slots = threading.BoundedSemaphore(self.max_concurrent)
        self._name_digest = name_digest or _process_keyed_digest()
        # (parameter sets in draw order, their counts; total): replaced whole by set_census,
        # so a reader on another thread sees the old census or the new one, never a mix.
        self._census: tuple[tuple[tuple[HashParameters, int], ...], int] = ((), 0)
        self._dummy_hashes: dict[HashParameters, str] = {}

    def hash(self, password: str) -> str:
        normalized = normalize_password(password)
        if len(normalized) > MAX_LENGTH:
            # check_password refuses these first; this keeps the bound if a caller forgets.
            raise ValueError(f"password longer than {MAX_LENGTH} characters")
        with self._slots:
            return self._hasher.hash(normalized)

    def verify(self, stored_hash: str, password: str) -> bool:
        normalized = normalize_password(password)
        if len(normalized) > MAX_LENGTH:
            return False  # no such password can have been set, so skip Argon2
        try:
            with self._slots:
                return self._hasher.verify(stored_hash, normalized)
        except (VerificationError, InvalidHashError):
            return False  # mismatch, or a corrupt hash: a failed login, not a crash
        except UnicodeEncodeError:
            return False  # lone surrogates: cannot be UTF-8, so cannot have been set

    def verify_dummy(self, password: str) -> bool:
        # Unknown users cost one real verification too: no enumeration by timing.
        self.verify(self._get_dummy_hash(), password)
        return False

    def verify_unknown(self, name: str, password: str) -> bool:
        """No account has `name`: one real verification, with the parameters the census
        draws for that name (see parameters_for). Always False."""
        self.verify(self._dummy_hash(self.parameters_for(name)), password)
        return False

    def parameters_for(self, name: str) -> HashParameters:
        """The parameter set an unknown name is verified with: drawn from the census with its
        odds, by a keyed hash of the name (the same set on every try, unguessable without
        the key). With no census, the current parameters."""
        ordered, total = self._census
        if total == 0:
            return self.current
        try:
            digest = self._name_digest(name)
        except UnicodeEncodeError:
            return self.current  # lone surrogates: no account can have such a name
        # 64 evenly spread bits of the keyed hash, scaled onto [0, total): a point on the
        # census line. Outdated sets come first and the current one last, so as users are
        # rehashed the boundary only moves a name from an outdated set to the current one,
        # once, as a real account moves at its user's next sign-in.
        draw = int.from_bytes(hashlib.sha256(digest.encode("utf-8")).digest()[:8], "big")
        point = (draw * total) >> 64
        for parameters, count in ordered:
            if point < count:
                return parameters
            point -= count
        return self.current  # not reached: point < total

    def set_census(self, census: Mapping[HashParameters, int]) -> None:
        """{parameter set: number of stored password hashes that have it}. Runs no Argon2:
        dummy hashes are made when a name first needs them."""
        outdated = sorted((p, n) for p, n in census.items() if n > 0 and p != self.current)
        current = census.get(self.current, 0)
        ordered = tuple(outdated) + (((self.current, current),) if current > 0 else ())
        self._census = (ordered, sum(n for _, n in ordered))

    def needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True

    async def hash_async(self, password: str) -> str:
        return await self._in_pool(functools.partial(self.hash, password))

    async def verify_async(self, stored_hash: str | None, password: str) -> bool:
        if stored_hash is None:
            return await self._in_pool(functools.partial(self.verify_dummy, password))
        return await self._in_pool(functools.partial(self.verify, stored_hash, password))

    async def verify_unknown_async(self, name: str, password: str) -> bool:
        return await self._in_pool(functools.partial(self.verify_unknown, name, password))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _in_pool(self, call: Callable[[], T]) -> T:
        # Never on the event loop: one hash would stall every other request.
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _get_dummy_hash(self) -> str:
        return self._dummy_hash(self.current)

    def _dummy_hash(self, parameters: HashParameters) -> str:
        # Made lazily, once per parameter set, so its cost matches real hashes that have it;
        # the secret is thrown away, so nothing verifies against it. Two threads racing here
        # each make a valid dummy, so no lock is needed.
        dummy = self._dummy_hashes.get(parameters)
        if dummy is not None:
            return dummy
        try:
            with self._slots:
                dummy = hash_secret(
                    secrets.token_bytes(32),
                    os.urandom(self._hasher.salt_len),
                    time_cost=parameters.time_cost,
                    memory_cost=parameters.memory_cost,
                    parallelism=parameters.parallelism,
                    hash_len=self._hasher.hash_len,
                    type=_TYPES[parameters.type_name],
                    version=parameters.version,
                ).decode("ascii")
        except HashingError:
            if parameters == self.current:
                raise
            # parameters Argon2 refuses (a corrupt row): that account's own verification
            # fails at once as well, so any other set is no worse
            return self._dummy_hash(self.current)
        self._dummy_hashes[parameters] = dummy
        return dummy


def _process_keyed_digest() -> Callable[[str], str]:
    key = secrets.token_bytes(32)
    return lambda name: hmac.new(key, name.encode("utf-8"), hashlib.sha256).hexdigest()
