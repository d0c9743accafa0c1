"""A new factor is one module, one template and one line (issue 15): the toy step of
tests/e2e/toy_step (a PIN that may replace the authenticator code) is registered by adding
it to the list of steps the app is built with, and a person walks it in Chromium from the
RP's authorization request to the RP's page with an ID token at mfa. No other step, page or
route of idp was changed for it."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pyotp
import pytest
import uvicorn
from playwright.sync_api import Page, expect
from sqlalchemy import select

from idp.app import create_app
from idp.db.models import User
from idp.login.steps import STANDARD_STEPS
from idp.settings import load_settings
from tests.e2e.toy_step import pin
from tests.support.csp import CspViolations
from tests.support.hosted_pages import password_field, sign_in
from tests.support.idp_server import sqlite_environment
from tests.support.journeys import (
    Expected,
    RelyingParty,
    arrive,
    assert_id_token,
    clients_toml,
    reach,
    serving_relying_party_site,
)
from tests.support.processes import free_port, run_cli

pytestmark = pytest.mark.browser

STEPS = (*STANDARD_STEPS, pin.STEP)  # the one line


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[str, RelyingParty, object]]:
    """idp built in this process with the toy step, served by uvicorn on a free port, and
    one RP on another origin; alice (added with the CLI) has an authenticator app."""
    port = free_port()
    client_secrets = {"shop": secrets.token_urlsafe(36), "portal": secrets.token_urlsafe(36)}
    with serving_relying_party_site() as site:
        env = sqlite_environment(tmp_path / "idp", port, clients_toml(site, client_secrets))
        run_cli(env, "db", "upgrade")
        run_cli(env, "user", "add", "alice", "--password-stdin", stdin="a long passphrase here\n")
        app = create_app(load_settings(environ=env), steps=STEPS)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not server.started:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
            services = app.state.services
            with services.sessions.begin() as db:
                alice = db.scalar(select(User.id).where(User.username == "alice"))
                secret = services.factors.begin_totp(db, alice)
                assert services.factors.confirm_totp(db, alice, pyotp.TOTP(secret).now()).ok
            issuer = f"http://localhost:{port}"
            yield issuer, RelyingParty.discover(issuer, "shop", client_secrets["shop"], site), app
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def test_a_toy_step_registered_in_one_line_is_walked_in_the_browser(page: Page, deployment) -> None:  # type: ignore[no-untyped-def]
    issuer, rp, app = deployment
    csp = CspViolations.record(page.context)
    authorization = rp.authorization()
    since = time.time()
    page.goto(authorization.url)
    reach(page, csp, password_field(page), "the login page")
    sign_in(page, "alice", "a long passphrase here")
    reach(page, csp, page.get_by_role("link", name="Use your PIN instead"), "the code step offering the PIN")
    page.get_by_role("link", name="Use your PIN instead").click()
    reach(page, csp, page.locator("input[name=pin]"), "the PIN step")
    assert urlsplit(page.url).path == "/login/pin"
    page.locator("input[name=pin]").fill("0000")
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("alert")).to_contain_text("That PIN is not right.")
    page.locator("input[name=pin]").fill(pin.PIN)
    page.get_by_role("button", name="Continue").click()
    if page.get_by_role("button", name="Allow").count() or urlsplit(page.url).path == "/consent":
        page.get_by_role("button", name="Allow").click()
    arrive(page, csp, lambda url: url.startswith(rp.site.redirect_uri + "?"), "the RP's redirect_uri")
    token = rp.redeem(authorization, urlsplit(page.url).query)
    assert_id_token(token, Expected("mfa", frozenset({"pwd", "otp", "mfa"})), since=since)
    with app.state.services.sessions() as db:
        from idp.db.models import AuditEvent

        kinds = [row.kind for row in db.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert "login.pin.failed" in kinds and "login.pin.succeeded" in kinds  # its audit kind is its name
    csp.assert_none()
