"""Argon2id hashing of passwords in a bounded thread pool: NIST SP 800-63B-4 §3.1.1.2
(salted, memory-hard one-way function; NFKC-normalised before hashing).

At most `max_concurrent` hashes run at once, so a login flood costs at most
max_concurrent * memory_cost_kib of memory and queues instead of exhausting the host.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from idp.security.password_policy import MAX_LENGTH, normalize_password

T = TypeVar("T")


class PasswordHashing:
    def __init__(
        self,
        *,
        max_concurrent: int | None = None,
        time_cost: int = 3,
        memory_cost_kib: int = 65536,
        parallelism: int = 1,
    ) -> None:
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
        # argon2-cffi releases the GIL, so these threads hash truly in parallel.
        self._executor = ThreadPoolExecutor(
            max_workers=self.max_concurrent, thread_name_prefix="argon2"
        )
        self._dummy_hash: str | None = None

    def hash(self, password: str) -> str:
        normalized = normalize_password(password)
        if len(normalized) > MAX_LENGTH:
            # check_password refuses these first; this keeps the bound if a caller forgets.
            raise ValueError(f"password longer than {MAX_LENGTH} characters")
        return self._hasher.hash(normalized)

    def verify(self, stored_hash: str, password: str) -> bool:
        normalized = normalize_password(password)
        if len(normalized) > MAX_LENGTH:
            return False  # no such password can have been set, so skip Argon2
        try:
            return self._hasher.verify(stored_hash, normalized)
        except (VerificationError, InvalidHashError):
            return False  # mismatch, or a corrupt hash: a failed login, not a crash
        except UnicodeEncodeError:
            return False  # lone surrogates: cannot be UTF-8, so cannot have been set

    def verify_dummy(self, password: str) -> bool:
        # Unknown users cost one real verification too: no enumeration by timing.
        self.verify(self._get_dummy_hash(), password)
        return False

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

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _in_pool(self, call: Callable[[], T]) -> T:
        # Never on the event loop: one hash would stall every other request.
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _get_dummy_hash(self) -> str:
        # Made lazily with this instance's parameters so its cost matches real hashes;
        # the secret is thrown away, so nothing verifies against it. Two threads racing
        # here each make a valid dummy, so no lock is needed.
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(32))
        return self._dummy_hash
