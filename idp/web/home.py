"""The site root: says who is signed in (and lets them sign out), and the icon browsers
ask for at /favicon.ico."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from idp.login.sessions import find_session
from idp.web import cookies
from idp.web.blocking import run_blocking
from idp.web.oauth_endpoints import NO_STORE, services_of
from idp.web.pages import render


async def home(request: Request) -> Response:
    services = services_of(request)
    cookie = cookies.read(request, cookies.SESSION)

    def signed_in_username() -> str | None:
        with services.sessions.begin() as db:
            found = find_session(db, services.keyring, services.session_policy, cookie)
            return found[1].username if found else None

    response = render(request, "home.html", username=await run_blocking(request, signed_in_username))
    response.headers.update(NO_STORE)
    return response


FAVICON = "/static/favicon.svg"  # also linked from every page (templates/base.html)


async def favicon(request: Request) -> Response:
    return RedirectResponse(FAVICON, status_code=301, headers={"cache-control": "public, max-age=86400"})
