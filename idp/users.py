"""Admin operations on users (the `idp user …` commands)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.clock import utcnow
from idp.db.models import User
from idp.login.steps.password import normalize_username
from idp.oidc.logout import EndedSession, end_all_sessions, revoke_all_refresh_tokens
from idp.security.audit import record_audit
from idp.security.keyring import new_secret

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,127}$")
EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")


class UserError(ValueError):
    """One-line message for the admin."""


@dataclass(frozen=True)
class UserSummary:
    username: str
    email: str | None
    name: str | None
    disabled: bool
    subject: str
    locked_until: datetime | None = None
    require_mfa: bool = False


def check_new_user(db: Session, username: str, email: str | None) -> str:
    name = normalize_username(username)
    if not USERNAME_PATTERN.match(name):
        raise UserError(f"username {username!r}: use 1-128 letters, digits and . _ @ + -")
    if email is not None and not EMAIL_PATTERN.match(email):
        raise UserError(f"--email {email!r}: not an email address")
    if db.scalar(select(User.id).where(User.username == name)) is not None:
        raise UserError(f"user {name!r} already exists")
    return name


def add_user(db: Session, *, username: str, email: str | None, name: str | None, password_hash: str | None) -> User:
    user = User(username=username, email=email, name=name, password_hash=password_hash, subject=new_secret(16))
    db.add(user)
    db.flush()
    record_audit(db, "user.added", user_id=user.id)
    return user


def list_users(db: Session) -> list[UserSummary]:
    rows = db.scalars(select(User).order_by(User.username))
    now = utcnow()
    return [UserSummary(u.username, u.email, u.name, u.disabled, u.subject,
                        u.locked_until if u.locked_until and u.locked_until > now else None, u.require_mfa)
            for u in rows]


def get_user(db: Session, username: str) -> User:
    user = db.scalar(select(User).where(User.username == normalize_username(username)))
    if user is None:
        raise UserError(f"no user {username!r}")
    return user


def disable_user(db: Session, username: str) -> list[EndedSession]:
    """Disabled users cannot sign in; their sessions end and their refresh tokens die. The
    ended sessions are returned for their back-channel logouts."""
    user = get_user(db, username)
    user.disabled = True
    ended = _end_sessions_and_refresh_tokens(db, user.id)
    record_audit(db, "user.disabled", user_id=user.id, sessions_ended=len(ended))
    return ended


def unlock_user(db: Session, username: str) -> User:
    """Clears the lockout counter and any lock (idp/login/lockout.py)."""
    from idp.login.lockout import Lockout

    user = get_user(db, username)
    was_locked = Lockout.locked_until(user) is not None
    Lockout.unlock(db, user.id)
    record_audit(db, "account.unlocked", user_id=user.id, outcome="success", was_locked=was_locked,
                 failed_logins=user.failed_logins, by="cli")
    return user


def require_mfa(db: Session, username: str) -> User:
    """The next login must enrol a second factor (if the user has none) before any code is
    issued; from then on every login needs it (policy.required_level)."""
    user = get_user(db, username)
    user.require_mfa = True
    record_audit(db, "user.mfa_required", user_id=user.id, outcome="success", by="cli")
    return user


def reset_mfa(db: Session, username: str) -> list[EndedSession]:
    """Every second factor removed (TOTP, backup codes, passkeys): for a user who lost them.
    Their sessions end and their refresh tokens are revoked: whoever holds the lost device
    must not stay signed in. With require-mfa still set, the next login enrols again."""
    from idp.mfa.factors import SecondFactors

    user = get_user(db, username)
    SecondFactors.remove_all(db, user.id)
    ended = _end_sessions_and_refresh_tokens(db, user.id)
    record_audit(db, "user.mfa_reset", user_id=user.id, outcome="success", by="cli", sessions_ended=len(ended))
    return ended


def _end_sessions_and_refresh_tokens(db: Session, user_id: int) -> list[EndedSession]:
    """Every session ended, every refresh token revoked, offline_access ones included."""
    ended = end_all_sessions(db, user_id)
    revoke_all_refresh_tokens(db, user_id)
    return ended
