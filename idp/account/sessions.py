"""The user's sign-in sessions as /account shows them, and ending them (DESIGN.md §3):
one other session, or all others, each audited (session.ended_by_user); after a credential
change, all others and every refresh token of the user. Ended sessions are handed back so
the caller can send their back-channel logouts once the unit of work has committed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.account import events, reauth
from idp.account.current import Caller
from idp.account.errors import AccountRefused
from idp.account.services import AccountServices
from idp.clock import clock_of
from idp.db.models import IdpSession
from idp.login.sessions import (
    EndedSession,
    SessionPolicy,
    end_all_sessions,
    end_session,
)
from idp.revocation import revoke_all_grants

# Larger ids cannot exist (the columns are 32-bit on PostgreSQL) and would make the
# database raise instead of finding nothing.
MAX_ROW_ID = 2**31 - 1
NO_SUCH_SESSION = "No such session."
THIS_SESSION = "That is the session you are using. To end it, sign out."


@dataclass(frozen=True)
class LiveSession:
    id: int
    user_agent: str | None
    ip: str | None
    created_at: datetime
    last_seen_at: datetime
    current: bool  # this browser's


def row_id(value: object) -> int | None:
    """A row id taken from a URL, or None when no row can have it."""
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return number if 0 < number <= MAX_ROW_ID else None


def live_sessions(db: Session, policy: SessionPolicy, user_id: int, current_id: int | None) -> tuple[LiveSession, ...]:
    """The user's sessions that still work (not ended, not past their absolute or idle
    lifetime): the current one first, then the most recently seen."""
    now = clock_of(db).now()
    rows = db.scalars(
        select(IdpSession)
        .where(
            IdpSession.user_id == user_id,
            IdpSession.ended_at.is_(None),
            IdpSession.expires_at > now,
            IdpSession.last_seen_at >= now - timedelta(seconds=policy.idle_seconds),
        )
        .order_by(IdpSession.last_seen_at.desc(), IdpSession.id.desc())
    )
    found = [
        LiveSession(
            id=row.id,
            user_agent=row.user_agent,
            ip=row.ip,
            created_at=row.created_at,
            last_seen_at=row.last_seen_at,
            current=row.id == current_id,
        )
        for row in rows
    ]
    found.sort(key=lambda one: not one.current)  # stable: the rest keep their order
    return tuple(found)


def end_one(services: AccountServices, caller: Caller, session_id: object) -> EndedSession:
    """Ends one other live session of the user's; someone else's, or none, is 404 alike."""
    who = reauth.admit(services, caller)
    wanted = row_id(session_id)
    if wanted is None:
        raise AccountRefused(NO_SUCH_SESSION, 404)
    if wanted == who.session_id:
        raise AccountRefused(THIS_SESSION, 400)
    with services.sessions.begin() as db:
        row, now = db.get(IdpSession, wanted), clock_of(db).now()
        if row is None or row.user_id != who.user_id or row.ended_at is not None or row.expires_at <= now:
            raise AccountRefused(NO_SUCH_SESSION, 404)
        ended = end_session(db, wanted)
        if ended is None:
            raise AccountRefused(NO_SUCH_SESSION, 404)
        events.record(db, "session.ended_by_user", who.user_id, caller, sid=ended.sid, clients=list(ended.clients))
    return ended


def end_others(services: AccountServices, caller: Caller) -> list[EndedSession]:
    who = reauth.admit(services, caller)
    with services.sessions.begin() as db:
        return _end_others(db, who.user_id, who.session_id, caller, reason="signed_out_others")


def end_others_and_revoke_tokens(
    db: Session, user_id: int, current_id: int, caller: Caller, *, reason: str
) -> list[EndedSession]:
    """After a credential change: the other sessions end and every grant of the user (refresh
    and access tokens, offline_access ones too) is revoked; the current session stays."""
    ended = _end_others(db, user_id, current_id, caller, reason=reason)
    revoke_all_grants(db, user_id)
    return ended


def _end_others(db: Session, user_id: int, current_id: int, caller: Caller, *, reason: str) -> list[EndedSession]:
    ended = end_all_sessions(db, user_id, except_session_id=current_id)
    for one in ended:
        events.record(
            db, "session.ended_by_user", user_id, caller, sid=one.sid, clients=list(one.clients), reason=reason
        )
    return ended
