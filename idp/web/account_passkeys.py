"""Passkeys on /account over JSON (called by idp/static/passkeys.js): registration options
and registration, and the rename and removal forms."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from idp.audit.trail import record_audit
from idp.db.models import User
from idp.login.sessions import find_session
from idp.mfa.passkeys import PasskeyError
from idp.oidc.logout import EndedSession
from idp.web import cookies
from idp.web.account_sessions import (
    REAUTH_URL,
    current_session,
    end_others_and_revoke_tokens,
    needs_reauth,
    schedule_backchannel,
    valid_row_id,
)
from idp.web.blocking import run_blocking
from idp.web.forms import read_form
from idp.web.json_bodies import json_error, options_response, read_json
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.pages import error_page
from idp.web.services import Services

def _session_user(services: Services, cookie: str | None) -> tuple[int, float] | None:
    """(user id, seconds since the session's last interactive sign-in) for the session."""
    from idp.clock import utcnow

    with services.sessions.begin() as db:
        found = find_session(db, services.keyring, services.session_policy, cookie)
        if found is None:
            return None
        row, user = found
        return user.id, (utcnow() - row.auth_time).total_seconds()


async def _signed_in_json(request: Request) -> tuple[dict[str, Any], int] | Response:
    """The JSON body (CSRF checked) and the signed-in user's id, or the error answer."""
    data = await read_json(request)
    if isinstance(data, Response):
        return data
    session = await run_blocking(request, _session_user, services_of(request), cookies.read(request, cookies.SESSION))
    if session is None:
        return json_error(401, "Sign in first.")
    return data, session[0]


async def registration_options(request: Request) -> Response:
    services = services_of(request)
    signed_in = await _signed_in_json(request)
    if isinstance(signed_in, Response):
        return signed_in
    challenge = await run_blocking(request, _registration_options, services, signed_in[1])
    return options_response(challenge.id, challenge.options_json)


def _registration_options(services: Services, user_id: int):  # type: ignore[no-untyped-def]
    with services.sessions.begin() as db:
        user = db.get(User, user_id)
        assert user is not None
        return services.passkeys.registration_options(db, user)


async def register(request: Request) -> Response:
    services = services_of(request)
    signed_in = await _signed_in_json(request)
    if isinstance(signed_in, Response):
        return signed_in
    data, user_id = signed_in
    ip, agent = request_ip(request), request.headers.get("user-agent")
    error = await run_blocking(request, _register, services, user_id, data, ip, agent)
    if error:
        return json_error(400, "The passkey could not be added. Try again.")
    return JSONResponse({"redirect": "/account"}, headers=NO_STORE)


def _register(services: Services, user_id: int, data: dict[str, Any], ip: str | None, agent: str | None) -> str:
    with services.sessions.begin() as db:
        user = db.get(User, user_id)
        assert user is not None
        try:
            row = services.passkeys.register(db, user, data.get("challenge_id"), data.get("credential"),
                                             data.get("name"))
        except PasskeyError as exc:
            db.rollback()
            with services.sessions.begin() as audit_db:
                record_audit(audit_db, "passkey.registration_failed", user_id=user_id, ip=ip, user_agent=agent,
                             outcome="failure", reason=exc.reason)
            return exc.reason
        record_audit(db, "passkey.added", user_id=user_id, ip=ip, user_agent=agent, outcome="success",
                     passkey=row.id, name=row.name)
        return ""


async def rename(request: Request) -> Response:
    return await _change(request, "rename")


async def remove(request: Request) -> Response:
    return await _change(request, "remove")


async def _change(request: Request, action: str) -> Response:
    """Rename or remove. Removing needs a sign-in no older than settings.reauth_seconds (a
    stolen session alone cannot do it), checked first; with
    settings.passkey_removal_ends_sessions = 1 it also ends the user's other sessions
    (back-channel logout for each) and revokes every refresh token of theirs."""
    services = services_of(request)
    params = await read_form(request)
    if isinstance(params, Response):
        return params
    session = await run_blocking(request, current_session, services, cookies.read(request, cookies.SESSION))
    if session is None:
        return RedirectResponse("/login", status_code=303, headers=NO_STORE)
    passkey_id = valid_row_id(request.path_params.get("passkey_id"))
    if passkey_id is None:
        return error_page(request, 404, "No such passkey.")
    if action == "remove" and needs_reauth(services.settings, session.auth_time):
        # a fresh sign-in first: the chain sends the user back to /account afterwards
        return RedirectResponse(REAUTH_URL, status_code=303, headers=NO_STORE)
    ip, agent = request_ip(request), request.headers.get("user-agent")
    done = await run_blocking(request, _apply_change, services, action, session.user_id, session.session_id,
                              passkey_id, params.get("name"), ip, agent)
    if done is None:
        return error_page(request, 404, "No such passkey.")
    schedule_backchannel(services, done)
    return RedirectResponse("/account", status_code=303, headers=NO_STORE)


def _apply_change(services: Services, action: str, user_id: int, session_id: int, passkey_id: int, name: str | None,
                  ip: str | None, agent: str | None) -> list[EndedSession] | None:
    """None when the user has no such passkey; else the sessions the removal ended."""
    from idp.mfa.passkeys import clean_name

    with services.sessions.begin() as db:
        row = services.passkeys.find(db, user_id, passkey_id)
        if row is None:
            return None
        if action == "rename":
            row.name = clean_name(name)
            record_audit(db, "passkey.renamed", user_id=user_id, ip=ip, user_agent=agent, outcome="success",
                         passkey=row.id)
            return []
        db.delete(row)
        ended: list[EndedSession] = []
        if services.settings.passkey_removal_ends_sessions:
            ended = end_others_and_revoke_tokens(db, user_id, session_id, ip=ip, agent=agent,
                                                 reason="passkey.removed")
        record_audit(db, "passkey.removed", user_id=user_id, ip=ip, user_agent=agent, outcome="success",
                     passkey=passkey_id, sessions_ended=len(ended),
                     refresh_tokens_revoked=bool(services.settings.passkey_removal_ends_sessions))
        return ended
