"""Counting a failed credential and saying so: the one place the lockout counter is spent
and its audit written, for every step (password, totp, backup_code, passkey, enrol_totp)
and for /account's code checks.

The words are the same for unknown, wrong and locked: only the counter's arithmetic speaks,
and unknown names have the same arithmetic (phantom counters, idp/lockout.py)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from idp.audit.trail import record_audit
from idp.lockout import FailureRecord, Lockout, failure_words
from idp.security.keyring import Keyring

LOCKED = FailureRecord(remaining=0, locked_now=False, was_locked=True)


def count_failure(
    db: Session,
    lockout: Lockout,
    keyring: Keyring,
    kind: str,
    *,
    user_id: int | None,
    name: str | None,
    ip: str | None,
    user_agent: str | None,
    reason: str | None = None,
    counts: bool = True,
) -> FailureRecord:
    """Counts one failure of `kind` (an audit kind's prefix, e.g. login.password) against
    the user's counter, or the name's phantom counter when no account has it, and audits
    it (and the lock, when this failure took it). `counts=False`: audited only (no user to
    blame and no name, e.g. an unknown passkey)."""
    if not counts or (user_id is None and not name):
        failure = FailureRecord(remaining=lockout.attempts, locked_now=False, was_locked=False)
    elif user_id is None:
        assert name is not None
        failure = lockout.record_phantom_failure(keyring.digest("lockout-name:" + name))
    else:
        failure = lockout.record_failure(db, user_id)
    record_audit(
        db,
        f"{kind}.failed",
        user_id=user_id,
        ip=ip,
        user_agent=user_agent,
        outcome="refused" if failure.was_locked else "failure",
        known_user=user_id is not None,
        **({"reason": reason} if reason else {}),
    )
    if failure.locked_now:
        record_audit(
            db,
            "account.locked",
            user_id=user_id,
            ip=ip,
            user_agent=user_agent,
            outcome="success",
            known_user=user_id is not None,
            seconds=lockout.seconds,
        )
    return failure


def refuse_locked(db: Session, kind: str, *, user_id: int, ip: str | None, user_agent: str | None) -> FailureRecord:
    """A right credential on a locked account: refused exactly like a wrong one, recorded as
    refused only (never as a success first), and nothing counted."""
    record_audit(
        db,
        f"{kind}.failed",
        user_id=user_id,
        ip=ip,
        user_agent=user_agent,
        outcome="refused",
        known_user=True,
        reason="locked",
    )
    return LOCKED


def failure_message(lockout: Lockout, failure: FailureRecord, words: str) -> str:
    return failure_words(failure, words, lock_seconds=lockout.seconds)
