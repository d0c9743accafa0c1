"""Second factors end to end, as a user and a relying party see them: TOTP set up on
/account, the code step at sign-in (and its step-up from a password-only session), backup
codes that work once, and the enrolment an admin's `idp user require-mfa` forces at login.
Debian's Chromium on idp's hosted pages; Debian's oathtool (not pyotp, which idp uses) as
the user's authenticator app; pyoidc (`oic`) as the RP, with PyJWT checking the ID token."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from oic.oic import Client
from oic.oic.message import (
    AccessTokenResponse,
    AuthorizationResponse,
    RegistrationResponse,
)
from oic.utils.authn.client import CLIENT_AUTHN_METHOD
from playwright.sync_api import Browser, Locator, Page, expect

from tests.conftest import unavailable
from tests.support.hosted_pages import at_path, sign_in

if TYPE_CHECKING:
    from .conftest import Callback, RunningIdp

pytestmark = pytest.mark.browser

OATHTOOL = "/usr/bin/oathtool"
TOTP_PERIOD = 30
SCOPE = "openid profile email"
BACKUP_CODE = re.compile(r"^[A-Z0-9]{4}-[A-Z0-9]{4}$")
BACKUP_CONTROL = re.compile(r"backup code", re.IGNORECASE)
BOB_PASSWORD = "bob's quite long passphrase 42"
NARROW, WIDE = (360, 740), (1280, 800)


# --- the user's authenticator app (oathtool) ------------------------------------------------


@pytest.fixture(scope="module")
def oathtool() -> str:
    if not (os.path.exists(OATHTOOL) and os.access(OATHTOOL, os.X_OK)):
        unavailable(f"{OATHTOOL} is missing: install Debian's oathtool package")
    return OATHTOOL


@dataclass
class Authenticator:
    """An authenticator app holding one secret. idp accepts a code once per 30-second time
    step, so a second code from the same app waits for the next step (as a person would)."""

    oathtool: str
    secret: str
    last_step: int | None = None

    def code(self) -> str:
        now = int(time.time())
        while self.last_step is not None and now // TOTP_PERIOD <= self.last_step:
            time.sleep(min(TOTP_PERIOD, max(0.05, (self.last_step + 1) * TOTP_PERIOD - time.time())))
            now = int(time.time())
        # -N pins the moment, so the step this code belongs to is known exactly
        result = subprocess.run(
            [self.oathtool, "--totp", "-b", self.secret, "-N", f"@{now}"], capture_output=True, text=True, timeout=10
        )
        assert result.returncode == 0, f"oathtool failed: {result.stderr.strip()}"
        code = result.stdout.strip()
        assert re.fullmatch(r"[0-9]{6}", code), code
        self.last_step = now // TOTP_PERIOD
        return code


# --- the relying party (pyoidc) ---------------------------------------------------------------


@dataclass(frozen=True)
class Authorization:
    url: str
    state: str
    nonce: str
    code_verifier: str


def relying_party(idp: RunningIdp) -> Client:
    rp = Client(client_id=idp.client_id, client_authn_method=CLIENT_AUTHN_METHOD)
    rp.provider_config(idp.issuer)  # discovery and JWKS
    rp.store_registration_info(
        RegistrationResponse(
            client_id=idp.client_id,
            client_secret=idp.client_secret,
            redirect_uris=[idp.redirect_uri],
            token_endpoint_auth_method="client_secret_basic",
        )
    )
    return rp


def start_authorization(rp: Client, idp: RunningIdp, **extra: str) -> Authorization:
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    pkce, code_verifier = rp.add_code_challenge()  # S256
    request = rp.construct_AuthorizationRequest(
        request_args={
            "client_id": idp.client_id,
            "response_type": "code",
            "scope": SCOPE,
            "redirect_uri": idp.redirect_uri,
            "state": state,
            "nonce": nonce,
            **pkce,
            **extra,
        }
    )
    return Authorization(request.request(rp.authorization_endpoint), state, nonce, code_verifier)


def finish_at_rp(page: Page, rp: Client, idp: RunningIdp, authorization: Authorization) -> dict[str, object]:
    """Consent if the page asks, then the callback; the code redeemed by pyoidc (which checks
    the ID token's signature, iss, aud and nonce) and the ID token's claims read by PyJWT."""
    page.wait_for_url(lambda url: urlsplit(url).path == "/consent" or url.startswith(idp.redirect_uri + "?"))
    if urlsplit(page.url).path == "/consent":
        page.get_by_role("button", name="Allow").click()
    page.wait_for_url(lambda url: url.startswith(idp.redirect_uri + "?"))
    expect(page.locator("body")).to_contain_text("Signed in.")  # the RP's own page answered
    query = urlsplit(page.url).query
    params = parse_qs(query, strict_parsing=True)
    assert params["state"] == [authorization.state]
    assert params["iss"] == [idp.issuer]
    assert "error" not in params, params

    response = rp.parse_response(AuthorizationResponse, info=query, sformat="urlencoded")
    tokens = rp.do_access_token_request(
        state=authorization.state,
        authn_method="client_secret_basic",
        request_args={
            "code": response["code"],
            "redirect_uri": idp.redirect_uri,
            "code_verifier": authorization.code_verifier,
        },
    )
    assert isinstance(tokens, AccessTokenResponse), tokens.to_dict()
    id_token = tokens["id_token_jwt"]
    signing_key = jwt.PyJWKClient(rp.provider_info["jwks_uri"]).get_signing_key_from_jwt(id_token)
    claims = jwt.decode(id_token, signing_key.key, algorithms=["RS256"], audience=idp.client_id, issuer=idp.issuer)
    assert claims["nonce"] == authorization.nonce
    assert claims["acr"] == tokens["id_token"]["acr"]  # both libraries read the same token
    return claims


def assert_mfa(claims: dict[str, object]) -> None:
    assert claims["acr"] == "mfa", claims
    amr = claims["amr"]
    assert isinstance(amr, list), claims
    assert {"pwd", "otp", "mfa"} <= set(amr), claims  # RFC 8176: password + one-time password


# --- the browser ------------------------------------------------------------------------------


@contextmanager
def fresh_page(browser: Browser) -> Iterator[Page]:
    """Another browser profile: no cookies, no IdP session."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def code_input(page: Page) -> Locator:
    return page.locator("input[name=code][autocomplete=one-time-code][inputmode=numeric]")


def backup_control(page: Page) -> Locator:
    return page.get_by_role("link", name=BACKUP_CONTROL).or_(page.get_by_role("button", name=BACKUP_CONTROL))


def read_totp_setup(page: Page) -> str:
    """The set-up's secret (shown as text) after checking its QR code is there and drawn."""
    qr = page.get_by_role("img", name=re.compile("QR code", re.IGNORECASE))
    expect(qr).to_be_visible()
    assert (qr.get_attribute("src") or "").startswith("data:image/svg+xml")
    expect(qr).to_have_js_property("complete", True)
    assert qr.evaluate("img => img.naturalWidth") > 0, "the QR image did not render (CSP blocks data: images?)"
    key = page.locator("[data-totp-secret]")
    expect(key).to_be_visible()
    secret = key.get_attribute("data-totp-secret") or ""
    assert re.fullmatch(r"[A-Z2-7]{16,}", secret), secret
    assert re.sub(r"\s", "", key.inner_text()) == secret  # the key a person would type, as text
    return secret


def confirm_totp(page: Page, authenticator: Authenticator) -> None:
    field = code_input(page)
    expect(field).to_be_visible()
    field.fill(authenticator.code())
    page.get_by_role("button", name="Confirm").click()


def read_backup_codes(page: Page) -> list[str]:
    expect(page.get_by_role("heading", name=re.compile("backup codes", re.IGNORECASE))).to_be_visible()
    shown = page.locator(".backup-code")
    expect(shown).to_have_count(10)
    codes = [text.strip() for text in shown.all_inner_texts()]
    assert all(BACKUP_CODE.fullmatch(code) for code in codes), codes
    assert len(set(codes)) == 10, codes
    return codes


def enrol_on_account(page: Page, idp: RunningIdp, oathtool: str) -> tuple[Authenticator, list[str]]:
    """Signs alice in at /login (a plain sign-in lands on /account) and sets up TOTP there."""
    page.goto(f"{idp.issuer}/login")
    sign_in(page, idp.username, idp.password)
    page.wait_for_url(at_path("/account"))
    expect(page.get_by_text(re.compile(r"Status:\s*not set up"))).to_be_visible()
    page.get_by_role("button", name="Set up an authenticator app").click()
    authenticator = Authenticator(oathtool, read_totp_setup(page))
    confirm_totp(page, authenticator)
    return authenticator, read_backup_codes(page)


def to_code_step(page: Page, idp: RunningIdp, authorization: Authorization) -> None:
    """A fresh browser: the RP's request, the password, then the code step."""
    page.goto(authorization.url)
    page.wait_for_url(at_path("/login"))
    sign_in(page, idp.username, idp.password)
    page.wait_for_url(at_path("/login/totp"))
    expect(page.get_by_role("heading", name="Two-step verification")).to_be_visible()
    expect(code_input(page)).to_be_visible()


def switch_to_backup_code(page: Page) -> Locator:
    backup_control(page).click()
    field = page.locator("input[name=backup_code]")
    expect(field).to_be_visible()
    expect(page.locator("input[name=code]")).to_have_count(0)
    return field


def screenshots(page: Page, artifacts: Path, name: str) -> None:
    """The page at a phone's and a laptop's width; at the phone's, nothing may stick out."""
    for width, height in (NARROW, WIDE):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=artifacts / f"{name}-{width}.png", full_page=True)
        if width == NARROW[0]:
            scroll_width = page.evaluate("document.documentElement.scrollWidth")
            assert scroll_width <= width + 1, f"{name}: the page is {scroll_width} px wide in a {width} px viewport"


