"""/account over HTTP (DESIGN.md §3, §4): the page, TOTP set-up and confirmation, turning
it off, new backup codes, a new password, signing sessions out. The logic is idp/account's;
each handler reads the form (CSRF first), calls into idp/account in the threadpool and
answers. Where a form needs the login rate limits (before any code check or Argon2) or
Argon2 itself, the action comes in two halves and the handler does those in between:
`begin_*` (the session's rules and the checks that write nothing), the rate limits, Argon2
in the hashing pool (never on the event loop, never inside a unit of work), `finish_*`.

Every refusal of idp/account (idp/account/errors.py) is answered in one place, `answer`
(for the JSON calls `answer_json`): the sign-in page, the re-authentication page, the
account or set-up page again with the message beside its form, or an error page; a rate
limit's refusal is the 429 page. idp/web/account_passkeys.py shares them."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from idp.account import backup_codes, password, sessions, totp
from idp.account.backup_codes import NewCodes
from idp.account.errors import (
    AccountRefused,
    FormRefused,
    NeedsReauth,
    NotSignedIn,
    SetupRefused,
)
from idp.account.overview import AccountOverview, get_overview
from idp.account.totp import TotpSetup
from idp.mfa.backup_codes import WARN_AT
from idp.security.rate_limits import Verdict
from idp.web.account_sessions import (
    REAUTH_URL,
    activity_views,
    caller_of,
    passkey_views,
    schedule_backchannel,
    session_views,
)
from idp.web.blocking import run_blocking
from idp.web.forms import read_form
from idp.web.json_bodies import json_error, read_json
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.pages import error_page, render
from idp.web.throttle import check_limits, too_many_page

Endpoint = Callable[[Request], Awaitable[Response]]
# GET /account?done=… after a POST that redirected: a fixed message, never text from the URL
NOTICES = {
    "password": "Your password was changed. Your other sessions were signed out.",
    "session": "That session was signed out.",
    "sessions": "All your other sessions were signed out.",
}


# ---- the one place refusals are answered ----------------------------------------------------


class RateLimited(Exception):
    """The login rate limits said no (before any code check or Argon2): the 429 page."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__("rate limited")
        self.verdict = verdict


def form_action(handler: Callable[[Request, dict[str, str]], Awaitable[Response]]) -> Endpoint:
    """A form POST: the form read and its CSRF token checked first, then the handler."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        params = await read_form(request)
        if isinstance(params, Response):
            return params
        try:
            return await handler(request, params)
        except AccountRefused as refusal:
            return await answer(request, refusal)
        except RateLimited as limited:
            return too_many_page(request, limited.verdict)

    return endpoint


def json_action(handler: Callable[[Request, dict[str, Any]], Awaitable[Response]]) -> Endpoint:
    """A JSON call of idp/static/passkeys.js: the body read and its CSRF token checked first."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        data = await read_json(request)
        if isinstance(data, Response):
            return data
        try:
            return await handler(request, data)
        except AccountRefused as refusal:
            return answer_json(refusal)

    return endpoint


async def answer(request: Request, refusal: AccountRefused) -> Response:
    if isinstance(refusal, NotSignedIn):
        return _see_other("/login")
    if isinstance(refusal, NeedsReauth):  # the chain runs again and lands back on /account
        return _see_other(REAUTH_URL)
    if isinstance(refusal, SetupRefused):
        return _setup_page(request, refusal.setup, error=refusal.message, status=refusal.status)
    if isinstance(refusal, FormRefused):
        try:
            account = await _overview(request)
        except NotSignedIn:  # the session ended meanwhile
            return _see_other("/login")
        beside_password = refusal.section == "password"
        return _account_page(
            request,
            account,
            status=refusal.status,
            error=None if beside_password else refusal.message,
            password_error=refusal.message if beside_password else None,
        )
    return error_page(request, refusal.status, refusal.message)


def answer_json(refusal: AccountRefused) -> Response:
    if isinstance(refusal, NeedsReauth):  # passkeys.js follows `redirect`
        return JSONResponse(
            {"error": refusal.message, "redirect": REAUTH_URL}, status_code=refusal.status, headers=NO_STORE
        )
    return json_error(refusal.status, refusal.message)


# ---- handlers ----------------------------------------------------------------------------------


async def account_page(request: Request) -> Response:
    try:
        account = await _overview(request)
    except NotSignedIn:
        return _see_other("/login")
    return _account_page(request, account, notice=NOTICES.get(request.query_params.get("done", "")))


@form_action
async def totp_setup(request: Request, params: dict[str, str]) -> Response:
    services, caller = services_of(request), caller_of(request)
    who = await run_blocking(request, totp.begin_setup, services, caller)
    await _throttle(request, who.username)
    return _setup_page(request, await run_blocking(request, totp.finish_setup, services, caller, who))


