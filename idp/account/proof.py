"""The password and a current code, which turning TOTP off and new backup codes ask for
(DESIGN.md §4). The password is checked first and the code only after a right one, so a
wrong password never uses up a code; both failures count toward the one lockout. Nothing
but the failure count is written until both have passed, and never a password-hash
upgrade here (an upgrade is a write, and this request may yet fail)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from idp.account.current import SignedIn, get_user
from idp.account.errors import AccountRefused, FormRefused
from idp.account.services import AccountServices
from idp.lockout import FailureRecord

WRONG = "The password or code is not right."
ENTER_BOTH = "Enter your password and a code from your app."
NOT_SET_UP = "The authenticator app is not set up."


@dataclass(frozen=True)
class PasswordAndCode:
    """A request that passed its session's rules, holding what the caller's Argon2
    verification (`password` against `password_hash`) and then `check` need."""

    user_id: int
    username: str  # the key of the account's rate limit
    password_hash: str | None = field(repr=False)
    password: str = field(repr=False)
    code: str = field(repr=False)


def begin(services: AccountServices, who: SignedIn, password: str | None, code: str | None) -> PasswordAndCode:
    if not password or not code:
        raise FormRefused(ENTER_BOTH, 400)
    with services.sessions() as db:
        if not services.factors.factors_of(db, get_user(db, who.user_id)).totp:
            raise AccountRefused(NOT_SET_UP, 409)
    return PasswordAndCode(
        user_id=who.user_id, username=who.username, password_hash=who.password_hash, password=password, code=code
    )


def check(db: Session, services: AccountServices, started: PasswordAndCode, password_ok: bool) -> FailureRecord | None:
    """None when both passed (the code is used up); else the lockout counter's answer."""
    if not password_ok:
        return services.lockout.record_failure(db, started.user_id)
    return services.factors.check_totp(db, started.user_id, started.code).failure
