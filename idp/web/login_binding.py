"""Login transactions bound to the browser that started them (DESIGN.md §2).

The browser holds a random binding secret in an HttpOnly cookie; each transaction keeps the
secret's keyed digest, and every page, step, consent and resume compares it in constant
time, so a transaction id alone (seen in a URL, a log or a Referer) is worth nothing in
another browser. One secret per browser rather than a cookie per transaction: sign-ins in
several tabs each keep working, and a page that opens many sign-ins cannot grow the
browser's cookies past what servers accept."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from idp.security.keyring import new_secret
from idp.web import cookies

_PURPOSE = "login-browser:"


def _digest(request: Request, secret: str) -> str:
    return str(request.app.state.services.keyring.digest(_PURPOSE + secret))


def presented(request: Request) -> str | None:
    """The digest of the binding this request carries, if any."""
    secret = cookies.read(request, cookies.LOGIN)
    return None if secret is None else _digest(request, secret)


def for_new_transaction(request: Request) -> str:
    """The digest a transaction created by this request is bound to: the browser's own
    binding, or a new one that `attach` then sends."""
    digest = presented(request)
    if digest is not None:
        return digest
    secret = getattr(request.state, "new_login_binding", None) or new_secret(32)
    request.state.new_login_binding = secret
    return _digest(request, secret)


def attach(request: Request, response: Response) -> Response:
    """Sends the binding minted during this request (if one was)."""
    secret = getattr(request.state, "new_login_binding", None)
    if secret:
        cookies.put(response, request, cookies.LOGIN, secret)
    return response
