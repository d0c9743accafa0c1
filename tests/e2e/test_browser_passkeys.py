"""Passkeys end to end, as a user and a relying party see them: one added on /account, a
usernameless sign-in with it, a step-up from a password session to phr, its removal, and a
passkey idp never registered. Debian's Chromium on idp's hosted pages, with Chromium's own
virtual authenticator (the DevTools WebAuthn domain, not py_webauthn, which idp uses) as the
user's device; pyoidc (`oic`) as the RP, with PyJWT checking the ID token."""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from oic.oic import Client
from oic.oic.message import (
    AccessTokenResponse,
    AuthorizationResponse,
    RegistrationResponse,
)
from oic.utils.authn.client import CLIENT_AUTHN_METHOD
from playwright.sync_api import Browser, CDPSession, Locator, Page, expect

from tests.support.hosted_pages import at_path, sign_in, visited_paths

if TYPE_CHECKING:
    from .conftest import Callback, RunningIdp

pytestmark = pytest.mark.browser

SCOPE = "openid profile email"
PASSKEY = re.compile("passkey", re.IGNORECASE)
NEVER_USED = re.compile(r"last used:?\s+never", re.IGNORECASE)
ADDED_AT = re.compile(r"added:?\s+[^·\n]*\d", re.IGNORECASE)  # a date or time follows
LAST_USED_AT = re.compile(r"last used:?\s+[^·\n]*\d", re.IGNORECASE)
NARROW, WIDE = (360, 740), (1280, 800)


# --- the user's device: Chromium's virtual authenticator ---------------------------------------


@dataclass(frozen=True)
class VirtualAuthenticator:
    """A platform authenticator (like a laptop's fingerprint reader) that holds discoverable
    credentials, verifies the user and is always touched: no prompt, no UI."""

    cdp: CDPSession
    authenticator_id: str

    def credentials(self) -> list[dict[str, Any]]:
        return self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.authenticator_id})["credentials"]

    def add(self, credential: dict[str, Any]) -> None:
        self.cdp.send("WebAuthn.addCredential", {"authenticatorId": self.authenticator_id, "credential": credential})

    def touched(self, touched: bool) -> None:
        """Whether the user touches the authenticator (and verifies) when a request comes."""
        self.cdp.send(
            "WebAuthn.setAutomaticPresenceSimulation", {"authenticatorId": self.authenticator_id, "enabled": touched}
        )


