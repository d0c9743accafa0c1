"""The authorization endpoint and its resumption after the login chain or the consent page
(DESIGN.md §2: the OIDC layer parks the request as a login transaction, never asks for a
password itself)."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from idp.login import transaction as tx_store
from idp.login.memberships import memberships_of
from idp.login.sessions import find_session
from idp.oidc.authorize import (
    CurrentSession,
    ErrorPage,
    NeedConsent,
    NeedLogin,
    NotAllowedHere,
    Outcome,
    RedirectToClient,
    decide,
)
from idp.oidc.parked import build_parked_params
from idp.oidc.request import IdpRequest
from idp.web import cookies, login_binding
from idp.web.blocking import run_blocking
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.pages import error_page, not_allowed_page, redirect_source, render
from idp.web.params import BadParameters, read_params
from idp.web.throttle import check_limits, too_many_page

EXPIRED_MESSAGE = "This sign-in request has expired or was already used. Go back to the application and start again."


async def load_transaction(request: Request, tx_id: str | None) -> tx_store.LoginTransaction | Response:
    """The parked request a page or form of this browser refers to, or the page saying it is
    gone: the same page when it exists but another browser started it (nothing to learn)."""
    tx = await run_blocking(request, tx_store.find_transaction, services_of(request).store, tx_id)
    if tx is None or not tx.is_bound_to(login_binding.presented(request)):
        return error_page(request, 400, EXPIRED_MESSAGE)
    return tx


async def take_transaction(
    request: Request, tx_id: str | None, *, finished: bool
) -> tx_store.LoginTransaction | Response:
    """Single use, for resume (`finished`: only once the chain has finished) and the consent
    decision: the transaction is consumed atomically before anything is decided, so two
    requests racing with one id get one authorization between them."""
    tx = await load_transaction(request, tx_id)
    if isinstance(tx, Response):
        return tx
    if finished and not tx.finished:
        return error_page(request, 400, EXPIRED_MESSAGE)
    taken = await run_blocking(request, tx_store.consume_transaction, services_of(request).store, tx.id)
    return error_page(request, 400, EXPIRED_MESSAGE) if taken is None else taken


async def authorize(request: Request) -> Response:
    services = services_of(request)
    try:
        params = await read_params(request, max_bytes=services.settings.max_body_bytes)
    except BadParameters as exc:
        return error_page(request, 400, str(exc))
    if request.method == "POST":
        # the same request as a GET: a cross-site POST carries none of idp's SameSite=Lax cookies
        # (session, login binding), a top-level GET navigation does
        return RedirectResponse(f"/authorize?{urlencode(params)}", status_code=303, headers=NO_STORE)
    outcome = await run_authorization(request, params)
    return await respond(request, outcome, params, None)


async def resume(request: Request) -> Response:
    """Back from the login chain: the parked request continues, once."""
    tx = await take_transaction(request, request.query_params.get("tx"), finished=True)
    if isinstance(tx, Response):
        return tx
    outcome = await run_authorization(request, tx.params, tx=tx)
    return await respond(request, outcome, tx.params, tx)


async def run_authorization(
    request: Request,
    params: dict[str, str],
    *,
    tx: tx_store.LoginTransaction | None = None,
    consent: bool | None = None,
) -> Outcome:
    services = services_of(request)
    ip = request_ip(request)
    cookie = cookies.read(request, cookies.SESSION)

    def unit_of_work() -> Outcome:
        with services.sessions.begin() as db:
            found = find_session(db, services.keyring, services.session_policy, cookie)
            current = None
            if found is not None:
                row, user = found
                current = CurrentSession(user, row.sid, row.id, row.auth_time, row.acr, tuple(row.amr))
            acting_for = tx and (tx.authenticated_sid or tx.consent_sid)
            if acting_for and (current is None or current.sid != acting_for):
                current = None  # the browser's session changed since (another user, a sign-out): start over
            oauth_request = IdpRequest(
                method="GET",
                uri=f"{services.oidc.issuer}/authorize",
                headers=request.headers,
                params=params,
                db=db,
                ctx=services.oidc,
                client_ip=ip,
            )
            # "authenticated for this request" only if the chain ran in this very browser session
            fresh = tx is not None and current is not None and tx.authenticated_sid == current.sid
            factors = services.factors.factors_of(db, current.user) if current is not None else None
            groups = memberships_of(db, current.user.id) if current is not None else ()
            return decide(
                services.server,
                oauth_request,
                current,
                authenticated_now=fresh,
                consent_decision=consent,
                factors=factors,
                groups=groups,
            )

    return await run_blocking(request, unit_of_work)


async def respond(
    request: Request, outcome: Outcome, params: dict[str, str], tx: tx_store.LoginTransaction | None
) -> Response:
    """The outcome as a response. A transaction passed in was already consumed (resume,
    consent decision); one that must live on (consent still to give) is saved again."""
    services = services_of(request)
    if isinstance(outcome, RedirectToClient):
        return to_client(request, outcome)
    if isinstance(outcome, ErrorPage):
        return error_page(request, outcome.status, outcome.message)
    if isinstance(outcome, NotAllowedHere):
        return not_allowed_page(request, outcome.client_name, outcome.back.location)
    carried_on = tx is not None and isinstance(outcome, NeedConsent)  # consent after the chain: the same one
    if not carried_on:
        # a new transaction is state anyone can make idp hold without signing in: counted per address
        ip = request_ip(request)
        verdict = await check_limits(request, [("authorize_ip", ip or "-")], ip=ip, client_id=params.get("client_id"))
        if not verdict.allowed:
            return too_many_page(request, verdict)
    kept = build_parked_params(params)  # what decide verified and measured, without what idp ignores
    browser = tx.browser if tx is not None else login_binding.for_new_transaction(request)
    if isinstance(outcome, NeedLogin):
        # a new transaction for each pass that needs the chain: a step-up starts from what the
        # session holds, a (re-)authentication from nothing
        if outcome.step_up:
            tx = tx_store.new_transaction(
                kept,
                kept.get("client_id", ""),
                outcome.client_name,
                outcome.login_hint,
                requested_acr=outcome.requested_acr,
                user_id=outcome.session_user_id,
                steps_done=tuple(m for m in outcome.session_amr if m in ("pwd", "otp")),
                step_up_sid=outcome.session_sid,
                browser=browser,
            )
            target = "/login"
        else:
            tx = tx_store.new_transaction(
                kept,
                kept.get("client_id", ""),
                outcome.client_name,
                outcome.login_hint,
                requested_acr=outcome.requested_acr,
                browser=browser,
            )
            target = "/login"
    else:
        tx = tx or tx_store.new_transaction(
            kept, kept.get("client_id", ""), outcome.client_name, None, browser=browser, consent_sid=outcome.session_sid
        )
        target = "/consent"
    # until a step saves it again (for login_ttl_seconds), a new transaction waits only briefly
    ttl = services.settings.login_ttl_seconds if carried_on else services.settings.login_untouched_ttl_seconds
    await run_blocking(request, tx_store.save_transaction, services.store, tx, ttl_seconds=ttl)
    location = f"{target}?tx={tx.id}"
    if isinstance(outcome, NeedLogin) and outcome.step_up:  # straight to the step the chain needs
        from idp.login.outcomes import NotAllowed, Unmet
        from idp.web.login import ending_response, flow_of, step_url

        onward = await run_blocking(request, flow_of(request).step_for, tx)
        if isinstance(onward, (Unmet, NotAllowed)):  # e.g. phr asked of a user without a passkey
            return login_binding.attach(request, ending_response(request, onward))
        location = step_url(onward.step, tx.id) if onward is not None else location
    return login_binding.attach(request, RedirectResponse(location, status_code=303, headers=NO_STORE))


def to_client(request: Request, outcome: RedirectToClient) -> Response:
    """The response to the RP: a 303 with it in the query, or (response_mode=form_post) a
    page whose form POSTs it there, the only place that page's CSP lets a form go."""
    if not outcome.form_post:
        return RedirectResponse(outcome.location, status_code=303, headers=NO_STORE)
    response = render(
        request,
        "form_post.html",
        action=outcome.redirect_uri,
        fields=outcome.response,
        form_targets=redirect_source(outcome.redirect_uri),
        self_form_action=False,
    )
    response.headers.update(NO_STORE)
    return response


def redirect_origin(params: dict[str, str]) -> tuple[str, ...]:
    """The CSP form-action source for pages whose form can end at the client (the redirect_uri
    was verified before the request was parked)."""
    return redirect_source(params.get("redirect_uri"))
