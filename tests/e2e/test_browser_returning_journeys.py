"""Journeys that show no consent page, end to end in Debian's Chromium: a returning user with
stored consent (password only, and password + TOTP), a first-party client, and a logout
confirmation that returns to the RP. Each ends with a form POST on an idp page whose answer
redirects (via /authorize/resume) to the RP's own origin, and browsers apply CSP
`form-action` to that whole redirect chain (issue 13): every test fails on any
Content-Security-Policy violation in any page of its journey, and checks that the browser
really reached the RP, whose code is redeemed with httpx and whose ID token PyJWT verifies."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import jwt
import pytest
from playwright.sync_api import Page, expect

from tests.e2e.test_browser_second_factor import (  # the user's authenticator app and the /account set-up
    Authenticator,
    code_input,
    confirm_totp,
    oathtool,  # noqa: F401 - a fixture
    read_backup_codes,
    read_totp_setup,
)
from tests.support.csp import CspViolations
from tests.support.hosted_pages import at_path, sign_in, visited_paths

if TYPE_CHECKING:
    from .conftest import Callback, RunningIdp

pytestmark = pytest.mark.browser

SCOPE = "openid profile email"
SESSION_COOKIE = "idp_session"


# --- the relying party: authorization request, code redemption, ID token (httpx + PyJWT) -----------


@dataclass(frozen=True)
class Authorization:
    url: str
    state: str
    nonce: str
    code_verifier: str


@dataclass(frozen=True)
class RelyingParty:
    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str
    metadata: dict[str, str]

    @classmethod
    def of(cls, idp: RunningIdp, client_id: str, client_secret: str) -> RelyingParty:
        metadata = httpx.get(f"{idp.issuer}/.well-known/openid-configuration", timeout=10).json()
        return cls(idp.issuer, client_id, client_secret, idp.redirect_uri, metadata)

    def authorization(self, **extra: str) -> Authorization:
        state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urlencode(
            {
                "client_id": self.client_id,
                "response_type": "code",
                "scope": SCOPE,
                "redirect_uri": self.redirect_uri,
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                **extra,
            }
        )
        return Authorization(f"{self.metadata['authorization_endpoint']}?{query}", state, nonce, verifier)

    def redeem(self, authorization: Authorization, query: str) -> dict[str, object]:
        """The code from the callback's query, redeemed with client_secret_basic and the PKCE
        verifier; the ID token's signature (JWKS), iss, aud, exp and nonce checked by PyJWT."""
        params = parse_qs(query, strict_parsing=True)
        assert "error" not in params, params
        assert params["state"] == [authorization.state], params
        assert params["iss"] == [self.issuer], params  # RFC 9207
        response = httpx.post(
            self.metadata["token_endpoint"],
            timeout=10,
            auth=(quote(self.client_id, safe=""), quote(self.client_secret, safe="")),  # RFC 6749 §2.3.1
            data={
                "grant_type": "authorization_code",
                "code": params["code"][0],
                "redirect_uri": self.redirect_uri,
                "code_verifier": authorization.code_verifier,
            },
        )
        assert response.status_code == 200, response.text
        tokens = response.json()
        assert tokens["token_type"].lower() == "bearer", tokens
        id_token = tokens["id_token"]
        key = jwt.PyJWKClient(self.metadata["jwks_uri"]).get_signing_key_from_jwt(id_token)
        claims = jwt.decode(
            id_token,
            key.key,
            algorithms=["RS256"],
            audience=self.client_id,
            issuer=self.issuer,
            options={"require": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "sid"]},
        )
        assert claims["nonce"] == authorization.nonce, claims
        return claims


def assert_signed_in(claims: dict[str, object], *, since: float, acr: str, amr: set[str]) -> None:
    """acr and amr (RFC 8176) as expected, auth_time the sign-in this journey made, a sid."""
    assert claims["acr"] == acr, claims
    assert isinstance(claims["amr"], list) and set(claims["amr"]) == amr, claims
    auth_time = claims["auth_time"]
    assert isinstance(auth_time, int) and since - 1 <= auth_time <= time.time() + 1, (since, claims)
    assert isinstance(claims["sid"], str) and claims["sid"], claims


