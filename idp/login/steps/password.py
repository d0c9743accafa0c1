"""The password step: verifies a username and password. Unknown users run a dummy Argon2
verification and disabled users a real one, so every failure costs the same time and
looks the same (no user enumeration by timing, status or message)."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.db.models import User
from idp.security.passwords import PasswordHashing

NAME = "password"
AMR = ("pwd",)
FAILED_MESSAGE = "The username or password is incorrect."


@dataclass(frozen=True)
class PasswordVerified:
    user_id: int
    needs_rehash: bool


@dataclass(frozen=True)
class PasswordFailed:
    user_id: int | None  # for the audit trail only; never shown
    public_message: str = FAILED_MESSAGE
    reason: str | None = None  # for the audit trail only; never shown


def normalize_username(username: str) -> str:
    return username.strip().casefold()


def find_login_candidate(db: Session, username: str) -> tuple[int, str | None, bool] | None:
    """(user id, password hash, usable) for the name, or None."""
    name = normalize_username(username)
    if not name or len(name) > 128:
        return None
    row = db.execute(select(User.id, User.password_hash, User.disabled).where(User.username == name)).first()
    return None if row is None else (row.id, row.password_hash, not row.disabled)


async def verify_password_step(
    hashing: PasswordHashing, candidate: tuple[int, str | None, bool] | None, password: str
) -> PasswordVerified | PasswordFailed:
    if candidate is None:
        await hashing.verify_async(None, password)
        return PasswordFailed(user_id=None)
    user_id, stored_hash, usable = candidate
    ok = await hashing.verify_async(stored_hash, password)
    if not ok or not usable:
        return PasswordFailed(user_id=user_id)
    return PasswordVerified(user_id=user_id, needs_rehash=hashing.needs_rehash(stored_hash or ""))
