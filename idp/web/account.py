"""/account: self-service (DESIGN.md §3, §4): TOTP set-up and confirmation, turning it
off, new backup codes, a new password, and the user's sessions (listed; any other one, or
all others, signed out).

Turning TOTP off and regenerating need the password and a current code; the password is
checked first, and the code only after a right password (so a wrong password never uses up
a code). Nothing is written but failure counts until both checks pass. A new password needs
the current one (a wrong one counts toward the lockout) and passes the password policy;
it ends the other sessions and revokes every refresh token.

Sensitive actions (TOTP off, new backup codes, new password; passkey removal in
account_passkeys) first need a recent sign-in (account_sessions.needs_reauth), before any
Argon2 or code check; otherwise the login chain runs again. Rate limits run before any
Argon2; Argon2 runs outside every transaction."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from idp.db.models import User
from idp.login.lockout import FailureRecord
from idp.login.sessions import find_session
from idp.mfa import backup_codes, totp
from idp.mfa.factors import CodeCheck
from idp.oidc.logout import EndedSession
from idp.audit.trail import record_audit
from idp.security.password_policy import (
    MIN_LENGTH_SINGLE_FACTOR,
    MIN_LENGTH_WITH_SECOND_FACTOR,
    PasswordRejected,
    check_password,
)
from idp.web import cookies
from idp.web.account_sessions import (
    REAUTH_URL,
    SessionView,
    end_one,
    end_others,
    end_others_and_revoke_tokens,
    live_sessions,
    needs_reauth,
    schedule_backchannel,
    utc_text,
    valid_row_id,
)
from idp.web.blocking import run_blocking
from idp.web.forms import read_form
from idp.web.login import failure_message
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.pages import error_page, render
from idp.web.services import Services
from idp.web.throttle import check_limits, too_many_page

WRONG_CODE = "That code is not right."
WRONG_PASSWORD_OR_CODE = "The password or code is not right."
MFA_REQUIRED = "Your administrator requires a second factor, so the authenticator cannot be turned off."
WRONG_CURRENT_PASSWORD = "Your current password is not right."
LOCKED = FailureRecord(remaining=0, locked_now=False, was_locked=True)
# GET /account?done=… after a POST that redirected: a fixed message, never text from the URL
NOTICES = {
    "password": "Your password was changed. Your other sessions were signed out.",
    "session": "That session was signed out.",
    "sessions": "All your other sessions were signed out.",
}


@dataclass(frozen=True)
class PasskeyView:
    """A passkey as the /account list shows it (times already formatted, UTC)."""
    id: int
    name: str
    created_at: str
    last_used_at: str | None


@dataclass(frozen=True)
class Account:
    user_id: int
    username: str
    require_mfa: bool
    totp: bool
    backup_codes_left: int
    password_hash: str | None = field(repr=False)
    passkeys: tuple[PasskeyView, ...] = ()
    email: str | None = None
    session_id: int = 0  # this browser's session (idp_sessions.id)
    auth_time: datetime | None = None  # its last interactive sign-in
    sessions: tuple[SessionView, ...] = ()  # the user's live sessions, this one first
    has_second_factor: bool = False

    @property
    def has_password(self) -> bool:
        return self.password_hash is not None

    @property
    def password_min(self) -> int:
        """The policy's minimum length for this user (shorter with a second factor)."""
        return MIN_LENGTH_WITH_SECOND_FACTOR if self.has_second_factor else MIN_LENGTH_SINGLE_FACTOR


# ---- pages ---------------------------------------------------------------------------------

async def account_page(request: Request) -> Response:
    account = await _signed_in(request)
    if account is None:
        return RedirectResponse("/login", status_code=303, headers=NO_STORE)
    return _account(request, account, notice=NOTICES.get(request.query_params.get("done", "")))


async def totp_setup(request: Request) -> Response:
    started = await _start_post(request)
    if isinstance(started, Response):
        return started
    _, account = started
    secret = await run_blocking(request, _begin_totp, services_of(request), account.user_id)
    if secret is None:
        return error_page(request, 409, "The authenticator app is already set up.")
    return _setup(request, account, secret)


async def totp_confirm(request: Request) -> Response:
    started = await _start_post(request)
    if isinstance(started, Response):
        return started
    params, account = started
    services = services_of(request)
    confirmed = await run_blocking(request, _confirm_totp, services, account.user_id, params.get("code"),
                                   *_client(request))
    if confirmed is None:
        return error_page(request, 409, "There is no set-up to confirm. Start again from your account page.")
    check, secret = confirmed
    if check is None:
        return _setup(request, account, secret, error="Enter the code from your app.", status=400)
    if not check.ok:
        assert check.failure is not None
        return _setup(request, account, secret, error=_failure(services, check.failure, WRONG_CODE), status=401)
    return await _new_backup_codes(request, account, kind=None)


