"""The audit trail: one row per security-relevant event, written in the same unit of work
as the change it describes, and the same event as one JSON line on the `idp.audit` logger.
Never put a secret, code or token in `detail`.

Kinds are `area.event` (login.password.failed, account.locked, token.issued, …); `outcome`
is success, failure or refused (refused: a rate limit or a lock said no before any check).
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from idp.clock import clock_of
from idp.db.models import AuditEvent, User
from idp.db.prepared import PreparedInsert
from idp.observability.metrics import count_audit_event
from idp.observability.request_ids import current_request_id

log = logging.getLogger("idp.audit")

# Run on the driver (idp/db/prepared.py): the token endpoint writes one per grant, and ORM
# bookkeeping, then SQLAlchemy's execution machinery, cost more than the row.
_INSERT = PreparedInsert(
    cast(Table, AuditEvent.__table__), ("at", "kind", "user_id", "client_id", "ip", "user_agent", "outcome", "detail")
)
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
    at = clock_of(db).now()
    agent = user_agent[:USER_AGENT_MAX] if user_agent else None
    request_id = current_request_id.get()
    if request_id is not None:  # ties the row to the request's log line (and nginx's)
        detail["request_id"] = request_id
    _INSERT.run(
        db.connection(),
        {
            "at": at,
            "kind": kind,
            "user_id": user_id,
            "client_id": client_id,
            "ip": ip,
            "user_agent": agent,
            "outcome": outcome,
            "detail": detail,
        },
    )
    if log.isEnabledFor(logging.INFO):
        log.info(
            event_json(
                at=at,
                kind=kind,
                outcome=outcome,
                user_id=user_id,
                client_id=client_id,
                ip=ip,
                user_agent=agent,
                detail=detail,
            )
        )
    count_audit_event(kind, outcome, detail)


def event_json(**fields: Any) -> str:
    """One audit event as one JSON line (the log line and `idp audit tail` print the same)."""
    at = fields.pop("at")
    return json.dumps({"event": "audit", "at": at.isoformat(), **fields}, separators=(",", ":"), default=str)


def recent_events(
    db: Session, *, limit: int, kind_prefix: str = "", username: str | None = None, after_id: int = 0
) -> list[tuple[int, str]]:
    """(id, JSON line) of the newest `limit` events matching, oldest first."""
    query = (
        select(AuditEvent, User.username).outerjoin(User, User.id == AuditEvent.user_id).where(AuditEvent.id > after_id)
    )
    if kind_prefix:
        query = query.where(AuditEvent.kind.startswith(kind_prefix, autoescape=True))
    if username is not None:
        query = query.where(User.username == username)
    rows = db.execute(query.order_by(AuditEvent.id.desc()).limit(limit)).all()
    return [
        (
            e.id,
            event_json(
                at=e.at,
                kind=e.kind,
                outcome=e.outcome,
                user_id=e.user_id,
                username=name,
                client_id=e.client_id,
                ip=e.ip,
                user_agent=e.user_agent,
                detail=e.detail,
            ),
        )
        for e, name in reversed(rows)
    ]
