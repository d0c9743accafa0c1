"""The consent page: Allow or Deny for a client and a scope set (remembered per user,
client and scopes; prompt=consent asks again; first-party clients skip it). It says what
each scope shares: the user's groups the client would see, a declared scope's claims."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from idp.login import transaction as tx_store
from idp.login.sessions import find_session
from idp.oidc.claims import SharedScope, shared_on_consent
from idp.oidc.clients import RegisteredClient
from idp.oidc.origins import origin_of
from idp.web import cookies
from idp.web.authorize import (
    load_transaction,
    redirect_origin,
    respond,
    run_authorization,
    take_transaction,
)
from idp.web.blocking import run_blocking
from idp.web.forms import read_form
from idp.web.oauth_endpoints import NO_STORE, services_of
from idp.web.pages import error_page, render

SCOPE_TEXT = {
    "openid": "Sign you in with your account",
    "profile": "See your name, username and profile details (such as picture, language and time zone)",
    "email": "See your email address",
    "phone": "See your phone number",
    "groups": "See which of its groups you are in",
    "offline_access": "Stay signed in to the application while you are away",
}


@dataclass(frozen=True)
class ConsentItem:
    text: str
    details: tuple[str, ...] = ()  # group or claim names, listed after the text


def consent_item(shared: SharedScope) -> ConsentItem:
    if shared.groups is not None:
        if not shared.groups:
            return ConsentItem("See that you are in none of its groups")
        return ConsentItem("See that you are in these groups", shared.groups)
    if shared.claims:
        return ConsentItem(shared.description or f"See your {shared.scope}", shared.claims)
    return ConsentItem(SCOPE_TEXT.get(shared.scope, shared.scope))


async def show_consent(request: Request) -> Response:
    tx = await load_transaction(request, request.query_params.get("tx"))
    if isinstance(tx, Response):
        return tx
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
        items=[consent_item(shared) for shared in await _shared(request, tx, client)],
        form_targets=redirect_origin(tx.params),
        image_origins=(logo_origin,) if logo_origin else (),
    )
    response.headers.update(NO_STORE)
    return response


async def _shared(
    request: Request, tx: tx_store.LoginTransaction, client: RegisteredClient | None
) -> list[SharedScope]:
    """What the request's scopes share, of those the client registered (the others are not
    granted); the groups are those of the user whose session the consent is asked of."""
    if client is None:
        return []
    services = services_of(request)
    cookie = cookies.read(request, cookies.SESSION)
    scope = " ".join(s for s in (tx.params.get("scope") or "openid").split() if s in client.scopes)

    def unit_of_work() -> list[SharedScope]:
        with services.sessions.begin() as db:
            found = find_session(db, services.keyring, services.session_policy, cookie)
            asked_of = (tx.consent_sid, tx.authenticated_sid)
            user_id = found[1].id if found is not None and found[0].sid in asked_of else None
            return shared_on_consent(db, client, scope, user_id)

    return await run_blocking(request, unit_of_work)


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
