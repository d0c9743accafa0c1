"""GET and POST /login/forgot: the "Forgot password?" form and its one answer; the work is
idp/links/forgot.py's. Whatever the name, the POST answers 200 with the same page (only the
rate limits answer otherwise, and they count every name alike).

Without mail (no IDP_SMTP_URL) there is no way to send a link: both say so, and the login
page shows no "Forgot password?" (templates/steps/password.html)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from idp.links.forgot import account_key, request_reset
from idp.web.forms import read_form
from idp.web.oauth_endpoints import NO_STORE, request_ip, services_of
from idp.web.pages import render
from idp.web.throttle import check_limits, too_many_page

SENT = (
    "If an account by that name has a verified e-mail address, a link to reset its password is on its way. "
    "It works once, for 30 minutes."
)
UNAVAILABLE = "This site sends no e-mail, so it cannot send you a link. Ask your administrator to reset your password."


async def show_form(request: Request) -> Response:
    return _page(request, request.query_params.get("tx"))


async def submit(request: Request) -> Response:
    """Per client IP, then per name typed (known or not: a 429 for it says nothing about
    which names are accounts, and tells the user why no further mail comes); then the same
    page for every name."""
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    services, ip, typed, tx = services_of(request), request_ip(request), form.get("username", ""), form.get("tx")
    if not services.mail.enabled:
        return _page(request, tx)
    checks = [("reset_ip", ip or "-"), ("reset_account", account_key(typed))]
    verdict = await check_limits(request, checks, ip=ip)
    if not verdict.allowed:
        return too_many_page(request, verdict)
    agent = request.headers.get("user-agent")
    await run_in_threadpool(
        request_reset,
        services.sessions,
        services.keyring,
        services.mail,
        issuer=services.settings.issuer,
        typed_name=typed,
        ip=ip,
        user_agent=agent,
    )
    return _page(request, tx, message=SENT)


def _page(request: Request, tx: str | None, *, message: str | None = None) -> Response:
    available = services_of(request).mail.enabled
    response = render(
        request, "forgot_password.html", message=message if available else UNAVAILABLE, available=available, tx=tx
    )
    response.headers.update(NO_STORE)
    return response
