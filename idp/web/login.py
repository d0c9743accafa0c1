"""The login chain over HTTP: every step's page and form, and the passkey step's JSON.
Each handler parses the request, makes one call into the flow (idp/login/flow.py) in the
threadpool, and turns what comes back into a response; refusals are handled in one place
(`_refused`). Nothing about the chain is decided here."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from idp.login.flow import FIRST_STEP, LoginFlow
from idp.login.outcomes import (
    Attempt,
    Completed,
    Continue,
    Failed,
    NotAllowed,
    Notice,
    Outcome,
    StepView,
    Unmet,
)
from idp.login.refusals import FlowRefused, TooManyAttempts, TransactionGone
from idp.oidc.authorize import RedirectToClient
from idp.web import backchannel, cookies, login_binding
from idp.web.blocking import run_blocking
from idp.web.forms import read_form
from idp.web.json_bodies import json_error, read_json
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.pages import copy_cookies, error_page, not_allowed_page, redirect_source, render
from idp.web.throttle import too_many_json, too_many_page

T = TypeVar("T")


def flow_of(request: Request) -> LoginFlow:
    flow: LoginFlow = request.app.state.login_flow
    return flow


def attempt_of(request: Request) -> Attempt:
    return Attempt(
        ip=request_ip(request),
        user_agent=request.headers.get("user-agent"),
        browser=login_binding.presented(request),
        new_browser=login_binding.for_new_transaction(request),
        session_cookie=cookies.read(request, cookies.SESSION),
    )


def step_url(step: str, tx_id: str) -> str:
    return f"/login?tx={tx_id}" if step == FIRST_STEP else f"/login/{step}?tx={tx_id}"


async def _in_thread(call: Callable[..., T], *args: object) -> T:
    """Always the threadpool: a step may run Argon2 (bounded by services.hashing), which
    must never block the event loop."""
    return await run_in_threadpool(call, *args)


# ---- pages and forms -----------------------------------------------------------------------


async def show_login(request: Request) -> Response:
    """/login: the first step; for a transaction whose chain already named its user (a
    step-up), the step the chain is on."""
    tx_id = request.query_params.get("tx")
    try:
        onward = (
            None
            if tx_id is None
            else await run_blocking(request, flow_of(request).where_next, tx_id, attempt_of(request))
        )
        if isinstance(onward, (Unmet, NotAllowed)):
            return ending_response(request, onward)
        if onward is not None:
            return RedirectResponse(step_url(onward.step, onward.tx.id), status_code=303, headers=NO_STORE)
        return await _show(request, FIRST_STEP, tx_id)
    except FlowRefused as refusal:
        return _refused(request, refusal)


async def show_step(request: Request) -> Response:
    try:
        return await _show(request, request.path_params["step"], request.query_params.get("tx"))
    except FlowRefused as refusal:
        return _refused(request, refusal)


async def _show(request: Request, step: str, tx_id: str | None) -> Response:
    shown = await run_blocking(request, flow_of(request).page, step, tx_id, attempt_of(request))
    if isinstance(shown, (Unmet, NotAllowed)):
        return ending_response(request, shown)
    if isinstance(shown, Continue):
        return RedirectResponse(step_url(shown.step, shown.tx.id), status_code=303, headers=NO_STORE)
    return _page(request, shown)


async def submit_login(request: Request) -> Response:
    return await _submit(request, FIRST_STEP)


async def submit_step(request: Request) -> Response:
    return await _submit(request, request.path_params["step"])


async def _submit(request: Request, step: str) -> Response:
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    try:
        outcome = await _in_thread(flow_of(request).submit, step, form.get("tx"), form, attempt_of(request))
    except FlowRefused as refusal:
        return _refused(request, refusal)
    if isinstance(outcome, Failed):
        return _page(request, outcome.view, error=outcome.message, status=outcome.status)
    return _onward(request, outcome)


def _page(request: Request, view: StepView, *, error: str | None = None, status: int = 200) -> Response:
    tx = view.tx
    response = render(
        request,
        view.template,
        status=status,
        tx=tx,
        error=error,
        client_name=(tx.client_name or None) if tx else None,
        form_targets=redirect_source(tx.params.get("redirect_uri")) if tx else (),
        **view.context,
    )
    response.headers.update(NO_STORE)
    return response


def _onward(request: Request, outcome: Outcome) -> Response:
    """Where the chain goes after a passed step: the next step, the parked request (with the
    session cookie), or the RP with unmet_authentication_requirements."""
    if isinstance(outcome, (Unmet, NotAllowed)):
        return ending_response(request, outcome)
    assert isinstance(outcome, (Continue, Completed))
    location = step_url(outcome.step, outcome.tx.id) if isinstance(outcome, Continue) else outcome.resume_url
    response: Response = RedirectResponse(location, status_code=303, headers=NO_STORE)
    if isinstance(outcome, Completed):
        cookies.put(response, request, cookies.SESSION, outcome.session_cookie)
        services = services_of(request)
        for ended in outcome.ended:  # sessions beyond the per-user cap, or replaced: their RPs hear of it
            backchannel.schedule(services, ended)
    if outcome.notice is not None:
        response = _notice(request, outcome.notice, location, response)
    return login_binding.attach(request, response) if outcome.new_transaction else response


onward = _onward  # for the pages that hand a chain over (idp/web/links.py)


def _notice(request: Request, notice: Notice, location: str, redirect: Response) -> Response:
    """A page shown once between a step and the rest of the chain: its Continue link goes
    where the chain was going, with the same cookies."""
    page = render(request, notice.template, continue_url=location, **notice.context)
    page.headers.update(NO_STORE)
    return copy_cookies(redirect, page)


def ending_response(request: Request, outcome: Unmet | NotAllowed) -> Response:
    """Where a chain that can go no further ends: the RP hears why (at once, or through the
    page's only button when the user must be told something first)."""
    if isinstance(outcome, NotAllowed):
        params = outcome.tx.params
        if not outcome.tx.client_id or not params.get("redirect_uri"):
            return error_page(request, 403, "Your account may not use this application.")
        back = _error_redirect(request, params, "access_denied", "This account may not use this application.")[1]
        return not_allowed_page(request, outcome.tx.client_name or outcome.tx.client_id, back)
    return unmet_response(request, outcome)


def unmet_response(request: Request, outcome: Unmet) -> Response:
    """The level asked for cannot be reached by this user (e.g. phr without a passkey): the
    OIDC error goes back to the RP (OpenID's registered unmet_authentication_requirements),
    to the redirect_uri validated when the request was parked."""
    tx = outcome.tx
    redirect_uri = tx.params.get("redirect_uri")
    if not tx.client_id or not redirect_uri:
        return error_page(request, 403, "Your account cannot sign in at the level asked for.")
    if outcome.ask_admin:
        # a group's rule, not the RP's wish: only an administrator can give the user what it
        # takes (an enrolment link), so say that before the RP hears of it
        back = _error_redirect(
            request,
            tx.params,
            "unmet_authentication_requirements",
            "The user cannot authenticate at the level their group requires.",
        )[1]
        return error_page(
            request,
            403,
            "Your group requires signing in with a passkey, and your account has none. "
            "Ask an administrator for an enrolment link.",
            return_to=back,
        )
    return error_to_client(
        request, tx.params, "unmet_authentication_requirements", "The user cannot authenticate at the level requested."
    )


def error_to_client(request: Request, params: Mapping[str, str], error: str, description: str) -> Response:
    """An OAuth error to the RP's redirect_uri (verified when the request was parked), with
    its state and our iss (RFC 9207), in the response mode it asked for."""
    from idp.web.authorize import to_client  # authorize imports this module's neighbours

    fields, location = _error_redirect(request, params, error, description)
    form_post = params.get("response_mode") == "form_post"
    return to_client(request, RedirectToClient(location, params["redirect_uri"], tuple(fields.items()), form_post))


def _error_redirect(
    request: Request, params: Mapping[str, str], error: str, description: str
) -> tuple[dict[str, str], str]:
    """The error's fields (with the request's state and our iss) and the redirect_uri
    carrying them in its query."""
    fields = {"error": error, "error_description": description}
    if params.get("state"):
        fields["state"] = params["state"]
    fields["iss"] = services_of(request).oidc.issuer
    uri = params["redirect_uri"]
    return fields, uri + ("&" if urlsplit(uri).query else "?") + urlencode(fields)


def _refused(request: Request, refusal: FlowRefused) -> Response:
    """Every refusal of the flow, in one place."""
    if isinstance(refusal, TooManyAttempts):
        return too_many_page(request, refusal.verdict)
    if isinstance(refusal, TransactionGone) and refusal.parked and refusal.parked.get("redirect_uri"):
        # the request's redirect_uri was verified when it was parked: the page's button goes
        # back to the RP with the error, state and iss
        return error_page(request, refusal.status, refusal.message, return_to=_return_link(request, refusal.parked))
    return error_page(request, refusal.status, refusal.message)


def _return_link(request: Request, parked: Mapping[str, str]) -> str:
    return _error_redirect(request, parked, "access_denied", "The sign-in was not completed.")[1]


# ---- the passkey step over JSON (idp/static/passkeys.js) -------------------------------------

SIGN_IN_FAILED = "That passkey could not sign you in."
EXPIRED = "This sign-in has expired. Reload the page and try again."


async def passkey_options(request: Request) -> Response:
    data = await read_json(request)
    if isinstance(data, Response):
        return data
    attempt = attempt_of(request)
    typed = data.get("username")
    username = typed.strip().casefold()[:128] if isinstance(typed, str) and typed.strip() else None
    if username is not None and not _storable(username):
        return json_error(400, "That username is not valid.")  # no account can have it: say so, for any name
    # options check no credential: a count of their own (the login page asks on every load)
    limits = [("passkey_options_ip", attempt.ip or "-")] + ([("login_account", username)] if username else [])
    tx_id = data.get("tx") if isinstance(data.get("tx"), str) else None
    try:
        challenge = await run_blocking(
            request, flow_of(request).challenge, "passkey", tx_id, {"username": username}, attempt, limits
        )
    except TransactionGone:
        # not (or no longer) a transaction of this browser's: signing in to idp itself
        challenge = await run_blocking(
            request, flow_of(request).challenge, "passkey", None, {"username": username}, attempt, limits
        )
    except TooManyAttempts as refusal:
        return too_many_json(refusal.verdict)
    except FlowRefused as refusal:
        return json_error(refusal.status, refusal.message)
    response = JSONResponse({**challenge.data, "tx": challenge.tx.id}, headers=NO_STORE)
    return login_binding.attach(request, response) if challenge.new_transaction else response


def _storable(text: str) -> bool:
    """Text a database can hold and compare: no control characters (PostgreSQL refuses NUL),
    no lone surrogates (not UTF-8)."""
    if any(ord(char) < 32 or 0xD800 <= ord(char) <= 0xDFFF for char in text):
        return False
    return True


async def passkey_verify(request: Request) -> Response:
    return await _submit_json(request, "passkey", SIGN_IN_FAILED)


async def _submit_json(request: Request, step: str, no_way_on: str) -> Response:
    """A step's form posted as JSON by passkeys.js: {"redirect": where the chain goes next}."""
    data = await read_json(request)
    if isinstance(data, Response):
        return data
    tx_id = data.get("tx")
    if not isinstance(tx_id, str):
        return json_error(400, EXPIRED)
    try:
        submit = functools.partial(flow_of(request).submit, keep_endings=True)
        outcome = await _in_thread(submit, step, tx_id, data, attempt_of(request))
    except TooManyAttempts as refusal:
        return too_many_json(refusal.verdict)
    except FlowRefused:
        return json_error(400, EXPIRED)
    if isinstance(outcome, Failed):
        return json_error(outcome.status, outcome.message)
    if isinstance(outcome, (Unmet, NotAllowed)):
        # the chain ends with a page (or the RP's error): the first step's page shows it
        return JSONResponse({"redirect": f"/login?tx={outcome.tx.id}"}, headers=NO_STORE)
    answer = _onward(request, outcome)
    if "location" not in answer.headers:  # a page instead of a redirect (form_post to the RP): no way on in JSON
        return json_error(401, no_way_on)
    return copy_cookies(answer, JSONResponse({"redirect": answer.headers["location"]}, headers=NO_STORE))


# ---- the passkey enrolment step over JSON (an invitation's chain, idp/static/passkeys.js) ---------

NOT_ADDED = "The passkey could not be added. Try again."


async def enrol_passkey_options(request: Request) -> Response:
    """Registration options for the chain's user, on the enrolment step's turn only."""
    data = await read_json(request)
    if isinstance(data, Response):
        return data
    tx_id = data.get("tx")
    if not isinstance(tx_id, str):
        return json_error(400, EXPIRED)
    attempt = attempt_of(request)
    limits = [("passkey_options_ip", attempt.ip or "-")]  # checks no credential: a count of its own
    try:
        challenge = await run_blocking(request, flow_of(request).challenge, "enrol_passkey", tx_id, {}, attempt, limits)
    except TooManyAttempts as refusal:
        return too_many_json(refusal.verdict)
    except FlowRefused:
        return json_error(400, EXPIRED)  # another browser's, finished, or not this step's turn: nothing to learn
    return JSONResponse({**challenge.data, "tx": challenge.tx.id}, headers=NO_STORE)


async def enrol_passkey_verify(request: Request) -> Response:
    return await _submit_json(request, "enrol_passkey", NOT_ADDED)