# --- the browser --------------------------------------------------------------------------------------


@pytest.fixture
def csp(page: Page) -> CspViolations:
    """Every Content-Security-Policy violation in any page of this test's browser context."""
    return CspViolations.record(page.context)


def end_of_session(page: Page) -> None:
    """The IdP session ends (as when it expires), the rest of the browser's state is kept."""
    page.context.clear_cookies(name=SESSION_COOKIE)
    assert all(cookie["name"] != SESSION_COOKIE for cookie in page.context.cookies())


def arrive_at_rp(
    page: Page, csp: CspViolations, rp: RelyingParty, authorization: Authorization, rp_callback: Callback
) -> str:
    """The browser lands on the RP's callback with this authorization's code; returns its query."""
    csp.wait_for_url(page, lambda url: url.startswith(rp.redirect_uri + "?"), "the RP's redirect_uri")
    expect(page.locator("body")).to_contain_text("Signed in.")  # the RP's own page answered
    query = urlsplit(page.url).query
    assert rp_callback.queries and rp_callback.queries[-1] == query, rp_callback.queries
    params = parse_qs(query)
    assert params.get("state") == [authorization.state] and params.get("code"), params
    return query


def first_sign_in_with_consent(
    page: Page, csp: CspViolations, idp: RunningIdp, rp: RelyingParty, rp_callback: Callback
) -> dict[str, object]:
    """A new browser at the RP: the password, then the consent page, Allow; the RP gets a code."""
    authorization = rp.authorization()
    since = time.time()
    page.goto(authorization.url)
    page.wait_for_url(at_path("/login"))
    sign_in(page, idp.username, idp.password)
    page.wait_for_url(at_path("/consent"))
    expect(page.get_by_role("heading", name="Allow Shop?")).to_be_visible()
    page.get_by_role("button", name="Allow", exact=True).click()
    claims = rp.redeem(authorization, arrive_at_rp(page, csp, rp, authorization, rp_callback))
    assert_signed_in(claims, since=since, acr="pwd", amr={"pwd"})
    return claims


def shop(idp: RunningIdp) -> RelyingParty:
    return RelyingParty.of(idp, idp.client_id, idp.client_secret)


# --- the tests ------------------------------------------------------------------------------------------


def test_a_returning_user_with_stored_consent_lands_on_the_rp_after_the_password(page, idp, rp_callback, csp):
    rp = shop(idp)
    first = first_sign_in_with_consent(page, csp, idp, rp, rp_callback)
    end_of_session(page)

    authorization = rp.authorization()
    paths = visited_paths(page)
    page.goto(authorization.url)
    page.wait_for_url(at_path("/login"))
    since = time.time()
    sign_in(page, idp.username, idp.password)  # POST /login → /authorize/resume → the RP
    claims = rp.redeem(authorization, arrive_at_rp(page, csp, rp, authorization, rp_callback))

    assert "/consent" not in paths, paths  # consent was stored the first time
    assert_signed_in(claims, since=since, acr="pwd", amr={"pwd"})
    assert claims["sid"] != first["sid"] and claims["sub"] == first["sub"]
    assert len(rp_callback.queries) == 2
    csp.assert_none()


