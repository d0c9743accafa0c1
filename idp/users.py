"""Admin operations on users (the `idp user …` commands)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from idp.audit.trail import record_audit
from idp.clock import clock_of
from idp.db.models import User
from idp.login.steps.password import normalize_username
from idp.oidc.logout import EndedSession, end_all_sessions, revoke_all_refresh_tokens
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


NAME_MAX = 200  # users.name


@dataclass(frozen=True)
class UserChanges:
    """What `idp user set` changes. None leaves a field as it is; "" removes an address or
    a name. A new address is unverified unless `email_verified` says otherwise."""

    email: str | None = None
    name: str | None = None
    email_verified: bool | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


def check_new_user(
    db: Session, username: str, email: str | None, *, name: str | None = None, email_verified: bool = False
) -> str:
    username_folded = normalize_username(username)
    if not USERNAME_PATTERN.match(username_folded):
        raise UserError(f"username {username!r}: use 1-128 letters, digits and . _ @ + -")
    if email is not None:
        check_email(email)
    if name is not None:
        check_name(name)
    if email_verified and email is None:
        raise UserError("--email-verified: needs --email (there is no address to verify)")
    if db.scalar(select(User.id).where(User.username == username_folded)) is not None:
        raise UserError(f"user {username_folded!r} already exists")
    if email_verified:
        _check_verified_address_free(db, email, user_id=None)
    return username_folded


def check_email(email: str) -> None:
    if not EMAIL_PATTERN.match(email):
        raise UserError(f"--email {email!r}: not an email address")


def check_name(name: str) -> None:
    if len(name) > NAME_MAX:
        raise UserError(f"--name: at most {NAME_MAX} characters, got {len(name)}")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise UserError("--name: must not contain control characters")


def add_user(
    db: Session,
    *,
    username: str,
    email: str | None,
    name: str | None,
    password_hash: str | None,
    email_verified: bool = False,
) -> User:
    user = User(
        username=username,
        email=email,
        name=name,
        password_hash=password_hash,
        subject=new_secret(16),
        email_verified=email_verified,
    )
    db.add(user)
    _flush(db, email)
    record_audit(db, "user.added", user_id=user.id, email_verified=email_verified)
    return user


def update_user(db: Session, username: str, changes: UserChanges) -> list[str]:
    """`idp user set`: applies `changes` and returns the names of the fields that changed,
    audited as one `user.updated` event (none when nothing changed)."""
    _check_changes(changes)
    user = get_user(db, username)
    wanted = _wanted_fields(user, changes)
    if wanted["email_verified"]:
        _check_verified_address_free(db, wanted["email"], user_id=user.id)
    changed = [field for field, value in wanted.items() if getattr(user, field) != value]
    if not changed:
        return []
    for field in changed:
        setattr(user, field, wanted[field])
    _flush(db, user.email)
    record_audit(
        db,
        "user.updated",
        user_id=user.id,
        outcome="success",
        by="cli",
        changed=changed,
        email_verified=user.email_verified,
    )
    return changed


def _check_changes(changes: UserChanges) -> None:
    if changes.email:
        check_email(changes.email)
    if changes.name:
        check_name(changes.name)


def _wanted_fields(user: User, changes: UserChanges) -> dict[str, object]:
    email = user.email if changes.email is None else (changes.email or None)
    # a different address is not the one that was verified
    verified = user.email_verified and email == user.email
    if changes.email_verified is not None:
        verified = changes.email_verified
    if verified and email is None:
        raise UserError(f"--email-verified yes: user {user.username!r} has no address; give --email too")
    name = user.name if changes.name is None else (changes.name or None)
    return {"email": email, "email_verified": verified, "name": name}


def _check_verified_address_free(db: Session, email: object, *, user_id: int | None) -> None:
    """A verified address belongs to one user; the other user is not named."""
    query = select(User.id).where(func.lower(User.email) == func.lower(email), User.email_verified.is_(True))
    if user_id is not None:
        query = query.where(User.id != user_id)
    if db.scalar(query.limit(1)) is not None:
        raise _verified_elsewhere(email)


def _verified_elsewhere(email: object) -> UserError:
    return UserError(f"--email-verified: {email} is already verified for another user")


def _flush(db: Session, email: str | None) -> None:
    """The unique index is the last word when two commands verify one address at once."""
    try:
        db.flush()
    except IntegrityError as exc:
        if "uq_users_verified_email" in str(exc.orig):
            raise _verified_elsewhere(email) from None
        raise


def list_users(db: Session) -> list[UserSummary]:
    rows = db.scalars(select(User).order_by(User.username))
    now = clock_of(db).now()
    return [
        UserSummary(
            u.username,
            u.email,
            u.name,
            u.disabled,
            u.subject,
            u.locked_until if u.locked_until and u.locked_until > now else None,
            u.require_mfa,
        )
        for u in rows
    ]


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
    """Clears the lockout counter and any lock (idp/lockout.py)."""
    from idp.lockout import Lockout

    user = get_user(db, username)
    was_locked = Lockout.locked_until(user, clock_of(db).now()) is not None
    Lockout.unlock(db, user.id)
    record_audit(
        db,
        "account.unlocked",
        user_id=user.id,
        outcome="success",
        was_locked=was_locked,
        failed_logins=user.failed_logins,
        by="cli",
    )
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