async def totp_disable(request: Request) -> Response:
    started = await _start_post(request, reauth=True)
    if isinstance(started, Response):
        return started
    params, account = started
    if account.require_mfa:
        return error_page(request, 403, MFA_REQUIRED)
    refused = await _check_password_and_code(request, account, params, disable=True)
    if refused is not None:
        return refused
    return RedirectResponse("/account", status_code=303, headers=NO_STORE)


async def regenerate_backup_codes(request: Request) -> Response:
    started = await _start_post(request, reauth=True)
    if isinstance(started, Response):
        return started
    params, account = started
    refused = await _check_password_and_code(request, account, params, disable=False)
    if refused is not None:
        return refused
    return await _new_backup_codes(request, account, kind="mfa.backup_codes.regenerated")


async def change_password(request: Request) -> Response:
    """Current password + new one twice. The new one is judged by the policy first (no
    Argon2 for a password that cannot be set), then the current one is verified (a wrong
    one counts toward the lockout). Success: the new hash, the other sessions ended, every
    refresh token revoked, audited; this session stays."""
    started = await _start_post(request, reauth=True)
    if isinstance(started, Response):
        return started
    params, account = started
    if not account.has_password:
        return error_page(request, 409, "This account signs in without a password.")
    current = params.get("current_password", "")
    new, confirm = params.get("new_password", ""), params.get("confirm_password", "")
    if not current or not new or not confirm:
        return _account(request, account, status=400,
                        password_error="Enter your current password, then the new one twice.")
    if new != confirm:
        return _account(request, account, status=400, password_error="The two new passwords are not the same.")
    try:
        check_password(new, username=account.username, email=account.email,
                       has_second_factor=account.has_second_factor)
    except PasswordRejected as exc:
        return _account(request, account, status=400, password_error=exc.reason)
    services = services_of(request)
    if not await services.hashing.verify_async(account.password_hash, current):
        failure = await run_blocking(request, _password_change_failed, services, account.user_id, *_client(request))
        return _account(request, account, status=401,
                        password_error=_failure(services, failure, WRONG_CURRENT_PASSWORD))
    new_hash = await services.hashing.hash_async(new)
    outcome = await run_blocking(request, _store_password, services, account, new_hash, *_client(request))
    if isinstance(outcome, FailureRecord):  # locked: refused like a wrong password
        return _account(request, account, status=401,
                        password_error=_failure(services, outcome, WRONG_CURRENT_PASSWORD))
    if outcome is None:
        return error_page(request, 409, "Your password was changed from elsewhere meanwhile. Sign in again.")
    schedule_backchannel(services, outcome)
    return RedirectResponse("/account?done=password", status_code=303, headers=NO_STORE)


async def end_one_session(request: Request) -> Response:
    """Signs out one other session of the user's (someone else's, or no such one: 404)."""
    started = await _start_form(request)
    if isinstance(started, Response):
        return started
    _, account = started
    session_id = valid_row_id(request.path_params.get("session_id"))
    if session_id is None:
        return error_page(request, 404, "No such session.")
    if session_id == account.session_id:
        return error_page(request, 400, "That is the session you are using. To end it, sign out.")
    services = services_of(request)
    ended = await run_blocking(request, _end_one, services, account.user_id, session_id, *_client(request))
    if ended is None:
        return error_page(request, 404, "No such session.")
    schedule_backchannel(services, [ended])
    return RedirectResponse("/account?done=session", status_code=303, headers=NO_STORE)


async def end_other_sessions(request: Request) -> Response:
    started = await _start_form(request)
    if isinstance(started, Response):
        return started
    _, account = started
    services = services_of(request)
    ended = await run_blocking(request, _end_others, services, account.user_id, account.session_id,
                               *_client(request))
    schedule_backchannel(services, ended)
    return RedirectResponse("/account?done=sessions", status_code=303, headers=NO_STORE)


# ---- steps shared by the handlers ------------------------------------------------------------

async def _start_form(request: Request) -> tuple[dict[str, str], Account] | Response:
    """CSRF, then the signed-in user."""
    params = await read_form(request)
    if isinstance(params, Response):
        return params
    account = await _signed_in(request)
    if account is None:
        return RedirectResponse("/login", status_code=303, headers=NO_STORE)
    return params, account


