"""The ways an account action says no, raised (never returned) so the web layer answers
each kind in one place: a page or JSON error with the public message, the sign-in page,
the re-authentication page, or the account page with the message beside its form.
Messages are for the user; none carries a secret, code or password."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from idp.lockout import FailureRecord, failure_words

if TYPE_CHECKING:
    from idp.account.totp import TotpSetup

ReauthReason = Literal["stale", "level"]


class AccountRefused(Exception):
    """No, with a message for the user and the HTTP status that fits it."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class NotSignedIn(AccountRefused):
    """The browser has no live session: sign in first."""

    def __init__(self) -> None:
        super().__init__("Sign in first.", 401)


class NeedsReauth(AccountRefused):
    """A sensitive action from a session that is too old ("stale") or below the user's
    current assurance level ("level"): sign in again, then try again. Nothing was done."""

    def __init__(self, action: str, reason: ReauthReason) -> None:
        super().__init__("Sign in again to continue.", 401 if reason == "stale" else 403)
        self.action = action
        self.reason = reason


class FormRefused(AccountRefused):
    """The account page again, the message beside the form it is about (`section`)."""

    def __init__(self, message: str, status: int = 400, *, section: Literal["account", "password"] = "account") -> None:
        super().__init__(message, status)
        self.section = section


class SetupRefused(AccountRefused):
    """The TOTP set-up page again (same key), the message above its code field."""

    def __init__(self, message: str, status: int, setup: TotpSetup) -> None:
        super().__init__(message, status)
        self.setup = setup  # shown again to its own user; never in the message or repr


def lockout_words(failure: FailureRecord, words: str, *, lock_seconds: int) -> str:
    """The login pages' lockout arithmetic with this form's words (the user is signed in:
    naming the password and the code reveals nothing)."""
    return failure_words(failure, words, lock_seconds=lock_seconds)