# --- the tests ----------------------------------------------------------------------------------


def test_totp_set_up_on_account_then_a_step_up_asks_only_for_the_code(page, idp, oathtool):
    authenticator, _ = enrol_on_account(page, idp, oathtool)
    page.get_by_role("link", name="I have saved them").click()
    page.wait_for_url(at_path("/account"))
    expect(page.get_by_text(re.compile(r"Status:\s*enabled"))).to_be_visible()
    expect(page.locator(".backup-codes-left")).to_have_text("10")
    expect(page.locator(".backup-code")).to_have_count(0)  # the codes were shown once

    rp = relying_party(idp)
    authorization = start_authorization(rp, idp, acr_values="mfa")
    page.goto(authorization.url)
    page.wait_for_url(at_path("/login/totp"))  # the session has the password: straight to the code
    expect(page.get_by_role("heading", name="Two-step verification")).to_be_visible()
    expect(code_input(page)).to_be_visible()
    expect(page.locator("input[name=password]")).to_have_count(0)
    expect(page.locator("input[type=password]")).to_have_count(0)
    code_input(page).fill(authenticator.code())  # the next time step's code (the first one is used up)
    page.get_by_role("button", name="Verify").click()

    assert_mfa(finish_at_rp(page, rp, idp, authorization))


def test_a_backup_code_signs_in_once(page, idp, oathtool, browser, rp_callback: Callback):
    _, codes = enrol_on_account(page, idp, oathtool)
    typed = codes[3].replace("-", "").lower()  # as a person might type it
    rp = relying_party(idp)

    with fresh_page(browser) as other:
        authorization = start_authorization(rp, idp, acr_values="mfa")
        to_code_step(other, idp, authorization)
        switch_to_backup_code(other).fill(typed)
        other.get_by_role("button", name="Verify").click()
        expect(other.get_by_role("heading", name="Backup code used")).to_be_visible()
        expect(other.locator("main")).to_contain_text(re.compile(r"\b9 backup codes left"))
        other.get_by_role("link", name="Continue").click()
        assert_mfa(finish_at_rp(other, rp, idp, authorization))
    assert len(rp_callback.queries) == 1

    with fresh_page(browser) as third:
        to_code_step(third, idp, start_authorization(rp, idp, acr_values="mfa"))
        switch_to_backup_code(third).fill(typed)
        third.get_by_role("button", name="Verify").click()
        expect(third.get_by_role("alert")).to_contain_text("not valid or was already used")
        assert urlsplit(third.url).path == "/login/backup_code"
        expect(third.locator("input[name=backup_code]")).to_be_visible()  # still on the backup-code step
    assert len(rp_callback.queries) == 1  # nothing reached the RP

    page.goto(f"{idp.issuer}/account")
    expect(page.locator(".backup-codes-left")).to_have_text("9")


