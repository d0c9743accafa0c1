"""Walking a real relying party's sign-in through idp in the browser (tests/rp): what the
user does on idp's pages between the RP's redirect and its callback, what the RP sent to
the authorization endpoint, and the checks every journey's ID token gets.

The hosted pages are driven by tests/support/hosted_pages.py (the contract's selectors
only); this module adds the consent decision and the wait for the RP's origin, with the
CSP recorder naming any violation that stopped the browser on the way."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import jwt
from playwright.sync_api import Page, Request

from tests.support.csp import CspViolations
from tests.support.hosted_pages import sign_in
from tests.support.idp_server import User


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def on_origin(base: str) -> Callable[[str], bool]:
    """A `wait_for_url` predicate: the page is on `base`'s origin."""
    return lambda url: origin(url) == origin(base)


def authorization_requests(page: Page, issuer: str) -> list[dict[str, str]]:
    """The query of every navigation to idp's /authorize from now on, in order: what the RP
    software really asked for (scope, PKCE, nonce, response_mode…)."""
    seen: list[dict[str, str]] = []

    def record(request: Request) -> None:
        if request.is_navigation_request() and request.url.startswith(issuer + "/authorize?"):
            seen.append(dict(parse_qsl(urlsplit(request.url).query)))

    page.on("request", record)
    return seen


def sign_in_through_idp(page: Page, csp: CspViolations, issuer: str, rp: str, user: User) -> None:
    """On idp's login page (where the RP sent the browser): signs in, allows on the consent
    page if idp asks (first time for this user and client), and waits until the browser is
    back on the RP's origin `rp`."""
    csp.wait_for_url(page, lambda url: url.startswith(issuer), "idp's login page")
    sign_in(page, user.username, user.password)
    csp.wait_for_url(
        page,
        lambda url: origin(url) == origin(rp) or url.startswith(issuer + "/consent"),
        "the consent page or the RP's callback",
    )
    if page.url.startswith(issuer + "/consent"):
        page.get_by_role("button", name="Allow", exact=True).click()
        csp.wait_for_url(page, on_origin(rp), "the RP after consent")


def verified_id_token(issuer: str, id_token: str, audience: str) -> dict[str, Any]:
    """The ID token's claims, its signature checked with PyJWT against idp's JWKS (not
    idp's own JOSE library)."""
    keys = jwt.PyJWKSet.from_dict(httpx.get(f"{issuer}/jwks", timeout=5).json())
    kid = jwt.get_unverified_header(id_token).get("kid")
    key = next(k for k in keys.keys if k.key_id == kid)
    return dict(jwt.decode(id_token, key.key, algorithms=["RS256"], audience=audience, issuer=issuer))


def assert_password_sign_in(claims: Mapping[str, Any], *, nonce: str, signed_in_after: float) -> None:
    """What a password sign-in puts in the ID token (claims as JSON types)."""
    assert claims.get("acr") == "pwd", claims
    assert claims.get("amr") == ["pwd"], claims
    assert signed_in_after - 5 <= int(claims["auth_time"]) <= time.time() + 5, claims
    assert claims.get("nonce") == nonce, claims
    assert claims.get("sid"), claims
