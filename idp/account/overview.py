"""What /account shows, read in one unit of work: the user, their second factors and
passkeys, their live sessions and their recent security activity. Facts only (times as
datetimes, raw user agents): the web layer words and formats them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from idp.account.activity import ActivityEntry, recent_activity
from idp.account.current import Caller, get_signed_in, get_user
from idp.account.services import AccountServices
from idp.account.sessions import LiveSession, live_sessions
from idp.security.password_policy import (
    MIN_LENGTH_SINGLE_FACTOR,
    MIN_LENGTH_WITH_SECOND_FACTOR,
)


@dataclass(frozen=True)
class PasskeyEntry:
    id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True)
class AccountOverview:
    username: str
    require_mfa: bool
    totp: bool  # a confirmed authenticator app
    backup_codes_left: int
    has_password: bool
    has_second_factor: bool
    passkeys: tuple[PasskeyEntry, ...]
    sessions: tuple[LiveSession, ...]  # this browser's first
    activity: tuple[ActivityEntry, ...]  # the newest first

    @property
    def password_min(self) -> int:
        """The policy's minimum length for this user (shorter with a second factor)."""
        return MIN_LENGTH_WITH_SECOND_FACTOR if self.has_second_factor else MIN_LENGTH_SINGLE_FACTOR


def get_overview(services: AccountServices, caller: Caller) -> AccountOverview:
    with services.sessions.begin() as db:  # a write: finding the session may touch its last_seen
        who = get_signed_in(db, services, caller)
        user = get_user(db, who.user_id)
        factors = services.factors.factors_of(db, user, count_backup_codes=True)
        passkeys = tuple(
            PasskeyEntry(id=p.id, name=p.name, created_at=p.created_at, last_used_at=p.last_used_at)
            for p in services.passkeys.list(db, user.id)
        )
        return AccountOverview(
            username=user.username,
            require_mfa=user.require_mfa,
            totp=factors.totp,
            backup_codes_left=factors.backup_codes,
            has_password=user.password_hash is not None,
            has_second_factor=factors.has_second_factor,
            passkeys=passkeys,
            sessions=live_sessions(db, services.session_policy, user.id, who.session_id),
            activity=recent_activity(db, user.id),
        )
