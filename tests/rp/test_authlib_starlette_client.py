"""Authlib's Starlette web client (authlib.integrations.starlette_client.OAuth) as the relying
party, in Debian's Chromium against a real `idp serve`: a small Starlette app with
SessionMiddleware, served by uvicorn on its own origin, registered from idp's discovery
document with PKCE turned on (`code_challenge_method: S256` in client_kwargs; Authlib sends
none by default). Authlib itself checks the ID token (signature against the JWKS, iss, aud,
exp, and the nonce it keeps in the session); its page shows the claims it accepted."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Self

import pytest
import uvicorn
from playwright.sync_api import Page, expect
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tests.conftest import unavailable
from tests.support.csp import CspViolations
from tests.support.idp_server import ALICE, LocalIdp, serving_idp
from tests.support.processes import free_port
from tests.support.rp_journeys import (
    assert_password_sign_in,
    authorization_requests,
    sign_in_through_idp,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore:The httpx module is deprecated"),
]  # Authlib's own import

CLIENT_ID = "authlib"
SCOPE = "openid profile email"


def rp_app(issuer: str, secret: str, origin: str) -> Starlette:
    """The RP as its README would write it: /login redirects to idp, /callback redeems the
    code and shows what Authlib returned."""
    from authlib.integrations.starlette_client import OAuth, OAuthError

    oauth = OAuth()
    oauth.register(
        "idp",
        server_metadata_url=f"{issuer}/.well-known/openid-configuration",
        client_id=CLIENT_ID,
        client_secret=secret,
        client_kwargs={"scope": SCOPE, "code_challenge_method": "S256"},
    )

    async def login(request: Request) -> Response:
        return await oauth.idp.authorize_redirect(request, f"{origin}/callback")

    async def callback(request: Request) -> Response:
        try:
            token = await oauth.idp.authorize_access_token(request)
            userinfo = await oauth.idp.userinfo(token=token)
        except OAuthError as exc:
            return HTMLResponse(f"<h1>Sign-in failed</h1><p id=error>{html.escape(str(exc))}</p>", status_code=400)
        shown = {
            "id_token_claims": dict(token["userinfo"]),
            "userinfo": dict(userinfo),
            "token_type": token.get("token_type"),
            "scope": token.get("scope"),
        }
        return HTMLResponse(
            "<!doctype html><title>Authlib RP</title><h1>Signed in</h1>"
            f"<pre id=claims>{html.escape(json.dumps(shown))}</pre>"
        )

    return Starlette(
        routes=[Route("/login", login), Route("/callback", callback)],
        middleware=[Middleware(SessionMiddleware, secret_key=secrets.token_hex(32))],
    )


class ThreadedUvicorn:
    """uvicorn serving an app on 127.0.0.1:port in a thread of the test process."""

    def __init__(self, app: Starlette, port: int) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start the Authlib RP"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def clients_toml(origin: str, secret: str) -> str:
    return f"""\
[[clients]]
client_id = "{CLIENT_ID}"
client_name = "Authlib RP"
client_secret = "{secret}"
redirect_uris = ["{origin}/callback"]
grant_types = ["authorization_code"]
token_endpoint_auth_method = "client_secret_basic"
scope = "{SCOPE}"
"""


@dataclass(frozen=True)
class Deployment:
    idp: LocalIdp
    origin: str


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if importlib.util.find_spec("itsdangerous") is None:
        unavailable("itsdangerous is missing (Starlette's SessionMiddleware needs it): install the test extras")
    port, secret = free_port(), secrets.token_urlsafe(36)
    origin = f"http://127.0.0.1:{port}"
    with (
        serving_idp(tmp_path_factory.mktemp("idp-authlib"), clients_toml(origin, secret)) as idp,
        ThreadedUvicorn(rp_app(idp.issuer, secret, origin), port),
    ):
        yield Deployment(idp, origin)


def test_authlib_starlette_client_signs_in_with_pkce_and_verifies_the_id_token(
    deployment: Deployment, page: Page, csp: CspViolations
) -> None:
    asked = authorization_requests(page, deployment.idp.issuer)
    started = time.time()

    page.goto(deployment.origin + "/login")
    sign_in_through_idp(page, csp, deployment.idp.issuer, deployment.origin, ALICE)

    expect(page.locator("h1")).to_have_text(re.compile("Signed in|Sign-in failed"))
    assert page.locator("h1").inner_text() == "Signed in", (
        f"{page.locator('#error').inner_text()}\n--- idp log ---\n{deployment.idp.log(10)}"
    )
    shown = json.loads(page.locator("#claims").inner_text())
    [request] = asked
    assert request["code_challenge_method"] == "S256" and len(request["code_challenge"]) == 43, request
    assert request["scope"] == SCOPE and request["nonce"], request  # Authlib adds a nonce for openid
    claims = shown["id_token_claims"]
    assert_password_sign_in(claims, nonce=request["nonce"], signed_in_after=started)
    assert claims["iss"] == deployment.idp.issuer and claims["aud"] == CLIENT_ID, claims
    assert shown["userinfo"]["sub"] == claims["sub"] and shown["userinfo"]["email"] == ALICE.email, shown
    assert shown["scope"].split() == SCOPE.split() and shown["token_type"].lower() == "bearer", shown
    csp.assert_none()
