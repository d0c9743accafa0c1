"""Two answers to the RP that a real browser must let through (issue 16 item 9), in Debian's
Chromium against idp served by uvicorn on a free port, with the RP on another origin:

- a native app's loopback redirect at a port other than the registered one (RFC 8252 §7.3):
  the sign-in and consent POSTs end at the app's actual port, which CSP form-action must name
  or Chromium blocks the redirect;
- a chain whose level went out of the user's reach while they were at the code step (the
  client now asks for phr; the user has no passkey): the code form ends at the RP with
  unmet_authentication_requirements, state and iss, instead of a 400 page inside idp."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pyotp
import pytest
import uvicorn
from playwright.sync_api import Page
from sqlalchemy import select, update
from starlette.applications import Starlette

from idp.app import create_app
from idp.db.models import Client, User
from idp.settings import load_settings
from tests.support.csp import CspViolations
from tests.support.hosted_pages import allow, code_field, enter_code, password_field, sign_in
from tests.support.idp_server import sqlite_environment
from tests.support.journeys import RelyingPartySite, arrive, clients_toml, reach, serving_relying_party_site
from tests.support.processes import free_port, run_cli

pytestmark = pytest.mark.browser

PASSWORD = "a long passphrase here"
NATIVE_TOML = """
[[clients]]
client_id = "desktop"
client_name = "Desktop App"
application_type = "native"
redirect_uris = ["http://127.0.0.1/callback"]
grant_types = ["authorization_code"]
token_endpoint_auth_method = "none"
scope = "openid profile"
"""


@dataclass(frozen=True)
class Deployment:
    issuer: str
    site: RelyingPartySite
    app: Starlette

    @property
    def site_port(self) -> int:
        port = urlsplit(self.site.origin).port
        assert port is not None
        return port


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """idp built in this process (so a test can change a client mid-journey), served by
    uvicorn; shop and a native app; alice (added with the CLI) has an authenticator app."""
    port = free_port()
    client_secrets = {"shop": secrets.token_urlsafe(36), "portal": secrets.token_urlsafe(36)}
    with serving_relying_party_site() as site:
        env = sqlite_environment(tmp_path / "idp", port, clients_toml(site, client_secrets) + NATIVE_TOML)
        run_cli(env, "db", "upgrade")
        run_cli(env, "user", "add", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        app = create_app(load_settings(environ=env))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not server.started:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
            yield Deployment(f"http://localhost:{port}", site, app)
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def authorization_url(issuer: str, client_id: str, redirect_uri: str, state: str, verifier: str) -> str:
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = {
        "client_id": client_id,
        "response_type": "code",
        "scope": "openid",
        "redirect_uri": redirect_uri,
        "state": state,
        "nonce": secrets.token_urlsafe(16),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return f"{issuer}/authorize?{urlencode(query)}"


def answer_of(page: Page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query).items()}


def test_a_native_app_at_another_loopback_port_gets_its_code_through_the_browser(page: Page, deployment) -> None:  # type: ignore[no-untyped-def]
    csp = CspViolations.record(page.context)
    redirect_uri = f"http://127.0.0.1:{deployment.site_port}/callback"  # registered without a port
    state, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(48)
    page.goto(authorization_url(deployment.issuer, "desktop", redirect_uri, state, verifier))
    reach(page, csp, password_field(page), "the login page")
    sign_in(page, "alice", PASSWORD)
    allow(page)
    arrive(page, csp, lambda url: url.startswith(redirect_uri + "?"), "the app's loopback redirect_uri")
    answer = answer_of(page)
    assert answer["state"] == state and answer["iss"] == deployment.issuer, answer
    token = httpx.post(
        f"{deployment.issuer}/token",
        data={
            "grant_type": "authorization_code",
            "client_id": "desktop",
            "code": answer["code"],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
        timeout=10,
    )
    assert token.status_code == 200, token.text
    csp.assert_none()


def _give_alice_totp(app: Starlette) -> str:
    services = app.state.services
    with services.sessions.begin() as db:
        alice = db.scalar(select(User.id).where(User.username == "alice"))
        secret = services.factors.begin_totp(db, alice)
        assert services.factors.confirm_totp(db, alice, pyotp.TOTP(secret).now()).ok
    return str(secret)


def _shop_asks_for(app: Starlette, level: str) -> None:
    services = app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "shop"))
        db.execute(
            update(Client).where(Client.id == row.id).values(config={**row.config, "default_acr_values": [level]})
        )
    services.oidc.clients.reload()


def test_a_level_gone_out_of_reach_at_the_code_step_ends_at_the_rp_with_unmet(page: Page, deployment) -> None:  # type: ignore[no-untyped-def]
    secret = _give_alice_totp(deployment.app)
    csp = CspViolations.record(page.context)
    state, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(48)
    page.goto(authorization_url(deployment.issuer, "shop", deployment.site.redirect_uri, state, verifier))
    reach(page, csp, password_field(page), "the login page")
    sign_in(page, "alice", PASSWORD)
    reach(page, csp, code_field(page), "the code step")
    _shop_asks_for(deployment.app, "phr")  # alice has no passkey
    enter_code(page, pyotp.TOTP(secret).at(time.time() + 30))  # the next step's code: never the one used to enrol
    arrive(page, csp, lambda url: url.startswith(deployment.site.redirect_uri + "?"), "the RP with the error")
    answer = answer_of(page)
    assert answer["error"] == "unmet_authentication_requirements", answer
    assert answer["state"] == state and answer["iss"] == deployment.issuer and "code" not in answer, answer
    csp.assert_none()
