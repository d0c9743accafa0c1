"""The account's audit events: one writer for every account action (the caller's IP and
User-Agent on each row, so /account can show where a change came from), the outcome
derived from the lockout counter's answer, and account.locked when a failure took the lock."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from idp.account.current import Caller
from idp.audit.trail import record_audit
from idp.lockout import FailureRecord


def record(
    db: Session, kind: str, user_id: int, caller: Caller, *, failure: FailureRecord | None = None, **detail: Any
) -> None:
    outcome = "success" if failure is None else "refused" if failure.was_locked else "failure"
    _write(db, kind, user_id, caller, outcome, detail)
    if failure is not None and failure.locked_now:
        _write(db, "account.locked", user_id, caller, "success", {"known_user": True})


def record_failure(db: Session, kind: str, user_id: int, caller: Caller, **detail: Any) -> None:
    """A check that failed without touching the lockout counter (e.g. a passkey ceremony)."""
    _write(db, kind, user_id, caller, "failure", detail)


def record_refusal(db: Session, kind: str, user_id: int, caller: Caller, **detail: Any) -> None:
    """Said no before any check ran (outcome refused): e.g. a session too old for the action."""
    _write(db, kind, user_id, caller, "refused", detail)


def _write(db: Session, kind: str, user_id: int, caller: Caller, outcome: str, detail: dict[str, Any]) -> None:
    record_audit(db, kind, user_id=user_id, ip=caller.ip, user_agent=caller.user_agent, outcome=outcome, **detail)
