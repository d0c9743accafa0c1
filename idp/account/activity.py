"""Recent security activity on /account: the user's last credential changes (passkeys
added or removed, the authenticator app turned on or off, backup codes generated, the
password changed, a recovery or reset by link), read from the audit trail, each with when and from which device, so a
change the user did not make stands out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.db.models import AuditEvent

LIMIT = 10
# audit kind -> what the list says; the login chain's enrolment writes mfa.totp.enabled too
CREDENTIAL_CHANGES = {
    "passkey.added": "Passkey added",
    "passkey.removed": "Passkey removed",
    "mfa.totp.enabled": "Authenticator app turned on",
    "mfa.totp.disabled": "Authenticator app turned off",
    "mfa.backup_codes.generated": "Backup codes generated",
    "mfa.backup_codes.regenerated": "New backup codes generated",
    "password.changed": "Password changed",
    # one-time links (idp/links/): the recovery shows until it scrolls off, as the issue asks
    "account.recovered": "Account recovered with a recovery link",
    "password.reset": "Password reset with an e-mailed link",
    "user.password_set": "Password set by an administrator or an invitation",
    "email.verified": "E-mail address confirmed",
}


@dataclass(frozen=True)
class ActivityEntry:
    kind: str
    label: str
    at: datetime
    user_agent: str | None  # of the browser that made the change
    ip: str | None
    name: str | None = None  # the passkey's name, for passkey changes


def recent_activity(db: Session, user_id: int, *, limit: int = LIMIT) -> tuple[ActivityEntry, ...]:
    """The newest first; only changes that happened (outcome success)."""
    rows = db.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.user_id == user_id,
            AuditEvent.kind.in_(tuple(CREDENTIAL_CHANGES)),
            AuditEvent.outcome == "success",
        )
        .order_by(AuditEvent.id.desc())
        .limit(limit)
    )
    return tuple(
        ActivityEntry(
            kind=row.kind,
            label=CREDENTIAL_CHANGES[row.kind],
            at=row.at,
            user_agent=row.user_agent,
            ip=row.ip,
            name=_passkey_name(row.detail),
        )
        for row in rows
    )


def _passkey_name(detail: dict[str, object] | None) -> str | None:
    name = (detail or {}).get("name")
    return name if isinstance(name, str) and name else None
