"""An account's life after `idp user add`: enable (the reverse of disable), a password set by
the admin (`set-password`, optionally to be changed at the next sign-in), and deletion.

Deletion keeps a tombstone: the users row stays, so the audit trail's user_id and the `sub`
stay unique and are never given to anyone else, under a pseudonymous username; every
personal field is cleared, and the credentials, memberships, consents, sessions and
unredeemed codes are removed, after the sessions are ended (their back-channel logouts are
sent after the commit) and every grant revoked. The old username and verified address are
retired (idp/retired_names.py) unless the admin allows their reuse. Each operation is one
unit of work of the caller's, audited."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from idp import retired_names
from idp.audit.trail import record_audit
from idp.clock import clock_of
from idp.db.models import (
    AuthorizationCode,
    BackupCode,
    Consent,
    GroupMember,
    IdpSession,
    OneTimeLink,
    Passkey,
    SessionClient,
    TotpCredential,
    User,
)
from idp.links import records as link_records
from idp.login.sessions import EndedSession, end_all_sessions
from idp.revocation import revoke_all_grants
from idp.security.keyring import Keyring
from idp.users import get_user

# What a deleted user leaves behind nothing of, besides the tombstone (and revoked token
# records, which hold digests and scopes only).
_REMOVED = (TotpCredential, BackupCode, Passkey, GroupMember, Consent, AuthorizationCode, OneTimeLink)


def enable_user(db: Session, username: str) -> bool:
    """Reverses `disable`: the user may sign in again (sessions and grants ended by the
    disable stay ended). False, and nothing written, when the user was not disabled."""
    user = get_user(db, username)
    if not user.disabled:
        return False
    user.disabled = False
    record_audit(db, "user.enabled", user_id=user.id, outcome="success", by="cli")
    return True


def set_password(db: Session, username: str, password_hash: str, *, must_change: bool) -> list[EndedSession]:
    """A password given by the admin: whoever knew the old one (or watched the admin) must
    keep nothing, so every session ends and every grant is revoked; with `must_change` the
    next sign-in chooses a new one (login step new_password) before any code is issued."""
    user = get_user(db, username)
    user.password_hash = password_hash
    user.password_must_change = must_change
    ended = end_all_sessions(db, user.id)
    revoke_all_grants(db, user.id)
    link_records.revoke_open(db, user.id, reason="password_changed")
    record_audit(
        db,
        "user.password_set",
        user_id=user.id,
        outcome="success",
        by="cli",
        must_change=must_change,
        sessions_ended=len(ended),
    )
    return ended


@dataclass(frozen=True)
class Holdings:
    """What deleting a user removes, counted (for the refusal without --yes, and the report)."""

    sessions: int
    passkeys: int
    totp: bool
    backup_codes: int
    groups: int
    consents: int
    verified_email: bool

    def describe(self) -> str:
        parts = [
            f"{self.sessions} live session(s) (with back-channel logouts)",
            "every grant (refresh and access tokens)",
            f"{self.passkeys} passkey(s)",
            "an authenticator app" if self.totp else "no authenticator app",
            f"{self.backup_codes} backup code(s)",
            f"{self.groups} group membership(s)",
            f"{self.consents} consent(s)",
            "the name, address, attributes and password",
        ]
        return ", ".join(parts)


def holdings_of(db: Session, username: str) -> Holdings:
    user = get_user(db, username)
    now = clock_of(db).now()

    def count(model: type, *where: object) -> int:
        return int(db.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # type: ignore[arg-type]

    return Holdings(
        sessions=count(
            IdpSession, IdpSession.user_id == user.id, IdpSession.ended_at.is_(None), IdpSession.expires_at > now
        ),
        passkeys=count(Passkey, Passkey.user_id == user.id),
        totp=count(TotpCredential, TotpCredential.user_id == user.id, TotpCredential.confirmed_at.is_not(None)) > 0,
        backup_codes=count(BackupCode, BackupCode.user_id == user.id, BackupCode.used_at.is_(None)),
        groups=count(GroupMember, GroupMember.user_id == user.id),
        consents=count(Consent, Consent.user_id == user.id),
        verified_email=bool(user.email and user.email_verified),
    )


@dataclass(frozen=True)
class Deleted:
    pseudonym: str  # the tombstone's username from now on
    subject: str
    ended: list[EndedSession]
    retired: tuple[str, ...]  # "username", "email": what may not be given to anyone again


def delete_user(db: Session, keyring: Keyring, username: str, *, allow_reuse: bool) -> Deleted:
    user = get_user(db, username)
    ended = end_all_sessions(db, user.id)
    revoke_all_grants(db, user.id)
    retired = () if allow_reuse else _retire_names(db, keyring, user)
    _remove_belongings(db, user.id)
    pseudonym = "deleted-" + secrets.token_hex(8)  # lower case: `idp user show` finds it
    _clear_personal_fields(user, pseudonym)
    user.deleted_at = clock_of(db).now()
    db.flush()
    # the pseudonymous id only: the trail must not keep what the deletion erased
    record_audit(
        db,
        "user.deleted",
        user_id=user.id,
        outcome="success",
        by="cli",
        pseudonym=pseudonym,
        sessions_ended=len(ended),
        names_retired=list(retired),
    )
    return Deleted(pseudonym, user.subject, ended, retired)


def _retire_names(db: Session, keyring: Keyring, user: User) -> tuple[str, ...]:
    retired_names.retire(db, keyring, retired_names.USERNAME, user.username)
    if user.email and user.email_verified:
        retired_names.retire(db, keyring, retired_names.EMAIL, user.email)
        return (retired_names.USERNAME, retired_names.EMAIL)
    return (retired_names.USERNAME,)


def _remove_belongings(db: Session, user_id: int) -> None:
    for model in _REMOVED:
        db.execute(delete(model).where(model.user_id == user_id))
    # the sessions themselves: their address and browser are personal data (ended above)
    session_ids = select(IdpSession.id).where(IdpSession.user_id == user_id).scalar_subquery()
    db.execute(delete(SessionClient).where(SessionClient.session_id.in_(session_ids)))
    db.execute(delete(IdpSession).where(IdpSession.user_id == user_id))


def _clear_personal_fields(user: User, pseudonym: str) -> None:
    user.username = pseudonym
    user.email = None
    user.email_verified = False
    user.name = None
    user.attributes = None
    user.password_hash = None
    user.password_must_change = False
    user.webauthn_handle = None
    user.disabled = True  # whatever else looks at the row: it signs nobody in
    user.require_mfa = False
    user.failed_logins = 0
    user.failures_since = None
    user.locked_until = None
