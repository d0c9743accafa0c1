"""Passkeys on /account over HTTP: registration options and registration as JSON (called
by idp/static/passkeys.js), renaming and removal as forms. The logic is
idp/account/passkeys.py's; refusals are answered by idp/web/account.py's one place (a JSON
call that needs a fresh sign-in gets {"error", "redirect"} and passkeys.js follows it)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from idp.account import passkeys
from idp.web.account import form_action, json_action
from idp.web.account_sessions import caller_of, schedule_backchannel
from idp.web.blocking import run_blocking
from idp.web.json_bodies import options_response
from idp.web.oauth_endpoints import NO_STORE, services_of


@json_action
async def registration_options(request: Request, data: dict[str, Any]) -> Response:
    challenge = await run_blocking(request, passkeys.registration_options, services_of(request), caller_of(request))
    return options_response(challenge.id, challenge.options_json)


@json_action
async def register(request: Request, data: dict[str, Any]) -> Response:
    await run_blocking(request, passkeys.register, services_of(request), caller_of(request), data)
    return JSONResponse({"redirect": "/account"}, headers=NO_STORE)


@form_action
async def rename(request: Request, params: dict[str, str]) -> Response:
    await run_blocking(
        request,
        passkeys.rename,
        services_of(request),
        caller_of(request),
        request.path_params.get("passkey_id"),
        params.get("name"),
    )
    return RedirectResponse("/account", status_code=303, headers=NO_STORE)


@form_action
async def remove(request: Request, params: dict[str, str]) -> Response:
    services = services_of(request)
    ended = await run_blocking(
        request, passkeys.remove, services, caller_of(request), request.path_params.get("passkey_id")
    )
    schedule_backchannel(services, ended)
    return RedirectResponse("/account", status_code=303, headers=NO_STORE)
