"""What /account's handlers share about the browser and its session: who is asking
(`caller_of`), where re-authentication happens (REAUTH_URL: the login chain runs again and
lands back on /account), the back-channel logouts of sessions an action ended, and the
page's wording of what idp/account returns (times in UTC, devices from user agents).

The rules themselves (recent sign-in, assurance level) are idp/account/reauth.py's."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.requests import Request

from idp.account.activity import ActivityEntry
from idp.account.current import Caller
from idp.account.overview import PasskeyEntry
from idp.account.reauth import needs_reauth
from idp.account.sessions import LiveSession
from idp.login.sessions import EndedSession
from idp.web import backchannel, cookies
from idp.web.oauth_endpoints import request_ip
from idp.web.services import Services
from idp.web.user_agents import describe

__all__ = [
    "REAUTH_URL",
    "ActivityView",
    "PasskeyView",
    "SessionView",
    "activity_views",
    "caller_of",
    "needs_reauth",
    "passkey_views",
    "schedule_backchannel",
    "session_views",
    "utc_text",
]

REAUTH_URL = "/login?reauth=1"


def caller_of(request: Request) -> Caller:
    return Caller(
        cookie=cookies.read(request, cookies.SESSION),
        ip=request_ip(request),
        user_agent=request.headers.get("user-agent"),
    )


def schedule_backchannel(services: Services, ended: Iterable[EndedSession]) -> None:
    """Back-channel logout tokens for sessions ended in a committed unit of work."""
    for one in ended:
        backchannel.schedule(services, one)


def utc_text(moment: datetime) -> str:
    """YYYY-MM-DD HH:MM UTC (stored times are naive UTC, or aware)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class SessionView:
    id: int
    device: str
    ip: str
    created_at: str
    last_seen_at: str
    current: bool


@dataclass(frozen=True)
class PasskeyView:
    id: int
    name: str
    created_at: str
    last_used_at: str | None


@dataclass(frozen=True)
class ActivityView:
    kind: str
    label: str
    name: str | None  # the passkey's name, when the change was a passkey's
    at: str
    device: str
    ip: str


def session_views(found: Iterable[LiveSession]) -> tuple[SessionView, ...]:
    return tuple(
        SessionView(
            id=one.id,
            device=describe(one.user_agent),
            ip=one.ip or "unknown",
            created_at=utc_text(one.created_at),
            last_seen_at=utc_text(one.last_seen_at),
            current=one.current,
        )
        for one in found
    )


def passkey_views(found: Iterable[PasskeyEntry]) -> tuple[PasskeyView, ...]:
    return tuple(
        PasskeyView(
            id=one.id,
            name=one.name,
            created_at=utc_text(one.created_at),
            last_used_at=utc_text(one.last_used_at) if one.last_used_at else None,
        )
        for one in found
    )


def activity_views(found: Iterable[ActivityEntry]) -> tuple[ActivityView, ...]:
    return tuple(
        ActivityView(
            kind=one.kind,
            label=one.label,
            name=one.name,
            at=utc_text(one.at),
            device=describe(one.user_agent),
            ip=one.ip or "unknown",
        )
        for one in found
    )