def test_a_returning_user_with_stored_consent_and_totp_lands_on_the_rp_after_the_code(
    page,
    idp,
    rp_callback,
    csp,
    oathtool,  # noqa: F811 - the imported fixture
):
    rp = shop(idp)
    first = first_sign_in_with_consent(page, csp, idp, rp, rp_callback)
    page.goto(f"{idp.issuer}/account")  # the session just signed in: TOTP set-up is allowed
    page.get_by_role("button", name="Set up an authenticator app").click()
    authenticator = Authenticator(oathtool, read_totp_setup(page))
    confirm_totp(page, authenticator)
    read_backup_codes(page)
    end_of_session(page)

    authorization = rp.authorization()
    paths = visited_paths(page)
    page.goto(authorization.url)
    page.wait_for_url(at_path("/login"))
    since = time.time()
    sign_in(page, idp.username, idp.password)
    page.wait_for_url(at_path("/login/totp"))
    expect(page.get_by_role("heading", name="Two-step verification")).to_be_visible()
    code_input(page).fill(authenticator.code())  # the next time step's code (the set-up used one)
    page.get_by_role("button", name="Verify").click()  # POST → /authorize/resume → the RP
    claims = rp.redeem(authorization, arrive_at_rp(page, csp, rp, authorization, rp_callback))

    assert "/consent" not in paths, paths
    assert_signed_in(claims, since=since, acr="mfa", amr={"pwd", "otp", "mfa"})
    assert claims["sid"] != first["sid"] and claims["sub"] == first["sub"]
    assert len(rp_callback.queries) == 2
    csp.assert_none()


def test_a_first_party_client_gets_its_code_straight_after_the_password(page, idp, rp_callback, csp):
    rp = RelyingParty.of(idp, idp.first_party_client_id, idp.first_party_client_secret)
    authorization = rp.authorization()
    paths = visited_paths(page)
    page.goto(authorization.url)
    page.wait_for_url(at_path("/login"))
    since = time.time()
    sign_in(page, idp.username, idp.password)  # POST /login → /authorize/resume → the RP
    claims = rp.redeem(authorization, arrive_at_rp(page, csp, rp, authorization, rp_callback))

    assert "/consent" not in paths, paths  # first_party = true: no consent page, ever
    assert_signed_in(claims, since=since, acr="pwd", amr={"pwd"})
    assert len(rp_callback.queries) == 1
    csp.assert_none()


def test_response_mode_form_post_reaches_the_rp_as_a_post_without_a_csp_violation(page, idp, rp_callback, csp):
    """The response page posts itself to the RP's origin (script from idp's origin, form-action
    exactly the RP's): a returning first-party sign-in, then the code from the POST body."""
    rp = RelyingParty.of(idp, idp.first_party_client_id, idp.first_party_client_secret)
    authorization = rp.authorization(response_mode="form_post")
    page.goto(authorization.url)
    page.wait_for_url(at_path("/login"))
    since = time.time()
    sign_in(page, idp.username, idp.password)
    csp.wait_for_url(page, lambda url: url.startswith(rp.redirect_uri), "the RP's redirect_uri (POST)")
    expect(page.locator("body")).to_contain_text("Signed in (form post).")
    assert rp_callback.queries == [] and len(rp_callback.posted) == 1
    claims = rp.redeem(authorization, rp_callback.posted[0])
    assert_signed_in(claims, since=since, acr="pwd", amr={"pwd"})
    csp.assert_none()


def test_a_confirmed_logout_returns_to_the_rps_post_logout_redirect_uri(page, idp, rp_callback, csp):
    first_sign_in_with_consent(page, csp, idp, shop(idp), rp_callback)
    assert any(cookie["name"] == SESSION_COOKIE for cookie in page.context.cookies())

    # no id_token_hint: the request is not tied to the session, so idp asks first
    page.goto(
        f"{idp.issuer}/logout?"
        + urlencode(
            {"client_id": idp.client_id, "post_logout_redirect_uri": idp.post_logout_redirect_uri, "state": "xyz"}
        )
    )
    expect(page.get_by_role("heading", name="Sign out?")).to_be_visible()
    assert rp_callback.logged_out == []
    page.get_by_role("button", name="Sign out", exact=True).click()  # POST /logout?confirm=1 → 303 the RP
    csp.wait_for_url(
        page, lambda url: re.sub(r"\?.*", "", url) == idp.post_logout_redirect_uri, "the RP's post_logout_redirect_uri"
    )

    assert page.url == f"{idp.post_logout_redirect_uri}?state=xyz"
    expect(page.locator("body")).to_contain_text("Signed out.")  # the RP's own page answered
    assert rp_callback.logged_out == ["state=xyz"]
    assert all(cookie["name"] != SESSION_COOKIE for cookie in page.context.cookies())
    csp.assert_none()
