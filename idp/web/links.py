"""One-time links over HTTP (idp/links/ decides; this module only translates):

- GET /link?t=SECRET: the confirmation page. It neither uses nor binds the link (mail
  scanners and link previews fetch it), and says whose account and what for.
- POST /link: the confirmation, which binds the link to this browser (its login binding,
  sent now if it had none); then /link/password, the login chain, or (an address
  verification) the page saying it is done.
- GET and POST /link/password?l=LINK_ID: the new password (and, for a recovery, which lost
  factors to remove), for the browser that confirmed the link only; then the login chain.

Every page here sends `Referrer-Policy: no-referrer` (the secret is in the URL: no page
after it may carry it on in a Referer) and `Cache-Control: no-store`. The secret travels in
the query string, never the path: idp's access log drops query strings. Refused links
(unknown, expired, used, revoked, another browser's) spend the client's failure budget,
like a wrong password."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from idp.links import records, redeem
from idp.links.records import Refused
from idp.links.redeem import ChoosePassword, LinkContext, PasswordForm, SignIn, Verified
from idp.login.outcomes import Failed
from idp.login.refusals import FlowRefused, TooManyAttempts
from idp.web import backchannel, login, login_binding
from idp.web.forms import read_form
from idp.web.oauth_endpoints import services_of
from idp.web.pages import error_page, render
from idp.web.throttle import too_many_page

LINK_HEADERS = {"referrer-policy": "no-referrer", "cache-control": "no-store", "pragma": "no-cache"}

REFUSALS: dict[str, tuple[int, str]] = {
    "unknown": (404, "This link is not valid. Check that it was copied whole, or ask for a new one."),
    "expired": (410, "This link has expired. Ask for a new one."),
    "used": (410, "This link was already used: each link works once. Ask for a new one if you still need it."),
    "revoked": (410, "This link was withdrawn or replaced by a newer one. Use the newest link you were sent."),
    "other_browser": (
        403,
        "This link was confirmed in another browser. Finish there, or ask for a new link.",
    ),
}
TITLES = {
    "invite": "Set up your account",
    "recover": "Recover your account",
    "reset": "Reset your password",
    "verify": "Confirm your e-mail address",
}


def _context(request: Request) -> LinkContext:
    return LinkContext(login.flow_of(request).services, services_of(request).mail)


def _private(response: Response) -> Response:
    response.headers.update(LINK_HEADERS)
    return response


def _refused(request: Request, refusal: Refused) -> Response:
    status, message = REFUSALS[refusal.reason]
    attempt = login.attempt_of(request)
    services_of(request).rate_limits.record("login_failures_ip", attempt.ip or "-")
    return _private(error_page(request, status, message))


async def _posted(request: Request) -> dict[str, str] | Response:
    """A link page's form: read once, its CSRF token checked, then the limits."""
    form = await read_form(request)
    if isinstance(form, Response):
        return _private(form)
    throttled = await _admitted(request)
    return form if throttled is None else throttled


async def _admitted(request: Request) -> Response | None:
    """The failure budget (refused links spend it) and the flood guard, as for a password."""
    ip = login.attempt_of(request).ip or "-"
    limits = services_of(request).rate_limits
    for scope in ("login_failures_ip", "login_ip"):
        verdict = await run_in_threadpool(limits.admit, scope, ip)
        if not verdict.allowed:
            return _private(too_many_page(request, verdict))
    return None


async def show_confirmation(request: Request) -> Response:
    throttled = await _admitted(request)  # a client over its failure budget learns nothing more
    if throttled is not None:
        return throttled
    secret = request.query_params.get("t")
    if not records.well_formed(secret):
        return _refused(request, Refused("unknown"))
    assert isinstance(secret, str)
    found = await run_in_threadpool(redeem.preview, _context(request), secret)
    if isinstance(found, Refused):
        return _refused(request, found)
    page = render(
        request,
        "link_confirm.html",
        kind=found.kind,
        title=TITLES[found.kind],
        username=found.username,
        expires_at=found.expires_at.strftime("%Y-%m-%d %H:%M UTC"),
        secret=secret,
    )
    return _private(page)


async def confirm(request: Request) -> Response:
    form = await _posted(request)
    if isinstance(form, Response):
        return form
    secret = form.get("t")
    if not records.well_formed(secret):
        return _refused(request, Refused("unknown"))
    assert isinstance(secret, str)
    attempt = login.attempt_of(request)
    found = await run_in_threadpool(redeem.confirm, _context(request), secret, attempt)
    if isinstance(found, Refused):
        return _refused(request, found)
    if isinstance(found, Verified):
        return _private(render(request, "link_done.html", title="Address confirmed", username=found.username))
    if isinstance(found, ChoosePassword):
        response: Response = RedirectResponse(f"/link/password?l={found.link_id}", status_code=303)
    else:
        response = await _signed_in(request, found)
    return _private(login_binding.attach(request, response))


async def show_password(request: Request) -> Response:
    throttled = await _admitted(request)
    if throttled is not None:
        return throttled
    link_id = request.query_params.get("l")
    if not records.well_formed_id(link_id):
        return _refused(request, Refused("unknown"))
    assert isinstance(link_id, str)
    page = await run_in_threadpool(redeem.password_page, _context(request), link_id, login.attempt_of(request))
    if isinstance(page, Refused):
        return _refused(request, page)
    return _password_page(request, page)


async def choose_password(request: Request) -> Response:
    form = await _posted(request)
    if isinstance(form, Response):
        return form
    link_id = form.get("l")
    if not records.well_formed_id(link_id):
        return _refused(request, Refused("unknown"))
    assert isinstance(link_id, str)
    remove = frozenset(factor for factor in redeem.LOST_FACTORS if form.get(f"remove_{factor}") == "yes")
    typed = PasswordForm(form.get("new_password", ""), form.get("confirm_password", ""), remove)
    outcome = await run_in_threadpool(
        redeem.choose_password, _context(request), link_id, typed, login.attempt_of(request)
    )
    if isinstance(outcome, Refused):
        return _refused(request, outcome)
    if isinstance(outcome, ChoosePassword):
        return _password_page(request, outcome, status=400)
    return _private(await _signed_in(request, outcome))


def _password_page(request: Request, page: ChoosePassword, *, status: int = 200) -> Response:
    return _private(
        render(
            request,
            "link_password.html",
            status=status,
            title=TITLES[page.kind],
            kind=page.kind,
            link_id=page.link_id,
            username=page.username,
            password_min=page.password_min,
            held=page.held,
            error=page.error,
        )
    )


async def _signed_in(request: Request, handed: SignIn) -> Response:
    """The login chain takes over: its next step, or (nothing more needed) the session."""
    services = services_of(request)
    for ended in handed.ended:  # the recovery or reset ended them: their RPs hear of it
        backchannel.schedule(services, ended)
    try:
        outcome = await run_in_threadpool(login.flow_of(request).hand_over, handed.tx, login.attempt_of(request))
    except TooManyAttempts as refusal:
        return too_many_page(request, refusal.verdict)
    except FlowRefused as refusal:
        return error_page(request, refusal.status, refusal.message)
    if isinstance(outcome, Failed):  # the account is locked: 401 and the lock's words, as at any sign-in
        return error_page(request, outcome.status, outcome.message)
    return login.onward(request, outcome)
