"""The audit trail: one row per security-relevant event, written in the same unit of work
as the change it describes. Never put a secret, code or token in `detail`."""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from idp.db.models import AuditEvent

log = logging.getLogger("idp.audit")


def record_audit(
    db: Session,
    kind: str,
    *,
    user_id: int | None = None,
    client_id: str | None = None,
    ip: str | None = None,
    **detail: Any,
) -> None:
    db.add(AuditEvent(kind=kind, user_id=user_id, client_id=client_id, ip=ip, detail=detail))
    log.info("%s user=%s client=%s ip=%s %s", kind, user_id, client_id, ip, detail)
