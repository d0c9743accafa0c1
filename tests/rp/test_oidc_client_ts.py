"""A single-page app with oidc-client-ts (npm, pinned by tests/rp/spa/package-lock.json) as
the relying party, in Debian's Chromium against a real `idp serve`: a public client (no
secret) on its own origin, so every call the library makes to idp is a cross-origin fetch
from the browser: code + PKCE at the token endpoint, userinfo, the refresh_token grant
(rotation), and RP-initiated logout.

The app (tests/rp/spa/index.html and app.js) is served by a small HTTP server here, with the
library's browser bundle from tests/rp/spa/node_modules (`npm ci` in tests/rp/spa)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, Response, expect

from tests.conftest import unavailable
from tests.support.csp import CspViolations
from tests.support.idp_server import ALICE, LocalIdp, serving_idp
from tests.support.rp_journeys import (
    assert_password_sign_in,
    authorization_requests,
    sign_in_through_idp,
    verified_id_token,
)

pytestmark = pytest.mark.browser

SPA = Path(__file__).resolve().parent / "spa"
BUNDLE = SPA / "node_modules" / "oidc-client-ts" / "dist" / "browser" / "oidc-client-ts.min.js"
CLIENT_ID = "spa"


class SpaServer:
    """The SPA's origin, http://127.0.0.1:PORT: index.html on /, /callback and /logged-out,
    app.js, the library's bundle, and /config.json naming the authority and client."""

    def __init__(self) -> None:
        self.config: dict[str, str] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        spa = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path in ("/", "/callback", "/logged-out"):
                    self._send((SPA / "index.html").read_bytes(), "text/html; charset=utf-8")
                elif path == "/app.js":
                    self._send((SPA / "app.js").read_bytes(), "text/javascript; charset=utf-8")
                elif path == "/oidc-client-ts.min.js":
                    self._send(BUNDLE.read_bytes(), "text/javascript; charset=utf-8")
                elif path == "/config.json":
                    self._send(json.dumps(spa.config).encode(), "application/json")
                else:
                    self.send_error(404)

            def _send(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def clients_toml(origin: str) -> str:
    return f"""\
[[clients]]
client_id = "{CLIENT_ID}"
client_name = "SPA"
redirect_uris = ["{origin}/callback"]
post_logout_redirect_uris = ["{origin}/logged-out"]
grant_types = ["authorization_code", "refresh_token"]
token_endpoint_auth_method = "none"
scope = "openid profile email offline_access"
"""


@dataclass(frozen=True)
class Deployment:
    idp: LocalIdp
    spa: SpaServer


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if not BUNDLE.exists():
        unavailable(f"{BUNDLE.relative_to(SPA.parent.parent.parent)} is missing: run `npm ci` in tests/rp/spa")
    spa = SpaServer()  # first: its origin goes into the clients file
    spa.start()
    try:
        with serving_idp(tmp_path_factory.mktemp("idp-spa"), clients_toml(spa.origin)) as idp:
            spa.config.update(authority=idp.issuer, client_id=CLIENT_ID)
            yield Deployment(idp, spa)
    finally:
        spa.stop()


def wait_for_state(page: Page, deployment: Deployment, state: str) -> None:
    """The app's status reaches `state`; an error it shows instead fails the test with the
    library's message (e.g. "TypeError: Failed to fetch" when idp sends no CORS headers)."""
    status = page.locator("#status")
    expect(status).not_to_have_attribute("data-state", "busy")
    page.wait_for_function("s => ['error', s].includes(document.getElementById('status')?.dataset.state)", arg=state)
    if status.get_attribute("data-state") == "error":
        pytest.fail(
            f"the SPA failed on its way to {state!r}: {page.locator('#error').inner_text()}\n"
            f"--- idp log ---\n{deployment.idp.log(10)}",
            pytrace=False,
        )


def shown_user(page: Page) -> dict[str, Any]:
    return json.loads(page.locator("#user").inner_text())


def calls_to(page: Page, issuer: str) -> list[tuple[str, str, int, str | None]]:
    """(method, path, status, Access-Control-Allow-Origin) of every fetch the app makes to idp."""
    seen: list[tuple[str, str, int, str | None]] = []

    def record(response: Response) -> None:
        request = response.request
        if response.url.startswith(issuer) and request.resource_type == "fetch":
            seen.append(
                (
                    request.method,
                    urlsplit(response.url).path,
                    response.status,
                    response.headers.get("access-control-allow-origin"),
                )
            )

    page.on("response", record)
    return seen


def test_oidc_client_ts_signs_in_with_pkce_calls_userinfo_refreshes_and_signs_out(
    deployment: Deployment, page: Page, csp: CspViolations
) -> None:
    issuer, origin = deployment.idp.issuer, deployment.spa.origin
    asked = authorization_requests(page, issuer)
    calls = calls_to(page, issuer)
    started = time.time()
    page.goto(origin + "/")
    wait_for_state(page, deployment, "anonymous")

    page.get_by_role("button", name="Sign in").click()
    sign_in_through_idp(page, csp, issuer, origin, ALICE)
    wait_for_state(page, deployment, "signed-in")

    [request] = asked
    assert request["code_challenge_method"] == "S256" and len(request["code_challenge"]) == 43, request
    assert request["scope"].split() == ["openid", "profile", "email", "offline_access"], request
    assert "response_mode" not in request and "client_secret" not in request, request
    user = shown_user(page)
    claims = verified_id_token(issuer, user["id_token"], CLIENT_ID)
    assert_password_sign_in(claims, nonce=request["nonce"], signed_in_after=started)
    assert user["profile"]["email"] == ALICE.email, user  # merged from userinfo (loadUserInfo)
    assert user["refresh_token"], user
    assert ("POST", "/token", 200, origin) in calls, calls

    page.get_by_role("button", name="Call userinfo").click()
    wait_for_state(page, deployment, "userinfo")
    userinfo = json.loads(page.locator("#userinfo-response").inner_text())
    assert userinfo["sub"] == claims["sub"] and userinfo["email"] == ALICE.email, userinfo
    assert ("GET", "/userinfo", 200, origin) in calls, calls

    page.get_by_role("button", name="Refresh tokens").click()
    wait_for_state(page, deployment, "refreshed")
    refreshed = shown_user(page)
    assert refreshed["refresh_token"] and refreshed["refresh_token"] != user["refresh_token"], (
        "refresh token not rotated"
    )
    assert refreshed["access_token"] != user["access_token"], refreshed
    assert refreshed["profile"]["sub"] == claims["sub"], refreshed
    assert [c for c in calls if c[:2] == ("POST", "/token")][-1] == ("POST", "/token", 200, origin), calls

    page.get_by_role("button", name="Sign out").click()
    csp.wait_for_url(page, lambda url: url.startswith(origin + "/logged-out"), "the SPA's post-logout page")
    wait_for_state(page, deployment, "signed-out")
    page.get_by_role("button", name="Sign in").click()  # idp's session ended: its login page again
    csp.wait_for_url(page, lambda url: url.startswith(issuer + "/login"), "idp's login page")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    csp.assert_none()
