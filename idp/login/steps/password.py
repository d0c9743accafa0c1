"""The password step: a username and password, the first factor (amr pwd). Unknown users
run a dummy Argon2 verification and disabled users a real one, so every failure costs the
same work and looks the same (no user enumeration by timing, status or message)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from idp.db.models import User
from idp.login.step import Passed, Rejected, Step, StepContext

FAILED_MESSAGE = "The username or password is incorrect."


def normalize_username(username: str) -> str:
    return username.strip().casefold()


def _text(form: Mapping[str, object], key: str) -> str:
    value = form.get(key)
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class Verified:
    name: str
    user_id: int | None  # None: no account by that name
    ok: bool  # the password matched a usable account
    new_hash: str | None  # the password rehashed with today's Argon2 parameters


class PasswordStep(Step):
    name = "password"
    first = True
    failed_words = FAILED_MESSAGE
    empty_words = "Enter your username and password."

    def filled(self, form: Mapping[str, object]) -> bool:
        return bool(_text(form, "username")) and bool(_text(form, "password"))

    def account_key(self, ctx: StepContext, form: Mapping[str, object]) -> str | None:
        return normalize_username(_text(form, "username"))[:128]

    def view(self, ctx: StepContext, db: Session, form: Mapping[str, object]) -> dict[str, Any]:
        typed = _text(form, "username")[:128]
        return {"username": typed or (ctx.tx.login_hint if ctx.tx else "") or ""}

    def prepare(self, ctx: StepContext, form: Mapping[str, object]) -> Verified:
        hashing = ctx.services.hashing
        name, password = normalize_username(_text(form, "username"))[:128], _text(form, "password")
        with ctx.read() as db:
            row = db.execute(select(User.id, User.password_hash, User.disabled).where(User.username == name)).first()
        if row is None or not name:
            # an unknown name costs what a stored hash costs: the dummy's Argon2 parameters are
            # drawn for this name from the stored hashes' (idp/security/passwords.py)
            hashing.verify_unknown(name, password)
            return Verified(name, None, False, None)
        ok = (
            hashing.verify(row.password_hash, password) if row.password_hash else hashing.verify_unknown(name, password)
        )
        usable = ok and not row.disabled
        new_hash = hashing.hash(password) if usable and hashing.needs_rehash(row.password_hash or "") else None
        return Verified(name, row.id, usable, new_hash)

    def check(self, ctx: StepContext, db: Session, form: Mapping[str, object], prepared: Any) -> Passed | Rejected:
        verified: Verified = prepared
        if not verified.ok or verified.user_id is None:
            return Rejected(verified.user_id, name=verified.name)
        user_id, new_hash = verified.user_id, verified.new_hash

        def rehash(db: Session) -> bool:  # the hash upgrade when the Argon2 parameters changed
            if new_hash is not None:
                db.execute(update(User).where(User.id == user_id).values(password_hash=new_hash))
            return True

        return Passed(("pwd",), user_id, username=verified.name, claim=rehash)


STEP = PasswordStep()
