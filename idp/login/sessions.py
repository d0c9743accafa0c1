"""IdP sessions: the browser holds an opaque random id (cookie); the database holds its
keyed digest with auth_time, acr and amr. Idle and absolute lifetimes end it. Every
authentication event issues a new cookie value (a new session, or a new value for the one
a step-up upgrades)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from idp.audit.trail import record_audit
from idp.clock import clock_of
from idp.db.models import IdpSession, SessionClient, User
from idp.revocation import revoke_session_grants
from idp.security.keyring import Keyring, new_secret

_TOUCH_EVERY = timedelta(seconds=60)  # last_seen is coarse: no write on every request
_SESSION_BY_DIGEST = select(IdpSession).where(IdpSession.cookie_digest == bindparam("digest"))


@dataclass(frozen=True)
class SessionPolicy:
    idle_seconds: int
    absolute_seconds: int
    max_per_user: int = 10


def start_session(
    db: Session,
    keyring: Keyring,
    policy: SessionPolicy,
    user: User,
    *,
    acr: str,
    amr: list[str],
    user_agent: str | None,
    ip: str | None,
) -> tuple[str, IdpSession]:
    cookie = new_secret(32)
    now = clock_of(db).now()
    row = IdpSession(
        cookie_digest=keyring.digest(cookie),
        sid=new_secret(16),
        user_id=user.id,
        auth_time=now,
        acr=acr,
        amr=amr,
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(seconds=policy.absolute_seconds),
        user_agent=(user_agent or "")[:300] or None,
        ip=ip,
    )
    db.add(row)
    db.flush()
    record_audit(db, "session.started", user_id=user.id, ip=ip, sid=row.sid, acr=acr, amr=amr)
    _evict_beyond_cap(db, user.id, policy.max_per_user, ip)
    return cookie, row


def _evict_beyond_cap(db: Session, user_id: int, cap: int, ip: str | None) -> None:
    """A user has at most `cap` live sessions: the oldest beyond it end (and their grants,
    except offline_access ones, are revoked), audited."""
    now = clock_of(db).now()
    live = list(
        db.scalars(
            select(IdpSession)
            .where(IdpSession.user_id == user_id, IdpSession.ended_at.is_(None), IdpSession.expires_at > now)
            .order_by(IdpSession.created_at.desc(), IdpSession.id.desc())
        )
    )
    for old in live[cap:]:
        old.ended_at = now
        revoke_session_grants(db, old.sid)
        record_audit(db, "session.evicted", user_id=user_id, ip=ip, outcome="success", sid=old.sid, cap=cap)
        db.info.setdefault("ended_sids", []).append(old.sid)  # the web layer sends their back-channel logouts


def find_session(
    db: Session, keyring: Keyring, policy: SessionPolicy, cookie: str | None
) -> tuple[IdpSession, User] | None:
    if not cookie or len(cookie) > 100:
        return None
    row = db.scalar(_SESSION_BY_DIGEST, {"digest": keyring.digest(cookie)})
    now = clock_of(db).now()
    if row is None or row.ended_at is not None or row.expires_at <= now:
        return None
    if now - row.last_seen_at > timedelta(seconds=policy.idle_seconds):
        return None
    user = db.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    if now - row.last_seen_at > _TOUCH_EVERY:
        row.last_seen_at = now
    return row, user


def is_live(db: Session, sid: str, user_id: int | None) -> bool:
    """The session `sid` of `user_id` has not ended or expired (idle time aside: a step-up
    begun from it keeps it in use)."""
    row = db.scalar(
        select(IdpSession).where(IdpSession.sid == sid, IdpSession.user_id == user_id, IdpSession.ended_at.is_(None))
    )
    return row is not None and row.expires_at > clock_of(db).now()


def upgrade_session(
    db: Session, keyring: Keyring, user_id: int, sid: str, *, acr: str, amr: list[str], ip: str | None
) -> tuple[str, IdpSession] | None:
    """A step-up or re-authentication: the same session (same sid, so ID and logout tokens
    still name it) now holds more, as of now, under a new cookie value; the old value is dead
    from this commit on (a cookie copied before the step-up does not inherit it)."""
    row = db.scalar(
        select(IdpSession).where(IdpSession.sid == sid, IdpSession.user_id == user_id, IdpSession.ended_at.is_(None))
    )
    now = clock_of(db).now()
    if row is None or row.expires_at <= now:
        return None
    cookie = new_secret(32)
    row.cookie_digest = keyring.digest(cookie)
    row.acr, row.amr, row.auth_time = acr, amr, now
    record_audit(db, "session.stepped_up", user_id=user_id, ip=ip, sid=sid, acr=acr, amr=amr)
    return cookie, row


@dataclass(frozen=True)
class EndedSession:
    user_id: int
    sid: str
    subject: str
    clients: tuple[str, ...]  # the RPs it had signed into


def end_session(db: Session, session_id: int) -> EndedSession | None:
    row = db.get(IdpSession, session_id)
    if row is None or row.ended_at is not None:
        return None
    now = clock_of(db).now()
    row.ended_at = now
    user = db.get(User, row.user_id)
    clients = tuple(db.scalars(select(SessionClient.client_id).where(SessionClient.session_id == row.id)))
    revoke_session_grants(db, row.sid)  # refresh and access tokens, except offline_access grants
    return EndedSession(user_id=row.user_id, sid=row.sid, subject=user.subject if user else "", clients=clients)


def describe_ended(db: Session, sid: str) -> EndedSession | None:
    """An already ended session (e.g. evicted by the per-user cap), for its back-channel logouts."""
    row = db.scalar(select(IdpSession).where(IdpSession.sid == sid))
    if row is None:
        return None
    user = db.get(User, row.user_id)
    clients = tuple(db.scalars(select(SessionClient.client_id).where(SessionClient.session_id == row.id)))
    return EndedSession(user_id=row.user_id, sid=row.sid, subject=user.subject if user else "", clients=clients)


def end_all_sessions(db: Session, user_id: int, *, except_session_id: int | None = None) -> list[EndedSession]:
    ids = db.scalars(select(IdpSession.id).where(IdpSession.user_id == user_id, IdpSession.ended_at.is_(None)))
    ended = [end_session(db, session_id) for session_id in list(ids) if session_id != except_session_id]
    return [e for e in ended if e is not None]
