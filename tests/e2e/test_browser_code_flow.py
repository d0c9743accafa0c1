"""The authorization code flow end to end, as a real user and a real relying party see it:
Debian's Chromium on idp's hosted pages, and pyoidc (`oic`, not idp's code) as the RP, with
PyJWT as a second, independent check of the ID token."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from oic.oic import Client
from oic.oic.message import (
    AccessTokenResponse,
    AuthorizationResponse,
    RegistrationResponse,
)
from oic.utils.authn.client import CLIENT_AUTHN_METHOD
from playwright.sync_api import Page, expect

from tests.support.hosted_pages import at_path, visited_paths

if TYPE_CHECKING:
    from .conftest import RunningIdp

pytestmark = pytest.mark.browser

SCOPE = "openid profile email offline_access"


# --- the relying party (pyoidc) ----------------------------------------------------------


@dataclass(frozen=True)
class Authorization:
    """What the RP keeps between sending the browser away and the callback."""

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


def start_authorization(rp: Client, idp: RunningIdp) -> Authorization:
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
        }
    )
    return Authorization(request.request(rp.authorization_endpoint), state, nonce, code_verifier)


def redeem(rp: Client, idp: RunningIdp, authorization: Authorization, callback_query: str) -> AccessTokenResponse:
    response = rp.parse_response(AuthorizationResponse, info=callback_query, sformat="urlencoded")
    tokens = rp.do_access_token_request(
        state=authorization.state,
        authn_method="client_secret_basic",
        request_args={
            "code": response["code"],
            "redirect_uri": idp.redirect_uri,
            "code_verifier": authorization.code_verifier,
        },
    )  # verifies the ID token's signature (JWKS), iss, aud and nonce
    assert isinstance(tokens, AccessTokenResponse), tokens.to_dict()
    return tokens


# --- the browser -------------------------------------------------------------------------


def sign_in(page: Page, username: str, password: str) -> None:
    page.locator("input[name=username]").fill(username)
    page.locator("input[name=password]").fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()


def callback_query(page: Page, idp: RunningIdp) -> dict[str, str]:
    page.wait_for_url(lambda url: url.startswith(idp.redirect_uri + "?"))
    expect(page.locator("body")).to_contain_text("Signed in.")  # the RP's own page answered
    return {k: v[0] for k, v in parse_qs(urlsplit(page.url).query, strict_parsing=True).items()}


def first_sign_in(
    page: Page, rp: Client, idp: RunningIdp, screenshots: Path | None = None
) -> tuple[Authorization, str]:
    """Login form, then consent, then the callback; returns the authorization and the raw query."""
    authorization = start_authorization(rp, idp)
    page.goto(authorization.url)
    page.wait_for_url(at_path("/login"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    if screenshots:
        page.screenshot(path=screenshots / "login-page.png", full_page=True)
    sign_in(page, idp.username, idp.password)
    page.wait_for_url(at_path("/consent"))
    expect(page.get_by_role("heading", name="Allow Shop?")).to_be_visible()
    if screenshots:
        page.screenshot(path=screenshots / "consent-page.png", full_page=True)
    page.get_by_role("button", name="Allow").click()
    callback_query(page, idp)
    return authorization, urlsplit(page.url).query


# --- raw HTTP for the token, revocation and introspection endpoints -----------------------


def refresh(idp: RunningIdp, refresh_token: str) -> httpx.Response:
    return httpx.post(
        f"{idp.issuer}/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=(idp.client_id, idp.client_secret),
    )


def introspect(idp: RunningIdp, token: str) -> dict[str, object]:
    response = httpx.post(f"{idp.issuer}/introspect", data={"token": token}, auth=(idp.client_id, idp.client_secret))
    assert response.status_code == 200, response.text
    return response.json()


def at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode("ascii")


# --- the tests ---------------------------------------------------------------------------


def test_signing_in_through_the_hosted_pages_gives_the_rp_a_verified_id_token_and_userinfo(page, idp, artifacts):
    rp = relying_party(idp)
    authorization, query = first_sign_in(page, rp, idp, screenshots=artifacts)
    params = parse_qs(query)
    assert params["state"] == [authorization.state]
    assert params["iss"] == [idp.issuer]  # RFC 9207
    assert len(params["code"]) == 1

    tokens = redeem(rp, idp, authorization, query)
    id_token = tokens["id_token_jwt"]
    signing_key = jwt.PyJWKClient(rp.provider_info["jwks_uri"]).get_signing_key_from_jwt(id_token)
    claims = jwt.decode(id_token, signing_key.key, algorithms=["RS256"], audience="shop", issuer=idp.issuer)
    verified_by_oic = tokens["id_token"]
    for name in ("iss", "sub", "nonce", "auth_time", "sid", "at_hash"):  # both libraries read the same token
        assert claims[name] == verified_by_oic[name], name
    assert claims["iss"] == idp.issuer
    assert claims["aud"] in ("shop", ["shop"])
    assert claims["sub"] and "alice" not in claims["sub"]  # opaque, not the username
    assert claims["nonce"] == authorization.nonce
    assert claims["acr"] == "pwd"
    assert claims["amr"] == ["pwd"]
    assert abs(claims["auth_time"] - time.time()) < 60
    assert claims["sid"]
    assert claims["at_hash"] == at_hash(tokens["access_token"])

    userinfo = rp.do_user_info_request(state=authorization.state)  # bearer token from the grant above
    assert userinfo["sub"] == claims["sub"]
    assert userinfo["email"] == "alice@example.com"
    assert userinfo["preferred_username"] == "alice"


def test_refresh_rotates_the_token_and_replaying_an_old_one_revokes_the_whole_family(page, idp):
    rp = relying_party(idp)
    tokens = redeem(rp, idp, *first_sign_in(page, rp, idp))
    old_refresh_token = tokens["refresh_token"]

    rotated = refresh(idp, old_refresh_token)
    assert rotated.status_code == 200, rotated.text
    new_refresh_token = rotated.json()["refresh_token"]
    assert new_refresh_token != old_refresh_token

    replay = refresh(idp, old_refresh_token)
    assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")
    after_replay = refresh(idp, new_refresh_token)
    assert (after_replay.status_code, after_replay.json()["error"]) == (400, "invalid_grant")


def test_second_sign_in_needs_neither_password_nor_consent_and_its_access_token_can_be_revoked(page, idp):
    rp = relying_party(idp)
    first, _ = first_sign_in(page, rp, idp)

    pages_shown = visited_paths(page)
    second = start_authorization(rp, idp)
    page.goto(second.url)
    query = callback_query(page, idp)
    assert pages_shown == ["/authorize", "/callback"]  # straight back: no login form, no consent page
    assert query["state"] == second.state and query["iss"] == idp.issuer

    tokens = redeem(rp, idp, second, urlsplit(page.url).query)
    assert tokens["id_token"]["nonce"] == second.nonce
    access_token = tokens["access_token"]
    before = introspect(idp, access_token)
    assert before["active"] is True
    assert before["sub"] == tokens["id_token"]["sub"]
    assert before["client_id"] == "shop"

    revoked = httpx.post(
        f"{idp.issuer}/revoke",
        data={"token": access_token, "token_type_hint": "access_token"},
        auth=(idp.client_id, idp.client_secret),
    )
    assert revoked.status_code == 200, revoked.text
    assert introspect(idp, access_token) == {"active": False}
