"""The account's sessions and the rules shared by sensitive account actions (DESIGN.md §3):

- the live sessions of a user as /account lists them (the browser's own marked);
- `needs_reauth`: sensitive actions (turning TOTP off, new backup codes, a new password,
  removing a passkey) need a sign-in no older than `settings.reauth_seconds`; otherwise the
  user goes through the login chain again (REAUTH_URL), which lands back on /account;
- ending sessions: `end_session` per session (it revokes that session's refresh tokens but
  offline_access ones), audited, and the ended sessions handed back so the caller can
  schedule their back-channel logout tokens once the transaction has committed.

Only sync helpers here (the handlers are in idp/web/account.py)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.clock import utcnow
from idp.db.models import IdpSession
from idp.login.sessions import SessionPolicy, find_session
from idp.oidc.logout import (
    EndedSession,
    end_all_sessions,
    end_session,
    revoke_all_refresh_tokens,
)
from idp.audit.trail import record_audit
from idp.settings import Settings
from idp.web import backchannel
from idp.web.services import Services
from idp.web.user_agents import describe

REAUTH_URL = "/login?reauth=1"
# Larger ids cannot exist (the columns are 32-bit on PostgreSQL) and would make the
# database raise instead of finding nothing.
MAX_ROW_ID = 2**31 - 1


@dataclass(frozen=True)
class SessionView:
    """One live session as /account shows it (times already formatted, UTC)."""
    id: int
    device: str
    ip: str
    created_at: str
    last_seen_at: str
    current: bool


@dataclass(frozen=True)
class CurrentSession:
    user_id: int
    session_id: int
    auth_time: datetime


def utc_text(moment: datetime) -> str:
    """YYYY-MM-DD HH:MM UTC (stored times are naive UTC, or aware)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def needs_reauth(settings: Settings, auth_time: datetime, *, now: datetime | None = None) -> bool:
    """True when the session's last interactive sign-in is older than settings.reauth_seconds."""
    return ((now or utcnow()) - auth_time).total_seconds() > settings.reauth_seconds


def valid_row_id(value: object) -> int | None:
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return number if 0 < number <= MAX_ROW_ID else None


def current_session(services: Services, cookie: str | None) -> CurrentSession | None:
    """The browser's live session: its user, row id and auth_time."""
    with services.sessions.begin() as db:
        found = find_session(db, services.keyring, services.session_policy, cookie)
        if found is None:
            return None
        row, user = found
        return CurrentSession(user_id=user.id, session_id=row.id, auth_time=row.auth_time)


def live_sessions(db: Session, policy: SessionPolicy, user_id: int, current_id: int | None) -> tuple[SessionView, ...]:
    """The user's sessions that still work (not ended, not past their absolute or idle
    lifetime): the current one first, then the most recently seen."""
    now = utcnow()
    rows = db.scalars(select(IdpSession).where(
        IdpSession.user_id == user_id, IdpSession.ended_at.is_(None), IdpSession.expires_at > now,
        IdpSession.last_seen_at >= now - timedelta(seconds=policy.idle_seconds),
    ).order_by(IdpSession.last_seen_at.desc(), IdpSession.id.desc()))
    views = [SessionView(id=row.id, device=describe(row.user_agent), ip=row.ip or "unknown",
                         created_at=utc_text(row.created_at), last_seen_at=utc_text(row.last_seen_at),
                         current=row.id == current_id) for row in rows]
    views.sort(key=lambda view: not view.current)  # stable: the rest keep their order
    return tuple(views)


def end_one(db: Session, user_id: int, session_id: int, *, ip: str | None, agent: str | None) -> EndedSession | None:
    """Ends one of the user's own live sessions; None when there is no such session (or it
    is someone else's: the caller answers 404 either way)."""
    row = db.get(IdpSession, session_id)
    if row is None or row.user_id != user_id or row.ended_at is not None or row.expires_at <= utcnow():
        return None
    ended = end_session(db, session_id)
    if ended is not None:
        record_audit(db, "session.ended_by_user", user_id=user_id, ip=ip, user_agent=agent, outcome="success",
                     sid=ended.sid, clients=list(ended.clients))
    return ended


def end_others(db: Session, user_id: int, current_id: int, *, ip: str | None, agent: str | None,
               reason: str) -> list[EndedSession]:
    """Ends every other session of the user, one audit row each (`reason` says why)."""
    ended = end_all_sessions(db, user_id, except_session_id=current_id)
    for one in ended:
        record_audit(db, "session.ended_by_user", user_id=user_id, ip=ip, user_agent=agent, outcome="success",
                     sid=one.sid, clients=list(one.clients), reason=reason)
    return ended


def end_others_and_revoke_tokens(db: Session, user_id: int, current_id: int, *, ip: str | None, agent: str | None,
                                 reason: str) -> list[EndedSession]:
    """After a credential change: the other sessions end and every refresh token of the
    user (offline_access ones too) is revoked; the current session stays."""
    ended = end_others(db, user_id, current_id, ip=ip, agent=agent, reason=reason)
    revoke_all_refresh_tokens(db, user_id)
    return ended


def schedule_backchannel(services: Services, ended: list[EndedSession] | tuple[EndedSession, ...]) -> None:
    """Back-channel logout tokens for sessions ended in a committed transaction."""
    for one in ended:
        backchannel.schedule(services, one)
