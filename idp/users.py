"""Admin operations on users (the `idp user …` commands)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from idp import retired_names
from idp.attributes import AttributeRejected, AttributeValue, apply_changes
from idp.audit.trail import record_audit
from idp.clock import clock_of
from idp.db.models import User
from idp.links import records as link_records
from idp.login.steps.password import normalize_username
from idp.oidc.logout import EndedSession, end_all_sessions
from idp.revocation import revoke_all_grants
from idp.security.keyring import Keyring, new_secret

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
    deleted: bool = False  # a tombstone (`idp user delete`), listed by its pseudonym


NAME_MAX = 200  # users.name


@dataclass(frozen=True)
class UserChanges:
    """What `idp user set` changes. None leaves a field as it is; "" removes an address or
    a name. A new address is unverified unless `email_verified` says otherwise."""

    email: str | None = None
    name: str | None = None
    email_verified: bool | None = None
    # (name, value) per --attr, in order; value "" removes it (idp/attributes.py checks both)
    attributes: tuple[tuple[str, str], ...] = ()

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) in (None, ()) for f in fields(self))


def check_new_user(
    db: Session,
    username: str,
    email: str | None,
    *,
    name: str | None = None,
    email_verified: bool = False,
    keyring: Keyring | None = None,
) -> str:
    """`keyring`: also refuse a deleted user's retired username or verified address (the
    CLI always gives it; idp/retired_names.py)."""
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
    if keyring is not None and retired_names.is_retired(db, keyring, retired_names.USERNAME, username_folded):
        raise UserError(f"username {username_folded!r} belonged to a deleted user and is retired")
    if email_verified:
        _check_verified_address_free(db, email, user_id=None, keyring=keyring)
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


def update_user(db: Session, username: str, changes: UserChanges, *, keyring: Keyring | None = None) -> list[str]:
    """`idp user set`: applies `changes` and returns the names of the fields that changed,
    audited as one `user.updated` event (none when nothing changed). `keyring`: as for
    check_new_user, a retired verified address is refused."""
    _check_changes(changes)
    user = get_user(db, username)
    wanted = _wanted_fields(user, changes)
    if wanted["email_verified"]:
        _check_verified_address_free(db, wanted["email"], user_id=user.id, keyring=keyring)
    changed = [field for field, value in wanted.items() if getattr(user, field) != value]
    attributes = _wanted_attributes(user, changes)
    changed_attributes = sorted(_changed_keys(user.attributes or {}, attributes))
    if not changed and not changed_attributes:
        return []
    for field in changed:
        setattr(user, field, wanted[field])
    if changed_attributes:
        user.attributes = attributes or None  # a new dict: the JSON column sees the change
    _flush(db, user.email)
    if "email" in changed:  # links mailed to the old address die with it (idp/links/)
        link_records.revoke_sent_to_old_address(db, user.id, user.email)
    # attribute names only: their values (a phone number, a birthdate) stay out of the trail
    record_audit(
        db,
        "user.updated",
        user_id=user.id,
        outcome="success",
        by="cli",
        changed=changed,
        email_verified=user.email_verified,
        **({"attributes_changed": changed_attributes} if changed_attributes else {}),
    )
    return changed + [f"attr:{name}" for name in changed_attributes]


def _wanted_attributes(user: User, changes: UserChanges) -> dict[str, AttributeValue]:
    current = user.attributes or {}
    if not changes.attributes:
        return dict(current)
    try:
        return apply_changes(current, changes.attributes)
    except AttributeRejected as exc:
        raise UserError(str(exc)) from None


def _changed_keys(before: dict[str, object], after: dict[str, object]) -> set[str]:
    return {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}


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


def _check_verified_address_free(
    db: Session, email: object, *, user_id: int | None, keyring: Keyring | None = None
) -> None:
    """A verified address belongs to one user; the other user is not named. A deleted
    user's stays theirs (retired), unless the deletion allowed its reuse."""
    query = select(User.id).where(func.lower(User.email) == func.lower(email), User.email_verified.is_(True))
    if user_id is not None:
        query = query.where(User.id != user_id)
    if db.scalar(query.limit(1)) is not None:
        raise _verified_elsewhere(email)
    if keyring is not None and retired_names.is_retired(db, keyring, retired_names.EMAIL, str(email)):
        raise UserError(f"--email-verified: {email} was verified for a deleted user and is retired")


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
            u.deleted_at is not None,
        )
        for u in rows
    ]


