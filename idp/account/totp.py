"""The authenticator app on /account (DESIGN.md §3, §4): set-up (a new key, stored encrypted
and unusable until confirmed; a set-up begun again replaces it), confirmation with a first
code (through the one code-check path: replay, lockout), and turning it off with the
password and a current code (proof.py). Set-up and confirmation add a credential, turning
off removes one: all three are sensitive (reauth.py).

Each action comes in two halves, as the web layer rate-limits (and, to turn TOTP off,
verifies the password with Argon2) in between: `begin_*` admits the request and checks
what needs no write; `finish_*` does the work in one unit of work."""

from __future__ import annotations

from dataclasses import dataclass, field

from idp.account import backup_codes, events, proof, reauth
from idp.account.backup_codes import NewCodes
from idp.account.current import Caller, SignedIn, get_user
from idp.account.errors import AccountRefused, FormRefused, SetupRefused, lockout_words
from idp.account.services import AccountServices
from idp.mail import notices
from idp.mfa import totp

ALREADY_SET_UP = "The authenticator app is already set up."
NO_SET_UP = "There is no set-up to confirm. Start again from your account page."
ENTER_CODE = "Enter the code from your app."
WRONG_CODE = "That code is not right."
MFA_REQUIRED = "Your administrator requires a second factor, so the authenticator cannot be turned off."


@dataclass(frozen=True)
class TotpSetup:
    """What the set-up page shows: the key as text and as a QR code of its otpauth URI."""

    username: str
    secret: str = field(repr=False)
    qr_data_uri: str = field(repr=False)

    @property
    def secret_grouped(self) -> str:
        return totp.grouped(self.secret)


def begin_setup(services: AccountServices, caller: Caller) -> SignedIn:
    who = reauth.admit(services, caller, reauth.TOTP_SETUP)
    with services.sessions() as db:
        if services.factors.factors_of(db, get_user(db, who.user_id)).totp:
            raise AccountRefused(ALREADY_SET_UP, 409)
    return who


def finish_setup(services: AccountServices, caller: Caller, who: SignedIn) -> TotpSetup:
    """A new key, replacing one not yet confirmed."""
    with services.sessions.begin() as db:
        try:
            secret = services.factors.begin_totp(db, who.user_id)
        except ValueError:  # enabled meanwhile, from another browser
            raise AccountRefused(ALREADY_SET_UP, 409) from None
        events.record(db, "mfa.totp.setup_started", who.user_id, caller)
    return _setup(services, who.username, secret)


def begin_confirm(services: AccountServices, caller: Caller, code: str | None) -> SignedIn:
    """No code typed: the set-up page again, nothing counted."""
    who = reauth.admit(services, caller, reauth.TOTP_CONFIRM)
    with services.sessions() as db:
        secret = services.factors.pending_secret(db, who.user_id)
    if secret is None:
        raise AccountRefused(NO_SET_UP, 409)
    if code is None:
        raise SetupRefused(ENTER_CODE, 400, _setup(services, who.username, secret))
    return who


def finish_confirm(services: AccountServices, caller: Caller, who: SignedIn, code: str | None) -> NewCodes:
    """The first code enables the pending authenticator (a wrong one counts toward the
    lockout); then come its backup codes, for the caller to hash and store."""
    with services.sessions.begin() as db:
        secret = services.factors.pending_secret(db, who.user_id)
        if secret is None:  # confirmed or replaced meanwhile
            raise AccountRefused(NO_SET_UP, 409)
        check = services.factors.confirm_totp(db, who.user_id, code)
        events.record(
            db,
            "mfa.totp.enabled" if check.ok else "mfa.totp.confirm_failed",
            who.user_id,
            caller,
            failure=check.failure,
        )
    if check.failure is not None:  # raised after the commit: the failure stays counted
        words = lockout_words(check.failure, WRONG_CODE, lock_seconds=services.lockout.seconds)
        raise SetupRefused(words, 401, _setup(services, who.username, secret))
    services.mail.notify(notices.TOTP_ENABLED, who.user_id, ip=caller.ip)
    return backup_codes.new_codes(who.user_id, backup_codes.GENERATED)


def begin_disable(
    services: AccountServices, caller: Caller, password: str | None, code: str | None
) -> proof.PasswordAndCode:
    who = reauth.admit(services, caller, reauth.TOTP_DISABLE)
    if who.require_mfa:
        raise AccountRefused(MFA_REQUIRED, 403)
    return proof.begin(services, who, password, code)


def finish_disable(
    services: AccountServices, caller: Caller, started: proof.PasswordAndCode, password_ok: bool
) -> None:
    """TOTP and its backup codes gone, in the unit of work whose code check passed."""
    with services.sessions.begin() as db:
        failure = proof.check(db, services, started, password_ok)
        if failure is not None:
            events.record(
                db,
                "mfa.totp.disable_failed",
                started.user_id,
                caller,
                failure=failure,
                reason="code" if password_ok else "password",
            )
        else:
            services.factors.disable_totp(db, started.user_id)
            events.record(db, "mfa.totp.disabled", started.user_id, caller)
    if failure is not None:
        raise FormRefused(lockout_words(failure, proof.WRONG, lock_seconds=services.lockout.seconds), 401)
    services.mail.notify(notices.TOTP_DISABLED, started.user_id, ip=caller.ip)


def _setup(services: AccountServices, username: str, secret: str) -> TotpSetup:
    _, qr_data_uri = services.factors.provisioning(secret, username)
    return TotpSetup(username=username, secret=secret, qr_data_uri=qr_data_uri)
