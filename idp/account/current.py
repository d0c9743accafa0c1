"""Who is asking: the browser (`Caller`: its session cookie, IP and User-Agent, the last two
for the audit trail) and the signed-in user its live session belongs to (`SignedIn`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from idp.account.errors import NotSignedIn
from idp.account.services import AccountServices
from idp.db.models import User
from idp.login.sessions import find_session


@dataclass(frozen=True)
class Caller:
    cookie: str | None = field(repr=False)  # the IdP session cookie's value, as the browser sent it
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True)
class SignedIn:
    user_id: int
    username: str
    email: str | None
    require_mfa: bool
    password_hash: str | None = field(repr=False)  # None: the account signs in without a password
    session_id: int  # this browser's session (idp_sessions.id)
    auth_time: datetime  # its last interactive sign-in
    acr: str  # the level that sign-in reached (pwd < mfa < phr)
    sid: str  # its public id (idp_sessions.sid): what an invitation's link notes as the session it started


def get_signed_in(db: Session, services: AccountServices, caller: Caller) -> SignedIn:
    found = find_session(db, services.keyring, services.session_policy, caller.cookie)
    if found is None:
        raise NotSignedIn()
    row, user = found
    return SignedIn(
        user_id=user.id,
        username=user.username,
        email=user.email,
        require_mfa=user.require_mfa,
        password_hash=user.password_hash,
        session_id=row.id,
        auth_time=row.auth_time,
        acr=row.acr,
        sid=row.sid,
    )


def get_user(db: Session, user_id: int) -> User:
    """The signed-in user's row (their session was found live, so it exists)."""
    user = db.get(User, user_id)
    assert user is not None
    return user
