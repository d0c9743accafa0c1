"""Refusals that end a request to the login flow, raised rather than returned so every
entry point handles them in one place (the web layer maps each to one page or JSON error)."""

from __future__ import annotations

from idp.security.rate_limits import Verdict

EXPIRED_MESSAGE = "This sign-in request has expired or was already used. Go back to the application and start again."
NOT_STARTED_MESSAGE = "Start by signing in with your username and password."


class FlowRefused(Exception):
    status = 400
    message = EXPIRED_MESSAGE


class TransactionGone(FlowRefused):
    """No open transaction of this browser by that id: unknown, expired, finished, started
    by another browser, or a step-up whose session has ended. One page for all: nothing to
    learn from which."""

    def __init__(self, parked: dict[str, str] | None = None) -> None:
        super().__init__(self.message)
        # the parked authorization request, when this browser's transaction was found but can
        # take no step (finished, or its step-up session ended): its redirect_uri was verified
        # when it was parked, so the page may offer the way back to the RP (error, state, iss)
        self.parked = parked


class NotThisStep(FlowRefused):
    """The step named is not one the chain accepts now."""

    message = NOT_STARTED_MESSAGE

    def __init__(self) -> None:
        super().__init__(self.message)


class UnknownStep(FlowRefused):
    status = 404
    message = "No such page."

    def __init__(self) -> None:
        super().__init__(self.message)


class TooManyAttempts(FlowRefused):
    status = 429

    def __init__(self, verdict: Verdict) -> None:
        super().__init__("too many attempts")
        self.verdict = verdict
