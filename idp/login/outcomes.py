"""What one call into the login flow returns (idp/login/flow.py), and what it is given.

The web layer turns each into a response: Continue and Completed into a redirect (after an
optional interstitial Notice), Failed into the step's page again with the message, Unmet
into the OIDC error at the RP, a StepView into the step's page. Refusals that end the
request (a gone transaction, a step out of turn, a rate limit) are exceptions
(idp/login/refusals.py), handled in one place by the web layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from idp.login.sessions import EndedSession
from idp.login.transaction import LoginTransaction


@dataclass(frozen=True)
class Attempt:
    """The request as the flow may see it: never the HTTP request itself."""

    ip: str | None
    user_agent: str | None
    browser: str | None  # keyed digest of the login binding this browser presented, if any
    new_browser: str  # the digest a transaction created by this request is bound to
    session_cookie: str | None  # the browser's IdP session cookie value, if any


@dataclass(frozen=True)
class Notice:
    """A page shown once between a step and the rest of the chain (backup codes left, new
    backup codes), whose Continue link goes where the chain goes next."""

    template: str
    context: dict[str, Any]


@dataclass(frozen=True)
class StepView:
    """A step's page: its template and what it shows."""

    step: str
    template: str
    tx: LoginTransaction | None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Continue:
    """The step passed and the chain needs another: go to `step`."""

    tx: LoginTransaction
    step: str
    notice: Notice | None = None
    new_transaction: bool = False  # the browser must be sent its login binding


@dataclass(frozen=True)
class Failed:
    """The step's credential was refused (wrong, locked, another identity, or a bad form):
    its page again with `message`, status 401 (or 400 for a form missing its fields)."""

    view: StepView
    message: str
    status: int = 401


@dataclass(frozen=True)
class Completed:
    """The chain is done: the browser gets `session_cookie` and goes to `resume_url`."""

    tx: LoginTransaction
    resume_url: str
    session_cookie: str
    sid: str
    ended: tuple[EndedSession, ...] = ()  # sessions ended (cap, replaced): their RPs must hear of it
    notice: Notice | None = None
    new_transaction: bool = False


@dataclass(frozen=True)
class Unmet:
    """The user cannot reach the level the RP asked for (e.g. phr without a passkey): the
    transaction is consumed and the RP gets unmet_authentication_requirements. When a
    group's minimum set the level (`ask_admin`), the user is told first: only an
    administrator can give them what it takes (an enrolment link for a passkey)."""

    tx: LoginTransaction
    ask_admin: bool = False


@dataclass(frozen=True)
class NotAllowed:
    """The user is known, and is not in any of the app's allowed_groups: the chain ends
    there (the transaction consumed, no session started, no further factor asked), and the
    page's only button returns access_denied to the RP."""

    tx: LoginTransaction


@dataclass(frozen=True)
class Challenge:
    """A step's challenge for the browser (the passkey options)."""

    tx: LoginTransaction
    data: dict[str, Any]
    new_transaction: bool = False


Outcome = Continue | Failed | Completed | Unmet | NotAllowed