def virtual_authenticator(page: Page) -> VirtualAuthenticator:
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable", {"enableUI": False})
    added = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
                # a device-bound key (backup state off): idp should call it hwk, not swk
                "defaultBackupEligibility": False,
                "defaultBackupState": False,
            }
        },
    )
    return VirtualAuthenticator(cdp, added["authenticatorId"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")  # the DevTools protocol's binary encoding


def unregistered_credential(rp_id: str, user_handle: str) -> dict[str, Any]:
    """A discoverable credential for idp's RP ID with a fresh id and key pair: what a device
    that never went through idp's registration would hold (here even claiming alice's handle)."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return {
        "credentialId": b64(secrets.token_bytes(32)),
        "isResidentCredential": True,
        "rpId": rp_id,
        "privateKey": b64(der),
        "userHandle": user_handle,
        "signCount": 0,
    }


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


def finish_at_rp(page: Page, rp: Client, idp: RunningIdp, authorization: Authorization) -> dict[str, Any]:
    """Consent if the page asks, then the callback; the code redeemed by pyoidc (which checks
    the ID token's signature, iss, aud and nonce) and the ID token's claims read by PyJWT."""
    page.wait_for_url(lambda url: urlsplit(url).path == "/consent" or url.startswith(idp.redirect_uri + "?"))
    if urlsplit(page.url).path == "/consent":
        page.get_by_role("button", name="Allow").click()
    page.wait_for_url(lambda url: url.startswith(idp.redirect_uri + "?"))
    expect(page.locator("body")).to_contain_text("Signed in.")  # the RP's own page answered
    query = urlsplit(page.url).query
    params = parse_qs(query, strict_parsing=True)
    assert "error" not in params, params
    assert params["state"] == [authorization.state]
    assert params["iss"] == [idp.issuer]

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
    for name in ("sub", "acr", "amr", "sid"):  # both libraries read the same token
        assert claims.get(name) == tokens["id_token"].get(name), name
    return claims


def assert_passkey_sign_in(claims: dict[str, Any]) -> None:
    """acr phr; amr (RFC 8176): a hardware-bound key (the virtual authenticator's backup
    state is off, so not swk), user verification, and multi-factor."""
    assert claims["acr"] == "phr", claims
    amr = claims["amr"]
    assert isinstance(amr, list), claims
    assert {"hwk", "user", "mfa"} <= set(amr), claims
    assert "swk" not in amr, claims


# --- the browser ------------------------------------------------------------------------------


@contextmanager
def fresh_page(browser: Browser) -> Iterator[Page]:
    """Another browser profile: no cookies, no IdP session, no authenticator."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def sign_in_on_account(page: Page, idp: RunningIdp) -> None:
    """/account sends a signed-out browser to /login, which comes back to /account."""
    page.goto(f"{idp.issuer}/account")
    page.wait_for_url(at_path("/login"))
    sign_in(page, idp.username, idp.password)
    page.wait_for_url(at_path("/account"))


def sign_out(page: Page) -> None:
    page.context.clear_cookies()


def session_cookies(page: Page, idp: RunningIdp) -> list[str]:
    return [c["name"] for c in page.context.cookies(idp.issuer) if c["name"] == "idp_session"]


def passkey_button(page: Page) -> Locator:
    """DESIGN.md §3: the login page's button whose accessible name contains "passkey"."""
    return page.get_by_role("button", name=PASSKEY)


def open_login_page(page: Page, authenticator: VirtualAuthenticator, url: str) -> list[str]:
    """Goes to `url` (an RP's authorization) and lands on the login page; returns the pages
    the browser goes to from then on.

    The login page also asks for a passkey through the browser's autofill (conditional
    mediation), which waits until the person picks their passkey in the username field's
    suggestions. With its UI off, Chromium's virtual authenticator would answer that request
    by itself as soon as the page loads; so it is not touched until the person clicks the
    button (`click_passkey_button`), as someone who ignores the suggestion does."""
    authenticator.touched(False)
    page.goto(url)
    page.wait_for_url(at_path("/login"))
    page.wait_for_load_state("networkidle")  # the autofill request is waiting
    return visited_paths(page)


def click_passkey_button(
    page: Page, authenticator: VirtualAuthenticator, button: Locator, *, touch_again: bool = True
) -> None:
    """Clicks the button and touches the authenticator for the request it makes; with
    touch_again=False, not for any request after that one's answer came back."""
    authenticator.touched(True)
    if touch_again:
        button.click()
        return
    with page.expect_response(lambda r: urlsplit(r.url).path == "/login/passkey/verify"):
        button.click()
    authenticator.touched(False)


def passkey_section(page: Page) -> Locator:
    return page.locator("section").filter(has=page.get_by_role("heading", name=PASSKEY))


def passkey_entries(page: Page) -> Locator:
    return passkey_section(page).locator("li, tbody tr")


def add_passkey(page: Page, name: str) -> Locator:
    """On /account: names the passkey, clicks "Add a passkey"; the one entry it lists."""
    add = page.get_by_role("button", name="Add a passkey")
    form = passkey_section(page).locator("form").filter(has=add)
    expect(form).to_be_visible()
    form.get_by_role("textbox", name=re.compile("name", re.IGNORECASE)).fill(name)
    add.click()
    entry = passkey_entries(page).filter(has_text=name)
    expect(entry).to_have_count(1)
    return entry


def screenshots(page: Page, artifacts: Path, name: str) -> None:
    """The page at a phone's and a laptop's width; at the phone's, nothing may stick out."""
    for width, height in (NARROW, WIDE):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=artifacts / f"{name}-{width}.png", full_page=True)
        if width == NARROW[0]:
            scroll_width = page.evaluate("document.documentElement.scrollWidth")
            assert scroll_width <= width + 1, f"{name}: the page is {scroll_width} px wide in a {width} px viewport"


def assert_refused_on_login_page(page: Page, idp: RunningIdp, rp_callback: Callback, navigations: list[str]) -> None:
    """A visible error on the login page itself: no redirect, no session, nothing to the RP."""
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text(PASSKEY)
    page.wait_for_load_state("networkidle")  # a late redirect would show here
    expect(alert).to_be_visible()
    assert navigations == [], navigations
    assert urlsplit(page.url).path == "/login", page.url
    assert session_cookies(page, idp) == []
    assert rp_callback.queries == []
    expect(page.locator("input[name=password]")).to_be_visible()  # the password is still there to use


# --- the tests ----------------------------------------------------------------------------------


def test_a_passkey_added_on_account_signs_in_without_a_username_and_the_rp_gets_phr(page, idp):
    authenticator = virtual_authenticator(page)
    sign_in_on_account(page, idp)
    entry = add_passkey(page, "Work laptop")
    expect(entry).to_contain_text(ADDED_AT)  # when it was added
    expect(entry).to_contain_text(NEVER_USED)
    [credential] = authenticator.credentials()
    assert credential["isResidentCredential"] is True  # a discoverable credential: usernameless works
    assert credential["rpId"] == urlsplit(idp.issuer).hostname

    sign_out(page)
    rp = relying_party(idp)
    authorization = start_authorization(rp, idp)
    open_login_page(page, authenticator, authorization.url)
    username = page.locator("input[name=username]")
    expect(username).to_have_attribute("autocomplete", "username webauthn")
    expect(username).to_have_value("")  # nothing typed: the passkey names the user
    click_passkey_button(page, authenticator, passkey_button(page))
    claims = finish_at_rp(page, rp, idp, authorization)
    assert_passkey_sign_in(claims)
    assert authenticator.credentials()[0]["signCount"] > credential["signCount"]

    page.goto(f"{idp.issuer}/account")  # the passkey's sign-in is an idp session too
    page.wait_for_url(at_path("/account"))
    entry = passkey_entries(page).filter(has_text="Work laptop")
    expect(entry).to_have_count(1)
    expect(entry).to_contain_text(LAST_USED_AT)
    expect(entry).not_to_contain_text(NEVER_USED)


def test_a_password_session_steps_up_to_phr_with_only_the_passkey(page, idp):
    authenticator = virtual_authenticator(page)
    rp = relying_party(idp)
    first = start_authorization(rp, idp)
    page.goto(first.url)
    page.wait_for_url(at_path("/login"))
    sign_in(page, idp.username, idp.password)
    before = finish_at_rp(page, rp, idp, first)
    assert before["acr"] == "pwd" and before["amr"] == ["pwd"], before

    page.goto(f"{idp.issuer}/account")
    page.wait_for_url(at_path("/account"))
    add_passkey(page, "Phone")
    assert len(authenticator.credentials()) == 1

    second = start_authorization(rp, idp, acr_values="phr")
    page.goto(second.url)
    page.wait_for_url(at_path("/login/passkey"))  # the session has the password: straight to the passkey
    expect(page.locator("input[name=password]")).to_have_count(0)
    expect(page.locator("input[type=password]")).to_have_count(0)
    page.get_by_role("button", name="Use your passkey").click()
    after = finish_at_rp(page, rp, idp, second)
    assert_passkey_sign_in(after)
    assert after["sid"] == before["sid"]  # the same session, stepped up
    assert after["sub"] == before["sub"]
    assert after["auth_time"] >= before["auth_time"]


def test_a_removed_passkey_no_longer_signs_in(page, idp, rp_callback, artifacts):
    authenticator = virtual_authenticator(page)
    sign_in_on_account(page, idp)  # a sign-in this recent may remove a passkey
    entry = add_passkey(page, "Old key")
    page.on("dialog", lambda dialog: dialog.accept())  # should the page ask "are you sure?"
    entry.get_by_role("button", name=re.compile("remove", re.IGNORECASE)).click()
    page.wait_for_url(at_path("/account"))
    expect(passkey_entries(page)).to_have_count(0)
    expect(passkey_section(page)).not_to_contain_text("Old key")
    [credential] = authenticator.credentials()  # the device still holds it

    sign_out(page)
    rp = relying_party(idp)
    navigations = open_login_page(page, authenticator, start_authorization(rp, idp).url)
    click_passkey_button(page, authenticator, passkey_button(page), touch_again=False)
    assert_refused_on_login_page(page, idp, rp_callback, navigations)
    page.screenshot(path=artifacts / "login-passkey-refused.png", full_page=True)
    # the device did sign: the refusal is idp's, not a browser that found nothing to use
    assert authenticator.credentials()[0]["signCount"] > credential["signCount"]


def test_a_passkey_idp_never_registered_is_refused(page, idp, browser, rp_callback):
    mine = virtual_authenticator(page)
    sign_in_on_account(page, idp)
    add_passkey(page, "Laptop")
    [registered] = mine.credentials()

    with fresh_page(browser) as other:
        stranger = virtual_authenticator(other)  # another device, that never met idp's registration
        stranger.add(unregistered_credential(registered["rpId"], registered["userHandle"]))
        rp = relying_party(idp)
        navigations = open_login_page(other, stranger, start_authorization(rp, idp).url)
        click_passkey_button(other, stranger, passkey_button(other), touch_again=False)
        assert_refused_on_login_page(other, idp, rp_callback, navigations)
        [used] = stranger.credentials()
        assert used["signCount"] > 0  # it answered the challenge, and idp said no

    page.goto(f"{idp.issuer}/account")  # alice's own passkey is untouched
    expect(passkey_entries(page).filter(has_text="Laptop")).to_have_count(1)


def test_passkey_pages_fit_a_phone_and_a_laptop(page, idp, browser, artifacts):
    virtual_authenticator(page)
    sign_in_on_account(page, idp)
    add_passkey(page, "Laptop")
    screenshots(page, artifacts, "account-passkeys")

    rp = relying_party(idp)
    with fresh_page(browser) as other:
        virtual_authenticator(other)
        other.goto(start_authorization(rp, idp).url)
        other.wait_for_url(at_path("/login"))
        expect(passkey_button(other)).to_be_visible()
        screenshots(other, artifacts, "login-passkey")

        sign_in(other, idp.username, idp.password)  # alice has a passkey now: it is her second step
        other.wait_for_url(at_path("/login/passkey"))
        expect(other.get_by_role("button", name="Use your passkey")).to_be_visible()
        screenshots(other, artifacts, "login-passkey-step")