def get_user(db: Session, username: str) -> User:
    """A live account (not a deleted user's tombstone: no command changes one)."""
    user = find_user(db, username)
    if user is not None and user.deleted_at is not None:
        raise UserError(f"user {username!r} was deleted")
    if user is None:
        raise UserError(f"no user {username!r}")
    return user


def find_user(db: Session, username: str) -> User | None:
    """An account or a tombstone (by its pseudonym), or None."""
    return db.scalar(select(User).where(User.username == normalize_username(username)))


def describe_user(db: Session, username: str) -> list[tuple[str, str]]:
    """`idp user show`: what an admin needs to know about one account, as labelled lines
    (never a secret: no hash, no TOTP secret, no credential id)."""
    from idp.db.models import BackupCode, IdpSession, Passkey, TotpCredential
    from idp.groups import memberships_of

    user = find_user(db, username)
    if user is None:
        raise UserError(f"no user {username!r}")
    if user.deleted_at is not None:  # a tombstone: nothing but its ids is left
        return [("user", user.username), ("sub", user.subject), ("state", f"deleted {_when(user.deleted_at)}")]
    now = clock_of(db).now()
    state = "disabled" if user.disabled else "active"
    if user.locked_until is not None and user.locked_until > now:
        state += f", locked until {_when(user.locked_until)}"
    elif user.failed_logins and user.failures_since is not None:  # the lockout's window began then
        state += f", {user.failed_logins} failed attempt(s) since {_when(user.failures_since)}"
    last_sign_in = db.scalar(select(func.max(IdpSession.auth_time)).where(IdpSession.user_id == user.id))
    totp = db.scalar(
        select(TotpCredential.id).where(TotpCredential.user_id == user.id, TotpCredential.confirmed_at.is_not(None))
    )
    codes = db.scalar(
        select(func.count()).select_from(BackupCode).where(BackupCode.user_id == user.id, BackupCode.used_at.is_(None))
    )
    passkeys = db.scalars(select(Passkey.name).where(Passkey.user_id == user.id).order_by(Passkey.id)).all()
    sessions = db.scalar(
        select(func.count())
        .select_from(IdpSession)
        .where(IdpSession.user_id == user.id, IdpSession.ended_at.is_(None), IdpSession.expires_at > now)
    )
    groups = [m.name + (f" (min {m.min_acr})" if m.min_acr else "") for m in memberships_of(db, user.id)]
    attributes = user.attributes or {}
    return [
        ("user", user.username),
        ("sub", user.subject),
        ("name", user.name or "-"),
        ("email", (user.email or "-") + (" (verified)" if user.email and user.email_verified else "")),
        ("state", state + (", MFA required" if user.require_mfa else "")),
        ("password", _password_state(user)),
        ("totp", "yes" if totp is not None else "no"),
        ("backup codes", f"{int(codes or 0)} unused"),
        ("passkeys", ", ".join(passkeys) if passkeys else "none"),
        ("groups", ", ".join(groups) or "-"),
        ("attributes", ", ".join(f"{k}={v}" for k, v in sorted(attributes.items())) or "-"),
        ("sessions", str(int(sessions or 0))),
        ("last sign-in", _when(last_sign_in) if last_sign_in is not None else "never"),
        ("created", _when(user.created_at)),
    ]


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}Z"


def _password_state(user: User) -> str:
    if user.password_hash is None:
        return "none"
    return "set, must be changed at the next sign-in" if user.password_must_change else "set"


def disable_user(db: Session, username: str) -> list[EndedSession]:
    """Disabled users cannot sign in; their sessions end and their grants die. The
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
    """Every session ended, every grant (refresh and access tokens) revoked, offline_access
    ones included."""
    ended = end_all_sessions(db, user_id)
    revoke_all_grants(db, user_id)
    return ended
