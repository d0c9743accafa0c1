"""Adding a passkey from an old sign-in, in Debian's Chromium against a real `idp serve`:
"Add a passkey" on /account is refused before the authenticator is ever asked, and
idp/static/passkeys.js follows the answer's `redirect` to sign in again; back on /account,
the passkey is added and "Recent security activity" lists it with this browser."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import expect
from sqlalchemy import update

from idp.db.engine import make_engine
from idp.db.models import IdpSession
from tests.support.chromium import chromium
from tests.support.csp import CspViolations
from tests.support.hosted_pages import add_passkey, at_path, sign_in
from tests.support.idp_server import ALICE, LocalIdp, serving_idp
from tests.support.journeys import virtual_authenticator

pytestmark = pytest.mark.browser

CLIENTS = """
[[clients]]
client_id = "shop"
client_name = "Shop"
client_secret = "shop-secret-0123456789abcdefghijklmnopqrstuvwxyz"
redirect_uris = ["https://shop.example/callback"]
"""
REAUTH_SECONDS = 600  # the default


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIdp]:
    with serving_idp(tmp_path_factory.mktemp("idp"), CLIENTS, IDP_REAUTH_SECONDS=str(REAUTH_SECONDS)) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    context.set_default_timeout(10_000)
    csp = CspViolations.record(context)
    try:
        yield context.new_page()
        csp.assert_none()
    finally:
        context.close()


def age_sign_ins(idp: LocalIdp) -> None:
    """Every session's last interactive sign-in, REAUTH_SECONDS + 60 ago (as if time passed)."""
    engine = make_engine(idp.env["IDP_DATABASE_URL"])
    try:
        with engine.begin() as db:
            # the server is a real process on the wall clock
            now = datetime.now(UTC)
            db.execute(update(IdpSession).values(auth_time=now - timedelta(seconds=REAUTH_SECONDS + 60)))
    finally:
        engine.dispose()


def test_an_old_sign_in_is_sent_to_sign_in_again_before_adding_a_passkey(idp: LocalIdp, page: Any) -> None:
    authenticator = virtual_authenticator(page)
    page.goto(f"{idp.issuer}/account")
    sign_in(page, ALICE.username, ALICE.password)
    page.wait_for_url(at_path("/account"))
    age_sign_ins(idp)

    add = page.get_by_role("button", name="Add a passkey")
    page.locator("form").filter(has=add).get_by_role("textbox").fill("Laptop")
    add.click()

    page.wait_for_url(at_path("/login"))
    assert parse_qs(urlsplit(page.url).query) == {"reauth": ["1"]}
    assert authenticator.credentials() == [], "the authenticator was never asked"
    sign_in(page, ALICE.username, ALICE.password)
    page.wait_for_url(at_path("/account"))
    add_passkey(page, "Laptop")
    assert len(authenticator.credentials()) == 1

    activity = page.locator(".activity-item").filter(has_text="Passkey added")
    expect(activity).to_have_count(1)
    expect(activity).to_contain_text("Laptop")
    expect(activity).to_contain_text("Chrome on Linux")
