"""The authorization endpoint and its resumption after the login chain or the consent page
(DESIGN.md §2: the OIDC layer parks the request as a login transaction, never asks for a
password itself)."""
from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from idp.login import transaction as tx_store
from idp.login.sessions import COOKIE_NAME as SESSION_COOKIE
from idp.login.sessions import find_session
from idp.oidc.authorize import (
    CurrentSession,
    ErrorPage,
    NeedLogin,
    Outcome,
    RedirectToClient,
    decide,
)
from idp.oidc.request import IdpRequest
from idp.web.blocking import run_blocking
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.pages import error_page
from idp.web.params import BadParameters, read_params

EXPIRED_MESSAGE = "This sign-in request has expired or was already used. Go back to the application and start again."


async def load_transaction(request: Request, tx_id: str | None) -> tx_store.LoginTransaction | Response:
    """The parked request a page or form refers to, or the page saying it is gone."""
    tx = await run_blocking(request, tx_store.find_transaction, services_of(request).store, tx_id)
    return error_page(request, 400, EXPIRED_MESSAGE) if tx is None else tx


async def authorize(request: Request) -> Response:
    services = services_of(request)
    try:
        params = await read_params(request, max_bytes=services.settings.max_body_bytes)
    except BadParameters as exc:
        return error_page(request, 400, str(exc))
    outcome = await run_authorization(request, params)
    return await respond(request, outcome, params, None)


async def resume(request: Request) -> Response:
    """Back from the login chain or consent: the parked request continues."""
    tx = await load_transaction(request, request.query_params.get("tx"))
    if isinstance(tx, Response):
        return tx
    outcome = await run_authorization(request, tx.params, tx=tx)
    return await respond(request, outcome, tx.params, tx)


async def run_authorization(
    request: Request, params: dict[str, str], *, tx: tx_store.LoginTransaction | None = None, consent: bool | None = None
) -> Outcome:
    services = services_of(request)
    ip = request_ip(request)
    cookie = request.cookies.get(SESSION_COOKIE)

    def unit_of_work() -> Outcome:
        with services.sessions.begin() as db:
            found = find_session(db, services.keyring, services.session_policy, cookie)
            current = None
            if found is not None:
                row, user = found
                current = CurrentSession(user, row.sid, row.id, row.auth_time, row.acr, tuple(row.amr))
            oauth_request = IdpRequest(
                method="GET", uri=f"{services.oidc.issuer}/authorize", headers=request.headers, params=params,
                db=db, ctx=services.oidc, client_ip=ip,
            )
            # "authenticated for this request" only if the chain ran in this very browser session
            fresh = tx is not None and current is not None and tx.authenticated_sid == current.sid
            factors = services.factors.factors_of(db, current.user) if current is not None else None
            return decide(services.server, oauth_request, current, authenticated_now=fresh, consent_decision=consent,
                          factors=factors)

    return await run_blocking(request, unit_of_work)


async def respond(request: Request, outcome: Outcome, params: dict[str, str], tx: tx_store.LoginTransaction | None) -> Response:
    services = services_of(request)
    if isinstance(outcome, RedirectToClient):
        if tx is not None:
            await run_blocking(request, tx_store.consume_transaction, services.store, tx.id)
        return RedirectResponse(outcome.location, status_code=303, headers=NO_STORE)
    if isinstance(outcome, ErrorPage):
        return error_page(request, outcome.status, outcome.message)
    if isinstance(outcome, NeedLogin):
        # a new transaction for each pass that needs the chain: a step-up starts from what the
        # session holds, a (re-)authentication from nothing
        if outcome.step_up:
            tx = tx_store.new_transaction(params, params.get("client_id", ""), outcome.client_name, outcome.login_hint,
                                          requested_acr=outcome.requested_acr, user_id=outcome.session_user_id,
                                          steps_done=tuple(m for m in outcome.session_amr if m in ("pwd", "otp")),
                                          step_up_sid=outcome.session_sid)
            target = "/login/code"
        else:
            tx = tx_store.new_transaction(params, params.get("client_id", ""), outcome.client_name, outcome.login_hint,
                                          requested_acr=outcome.requested_acr)
            target = "/login"
        await run_blocking(request, tx_store.save_transaction, services.store, tx, ttl_seconds=services.settings.login_ttl_seconds)
        return RedirectResponse(f"{target}?tx={tx.id}", status_code=303, headers=NO_STORE)
    if tx is None:
        tx = tx_store.new_transaction(params, params.get("client_id", ""), outcome.client_name, None)
        await run_blocking(request, tx_store.save_transaction, services.store, tx, ttl_seconds=services.settings.login_ttl_seconds)
    return RedirectResponse(f"/consent?tx={tx.id}", status_code=303, headers=NO_STORE)


def redirect_origin(params: dict[str, str]) -> tuple[str, ...]:
    """The client's redirect origin, for the CSP form-action of pages that lead back to it."""
    parts = urlsplit(params.get("redirect_uri", ""))
    return (f"{parts.scheme}://{parts.netloc}",) if parts.scheme in ("http", "https") and parts.netloc else ()
