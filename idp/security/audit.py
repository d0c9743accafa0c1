"""The audit trail: one row per security-relevant event, written in the same unit of work
as the change it describes, and the same event as one JSON line on the `idp.audit` logger.
Never put a secret, code or token in `detail`.

Kinds are `area.event` (login.password.failed, account.locked, token.issued, …); `outcome`
is success, failure or refused (refused: a rate limit or a lock said no before any check).
"""
from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from idp.clock import utcnow
from idp.db.models import AuditEvent

log = logging.getLogger("idp.audit")

# A Core insert: the token endpoint writes one per grant, and ORM bookkeeping would cost
# more than the row.
_INSERT = insert(AuditEvent.__table__)
USER_AGENT_MAX = 300


def record_audit(
    db: Session,
    kind: str,
    *,
    user_id: int | None = None,
    client_id: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    outcome: str | None = None,
    **detail: Any,
) -> None:
    at = utcnow()
    agent = user_agent[:USER_AGENT_MAX] if user_agent else None
    db.connection().execute(_INSERT, {
        "at": at, "kind": kind, "user_id": user_id, "client_id": client_id, "ip": ip, "user_agent": agent,
        "outcome": outcome, "detail": detail,
    })
    if log.isEnabledFor(logging.INFO):
        log.info(json.dumps({
            "event": "audit", "at": at.isoformat(), "kind": kind, "outcome": outcome, "user_id": user_id,
            "client_id": client_id, "ip": ip, "user_agent": agent, "detail": detail,
        }, separators=(",", ":"), default=str))