@form_action
async def totp_confirm(request: Request, params: dict[str, str]) -> Response:
    services, caller, code = services_of(request), caller_of(request), params.get("code")
    who = await run_blocking(request, totp.begin_confirm, services, caller, code)
    await _throttle(request, who.username)
    return await _new_backup_codes(
        request, await run_blocking(request, totp.finish_confirm, services, caller, who, code)
    )


@form_action
async def totp_disable(request: Request, params: dict[str, str]) -> Response:
    services, caller = services_of(request), caller_of(request)
    started = await run_blocking(
        request, totp.begin_disable, services, caller, params.get("password"), params.get("code")
    )
    await _throttle(request, started.username)
    password_ok = await services.hashing.verify_async(started.password_hash, started.password)
    await run_blocking(request, totp.finish_disable, services, caller, started, password_ok)
    return _see_other("/account")


@form_action
async def regenerate_backup_codes(request: Request, params: dict[str, str]) -> Response:
    services, caller = services_of(request), caller_of(request)
    started = await run_blocking(
        request, backup_codes.begin_regeneration, services, caller, params.get("password"), params.get("code")
    )
    await _throttle(request, started.username)
    password_ok = await services.hashing.verify_async(started.password_hash, started.password)
    new = await run_blocking(request, backup_codes.verify_regeneration, services, caller, started, password_ok)
    return await _new_backup_codes(request, new)


@form_action
async def change_password(request: Request, params: dict[str, str]) -> Response:
    services, caller = services_of(request), caller_of(request)
    change = await run_blocking(
        request,
        password.begin_change,
        services,
        caller,
        params.get("current_password", ""),
        params.get("new_password", ""),
        params.get("confirm_password", ""),
    )
    await _throttle(request, change.username)
    right = await services.hashing.verify_async(change.password_hash, change.current)
    new_hash = await services.hashing.hash_async(change.new) if right else None  # no hash for a refused change
    ended = await run_blocking(request, password.finish_change, services, caller, change, new_hash)
    schedule_backchannel(services, ended)
    return _see_other("/account?done=password")


@form_action
async def end_one_session(request: Request, params: dict[str, str]) -> Response:
    """Signs out one other session of the user's (someone else's, or no such one: 404)."""
    services = services_of(request)
    ended = await run_blocking(
        request, sessions.end_one, services, caller_of(request), request.path_params.get("session_id")
    )
    schedule_backchannel(services, [ended])
    return _see_other("/account?done=session")


@form_action
async def end_other_sessions(request: Request, params: dict[str, str]) -> Response:
    services = services_of(request)
    schedule_backchannel(services, await run_blocking(request, sessions.end_others, services, caller_of(request)))
    return _see_other("/account?done=sessions")


# ---- answers -----------------------------------------------------------------------------------


async def _overview(request: Request) -> AccountOverview:
    return await run_blocking(request, get_overview, services_of(request), caller_of(request))


async def _throttle(request: Request, username: str) -> None:
    """The login rate limits, before any code check or Argon2; raises RateLimited."""
    ip = request_ip(request)
    verdict = await check_limits(request, [("login_ip", ip or "-"), ("login_account", username)], ip=ip)
    if not verdict.allowed:
        raise RateLimited(verdict)


async def _new_backup_codes(request: Request, new: NewCodes) -> Response:
    """Hashed in the Argon2 pool, stored, shown once."""
    services = services_of(request)
    hashes = await asyncio.gather(*(services.hashing.hash_async(code) for code in new.codes))
    await run_blocking(request, backup_codes.store, services, caller_of(request), new, hashes)
    response = render(request, "backup_codes.html", codes=list(new.codes), continue_url="/account")
    response.headers.update(NO_STORE)
    return response


def _account_page(
    request: Request,
    account: AccountOverview,
    *,
    status: int = 200,
    error: str | None = None,
    password_error: str | None = None,
    notice: str | None = None,
) -> Response:
    response = render(
        request,
        "account.html",
        status=status,
        account=account,
        error=error,
        warn_at=WARN_AT,
        passkeys=passkey_views(account.passkeys),
        sessions=session_views(account.sessions),
        activity=activity_views(account.activity),
        password_error=password_error,
        notice=notice,
    )
    response.headers.update(NO_STORE)
    return response


def _setup_page(request: Request, setup: TotpSetup, *, error: str | None = None, status: int = 200) -> Response:
    response = render(
        request,
        "account.html",
        status=status,
        account=setup,
        setup=True,
        secret=setup.secret,
        secret_grouped=setup.secret_grouped,
        qr_data_uri=setup.qr_data_uri,
        form_action="/account/totp/confirm",
        hidden={},
        error=error,
    )
    response.headers.update(NO_STORE)
    return response


def _see_other(location: str) -> Response:
    return RedirectResponse(location, status_code=303, headers=NO_STORE)