async def _start_post(request: Request, *, reauth: bool = False) -> tuple[dict[str, str], Account] | Response:
    """CSRF, the signed-in user, for sensitive actions a recent sign-in (before anything
    else is looked at), then the login rate limits (before any Argon2)."""
    started = await _start_form(request)
    if isinstance(started, Response):
        return started
    params, account = started
    if reauth and (account.auth_time is None or needs_reauth(services_of(request).settings, account.auth_time)):
        # the login chain runs again and lands back on /account
        return RedirectResponse(REAUTH_URL, status_code=303, headers=NO_STORE)
    ip = request_ip(request)
    verdict = await check_limits(request, [("login_ip", ip or "-"), ("login_account", account.username)], ip=ip)
    if not verdict.allowed:
        return too_many_page(request, verdict)
    return params, account


async def _check_password_and_code(request: Request, account: Account, params: dict[str, str], *,
                                   disable: bool) -> Response | None:
    """None when the password and a fresh code are right (and, for disable, TOTP is now off);
    else the page that says no."""
    password, code = params.get("password"), params.get("code")
    if not password or not code:
        return _account(request, account, error="Enter your password and a code from your app.", status=400)
    if not account.totp:
        return error_page(request, 409, "The authenticator app is not set up.")
    services = services_of(request)
    # never rehashed here: an upgrade is a write, and this request may yet fail
    password_ok = await services.hashing.verify_async(account.password_hash, password)
    failure = await run_blocking(request, _check_and_apply, services, account.user_id, password_ok, code, disable,
                                 *_client(request))
    if failure is None:
        return None
    return _account(request, account, error=_failure(services, failure, WRONG_PASSWORD_OR_CODE), status=401)


async def _new_backup_codes(request: Request, account: Account, *, kind: str | None) -> Response:
    services = services_of(request)
    codes = backup_codes.generate()
    hashes = await asyncio.gather(*(services.hashing.hash_async(code) for code in codes))
    await run_blocking(request, _store_backup_codes, services, account.user_id, list(zip(codes, hashes)), kind,
                       *_client(request))
    response = render(request, "backup_codes.html", codes=codes, continue_url="/account")
    response.headers.update(NO_STORE)
    return response


def _account(request: Request, account: Account, *, error: str | None = None, status: int = 200,
             password_error: str | None = None, notice: str | None = None) -> Response:
    response = render(request, "account.html", status=status, account=account, error=error,
                      warn_at=backup_codes.WARN_AT, passkeys=account.passkeys, sessions=account.sessions,
                      password_error=password_error, notice=notice)
    response.headers.update(NO_STORE)
    return response


def _setup(request: Request, account: Account, secret: str, *, error: str | None = None,
           status: int = 200) -> Response:
    _, qr_data_uri = services_of(request).factors.provisioning(secret, account.username)
    response = render(request, "account.html", status=status, account=account, setup=True, secret=secret,
                      secret_grouped=totp.grouped(secret), qr_data_uri=qr_data_uri,
                      form_action="/account/totp/confirm", hidden={}, error=error)
    response.headers.update(NO_STORE)
    return response


def _failure(services: Services, failure: FailureRecord, words: str) -> str:
    """login.failure_message's lockout arithmetic with this form's words (the user is
    signed in: naming the password and the code reveals nothing)."""
    return failure_message(services, failure, words)


def _client(request: Request) -> tuple[str | None, str | None]:
    return request_ip(request), request.headers.get("user-agent")


async def _signed_in(request: Request) -> Account | None:
    return await run_blocking(request, _find_account, services_of(request), cookies.read(request, cookies.SESSION))


# ---- database work (sync, one unit of work each) -----------------------------------------------

def _find_account(services: Services, cookie: str | None) -> Account | None:
    with services.sessions.begin() as db:
        found = find_session(db, services.keyring, services.session_policy, cookie)
        if found is None:
            return None
        row, user = found
        factors = services.factors.factors_of(db, user, count_backup_codes=True)
        passkeys = tuple(PasskeyView(id=p.id, name=p.name, created_at=utc_text(p.created_at),
                                     last_used_at=utc_text(p.last_used_at) if p.last_used_at else None)
                         for p in services.passkeys.list(db, user.id))
        return Account(user_id=user.id, username=user.username, require_mfa=user.require_mfa, totp=factors.totp,
                       backup_codes_left=factors.backup_codes, password_hash=user.password_hash, passkeys=passkeys,
                       email=user.email, session_id=row.id, auth_time=row.auth_time,
                       sessions=live_sessions(db, services.session_policy, user.id, row.id),
                       has_second_factor=factors.has_second_factor)


