"""A new password on /account (NIST SP 800-63B-4 §3.1.1.2): the current one, the new one
twice. The new one is judged by the policy before any Argon2 (no hash for a password that
cannot be set); the caller then verifies the current one and hashes the new one. A wrong
current password counts toward the lockout, and a locked account is refused like it.
Success: the new hash (replacing exactly the one verified), the other sessions ended and
every refresh token revoked, audited, in one unit of work; this session stays."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import update
from sqlalchemy.orm import Session

from idp.account import events, reauth, sessions
from idp.account.current import Caller, get_user
from idp.account.errors import AccountRefused, FormRefused, lockout_words
from idp.account.services import AccountServices
from idp.db.models import User
from idp.links import records as link_records
from idp.lockout import FailureRecord
from idp.login.sessions import EndedSession
from idp.mail import notices
from idp.security.password_policy import PasswordRejected, check_password

NO_PASSWORD = "This account signs in without a password."
ENTER_ALL = "Enter your current password, then the new one twice."
NOT_THE_SAME = "The two new passwords are not the same."
WRONG_CURRENT = "Your current password is not right."
CHANGED_MEANWHILE = "Your password was changed from elsewhere meanwhile. Sign in again."
LOCKED = FailureRecord(remaining=0, locked_now=False, was_locked=True)


@dataclass(frozen=True)
class PasswordChange:
    """A change that passed the session's rules and the policy: the caller verifies
    `current` against `password_hash` and hashes `new`, then calls finish_change."""

    user_id: int
    username: str  # the key of the account's rate limit
    session_id: int  # the session that stays
    password_hash: str = field(repr=False)
    current: str = field(repr=False)
    new: str = field(repr=False)


def begin_change(services: AccountServices, caller: Caller, current: str, new: str, confirm: str) -> PasswordChange:
    who = reauth.admit(services, caller, reauth.PASSWORD_CHANGE)
    if who.password_hash is None:
        raise AccountRefused(NO_PASSWORD, 409)
    if not current or not new or not confirm:
        raise FormRefused(ENTER_ALL, section="password")
    if new != confirm:
        raise FormRefused(NOT_THE_SAME, section="password")
    with services.sessions() as db:
        has_second_factor = services.factors.factors_of(db, get_user(db, who.user_id)).has_second_factor
    try:
        check_password(new, username=who.username, email=who.email, has_second_factor=has_second_factor)
    except PasswordRejected as exc:
        raise FormRefused(exc.reason, section="password") from None
    return PasswordChange(
        user_id=who.user_id,
        username=who.username,
        session_id=who.session_id,
        password_hash=who.password_hash,
        current=current,
        new=new,
    )


def finish_change(
    services: AccountServices, caller: Caller, change: PasswordChange, new_hash: str | None
) -> list[EndedSession]:
    """`new_hash` None: the current password was wrong. Returns the sessions ended (the
    caller schedules their back-channel logouts once this has committed)."""
    ended: list[EndedSession] | None = None
    with services.sessions.begin() as db:
        if new_hash is None:
            failure = services.lockout.record_failure(db, change.user_id)
            events.record(db, "password.change_failed", change.user_id, caller, failure=failure, reason="password")
        elif services.lockout.is_locked(db, change.user_id):
            failure = LOCKED
            events.record(db, "password.change_failed", change.user_id, caller, failure=failure, reason="locked")
        else:
            ended = _store(db, change, new_hash, caller)
    if ended is not None:  # committed: now the notice
        services.mail.notify(notices.PASSWORD_CHANGED, change.user_id, ip=caller.ip)
        return ended
    raise FormRefused(
        lockout_words(failure, WRONG_CURRENT, lock_seconds=services.lockout.seconds), 401, section="password"
    )


def _store(db: Session, change: PasswordChange, new_hash: str, caller: Caller) -> list[EndedSession]:
    changed = db.execute(
        update(User)
        .where(User.id == change.user_id, User.password_hash == change.password_hash)
        .values(password_hash=new_hash)
        .returning(User.id)
    ).first()
    if changed is None:  # raised inside the unit of work: it rolls back, nothing changes
        raise AccountRefused(CHANGED_MEANWHILE, 409)
    ended = sessions.end_others_and_revoke_tokens(
        db, change.user_id, change.session_id, caller, reason="password.changed"
    )
    events.record(db, "password.changed", change.user_id, caller, sessions_ended=len(ended))
    link_records.revoke_open(db, change.user_id, reason="password_changed")  # whoever holds an old link: nothing
    return ended
