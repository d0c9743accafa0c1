"""The consent page: Allow or Deny for a client and a scope set (remembered per user,
client and scopes; prompt=consent asks again; first-party clients skip it)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from idp.oidc.origins import origin_of
from idp.web.authorize import (
    load_transaction,
    redirect_origin,
    respond,
    run_authorization,
    take_transaction,
)
from idp.web.forms import read_form
from idp.web.oauth_endpoints import NO_STORE, services_of
from idp.web.pages import error_page, render

SCOPE_TEXT = {
    "openid": "Sign you in with your account",
    "profile": "See your name and username",
    "email": "See your email address",
    "offline_access": "Stay signed in to the application while you are away",
}


async def show_consent(request: Request) -> Response:
    tx = await load_transaction(request, request.query_params.get("tx"))
    if isinstance(tx, Response):
        return tx
    scopes = (tx.params.get("scope") or "openid").split()
    client = services_of(request).oidc.clients.get(tx.client_id)
    about = (
        {key: client.config.get(key) for key in ("logo_uri", "client_uri", "policy_uri", "tos_uri")} if client else {}
    )
    logo_origin = origin_of(about.get("logo_uri"))  # https only, checked by the clients file
    response = render(
        request,
        "consent.html",
        tx=tx,
        client_name=tx.client_name,
        about=about,
        scopes=[SCOPE_TEXT.get(s, s) for s in scopes],
        form_targets=redirect_origin(tx.params),
        image_origins=(logo_origin,) if logo_origin else (),
    )
    response.headers.update(NO_STORE)
    return response


async def submit_consent(request: Request) -> Response:
    params = await read_form(request)
    if isinstance(params, Response):
        return params
    decision = params.get("decision")
    if decision not in ("allow", "deny"):
        return error_page(request, 400, "Choose Allow or Deny.")
    tx = await take_transaction(request, params.get("tx"), finished=False)  # one decision per transaction
    if isinstance(tx, Response):
        return tx
    outcome = await run_authorization(request, tx.params, tx=tx, consent=decision == "allow")
    return await respond(request, outcome, tx.params, tx)