def test_an_admin_requirement_makes_the_next_login_enrol_totp(page, idp, idp_cli, oathtool):
    idp_cli(
        "user",
        "add",
        "bob",
        "--email",
        "bob@example.com",
        "--name",
        "Bob",
        "--password-stdin",
        stdin=BOB_PASSWORD + "\n",
    )
    idp_cli("user", "require-mfa", "bob")

    rp = relying_party(idp)
    authorization = start_authorization(rp, idp)
    page.goto(authorization.url)
    page.wait_for_url(at_path("/login"))
    sign_in(page, "bob", BOB_PASSWORD)
    page.wait_for_url(at_path("/login/enrol_totp"))
    expect(page.get_by_role("heading", name="Set up two-step verification")).to_be_visible()
    confirm_totp(page, Authenticator(oathtool, read_totp_setup(page)))
    read_backup_codes(page)
    page.get_by_role("link", name="I have saved them").click()

    claims = finish_at_rp(page, rp, idp, authorization)
    assert_mfa(claims)


def test_second_factor_pages_fit_a_phone_and_a_laptop(page, idp, oathtool, browser, artifacts):
    page.goto(f"{idp.issuer}/login")
    sign_in(page, idp.username, idp.password)
    page.wait_for_url(at_path("/account"))
    page.get_by_role("button", name="Set up an authenticator app").click()
    authenticator = Authenticator(oathtool, read_totp_setup(page))
    screenshots(page, artifacts, "account-totp-setup")
    confirm_totp(page, authenticator)
    read_backup_codes(page)
    screenshots(page, artifacts, "backup-codes")

    with fresh_page(browser) as other:
        to_code_step(other, idp, start_authorization(relying_party(idp), idp))
        screenshots(other, artifacts, "login-code-step")
        switch_to_backup_code(other)
        screenshots(other, artifacts, "login-backup-code-step")