def _begin_totp(services: Services, user_id: int) -> str | None:
    with services.sessions.begin() as db:
        try:
            return services.factors.begin_totp(db, user_id)
        except ValueError:  # already enabled
            return None


def _confirm_totp(services: Services, user_id: int, code: str | None, ip: str | None,
                  agent: str | None) -> tuple[CodeCheck | None, str] | None:
    """None: no set-up to confirm; (None, secret): no code typed, nothing counted."""
    with services.sessions.begin() as db:
        secret = services.factors.pending_secret(db, user_id)
        if secret is None or code is None:
            return None if secret is None else (None, secret)
        check = services.factors.confirm_totp(db, user_id, code)
        _audit(db, "mfa.totp.enabled" if check.ok else "mfa.totp.confirm_failed", user_id, check.failure, ip, agent)
        return check, secret


def _check_and_apply(services: Services, user_id: int, password_ok: bool, code: str, disable: bool,
                     ip: str | None, agent: str | None) -> FailureRecord | None:
    """Counts a wrong password, else checks the code (a right one is used up). On success,
    `disable` turns TOTP off in this same unit of work; new backup codes are stored after
    their Argon2 hashing, outside it."""
    with services.sessions.begin() as db:
        if not password_ok:
            failure: FailureRecord | None = services.lockout.record_failure(db, user_id)
        else:
            failure = services.factors.check_totp(db, user_id, code).failure
        if failure is not None:
            kind = "mfa.totp.disable_failed" if disable else "mfa.backup_codes.regenerate_failed"
            _audit(db, kind, user_id, failure, ip, agent, reason="code" if password_ok else "password")
        elif disable:
            services.factors.disable_totp(db, user_id)
            _audit(db, "mfa.totp.disabled", user_id, None, ip, agent)
        return failure


def _store_backup_codes(services: Services, user_id: int, hashed: list[tuple[str, str]], kind: str | None,
                        ip: str | None, agent: str | None) -> None:
    with services.sessions.begin() as db:
        services.factors.replace_backup_codes(db, user_id, hashed)
        if kind is not None:
            _audit(db, kind, user_id, None, ip, agent)


def _audit(db: Session, kind: str, user_id: int, failure: FailureRecord | None, ip: str | None,
           agent: str | None, **detail: object) -> None:
    outcome = "success" if failure is None else "refused" if failure.was_locked else "failure"
    record_audit(db, kind, user_id=user_id, ip=ip, user_agent=agent, outcome=outcome, **detail)
    if failure is not None and failure.locked_now:
        record_audit(db, "account.locked", user_id=user_id, ip=ip, user_agent=agent, outcome="success",
                     known_user=True)


def _password_change_failed(services: Services, user_id: int, ip: str | None, agent: str | None) -> FailureRecord:
    with services.sessions.begin() as db:
        failure = services.lockout.record_failure(db, user_id)
        _audit(db, "password.change_failed", user_id, failure, ip, agent, reason="password")
        return failure


def _store_password(services: Services, account: Account, new_hash: str, ip: str | None,
                    agent: str | None) -> list[EndedSession] | FailureRecord | None:
    """The new hash, replacing exactly the one that was verified (None when it changed
    meanwhile), in one unit of work with the other sessions' end and the revocation of
    every refresh token. A locked account is refused (LOCKED) and nothing changes."""
    with services.sessions.begin() as db:
        if services.lockout.is_locked(db, account.user_id):
            _audit(db, "password.change_failed", account.user_id, LOCKED, ip, agent, reason="locked")
            return LOCKED
        changed = db.execute(update(User).where(User.id == account.user_id,
                                                User.password_hash == account.password_hash)
                             .values(password_hash=new_hash)).rowcount
        if changed != 1:
            return None
        ended = end_others_and_revoke_tokens(db, account.user_id, account.session_id, ip=ip, agent=agent,
                                             reason="password.changed")
        _audit(db, "password.changed", account.user_id, None, ip, agent, sessions_ended=len(ended))
        return ended


def _end_one(services: Services, user_id: int, session_id: int, ip: str | None,
             agent: str | None) -> EndedSession | None:
    with services.sessions.begin() as db:
        return end_one(db, user_id, session_id, ip=ip, agent=agent)


def _end_others(services: Services, user_id: int, current_id: int, ip: str | None,
                agent: str | None) -> list[EndedSession]:
    with services.sessions.begin() as db:
        return end_others(db, user_id, current_id, ip=ip, agent=agent, reason="signed_out_others")
