"""A scripted relying party and browser for app-level tests: builds authorization
requests with PKCE, fills the hosted forms, redeems codes."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from httpx import Response
from joserfc import jwt
from joserfc.jwk import KeySet
from starlette.testclient import TestClient

from tests.support.seed import PASSWORD, SHOP_SECRET

SHOP = ("shop", SHOP_SECRET)
SHOP_REDIRECT = "https://shop.example/callback"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def form_value(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no {name} in form"
    return match.group(1)


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@dataclass
class AuthRequest:
    client_id: str = "shop"
    redirect_uri: str = SHOP_REDIRECT
    scope: str = "openid profile email offline_access"
    extra: dict[str, str] = field(default_factory=dict)
    verifier: str = ""
    state: str = field(default_factory=lambda: secrets.token_urlsafe(8))
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(8))

    def params(self) -> dict[str, str]:
        self.verifier, challenge = pkce_pair()
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scope,
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        params.update(self.extra)
        return {k: v for k, v in params.items() if v is not None}


def start(client: TestClient, request: AuthRequest) -> Response:
    return client.get("/authorize", params=request.params(), follow_redirects=False)


def submit_login(
    client: TestClient, login_page_url: str, username: str = "alice", password: str = PASSWORD
) -> Response:
    page = client.get(login_page_url)
    data = {"csrf_token": form_value(page.text, "csrf_token"), "username": username, "password": password}
    if 'name="tx"' in page.text:
        data["tx"] = form_value(page.text, "tx")
    return client.post("/login", data=data, follow_redirects=False)


def follow_to_client(client: TestClient, response: Response, *, consent: str = "allow", username: str = "alice") -> str:
    """Drives login and consent as needed; returns the redirect to the client."""
    for _ in range(6):
        location = response.headers["location"]
        if not location.startswith("/"):
            return location
        if location.startswith("/login"):
            response = submit_login(client, location, username=username)
        elif location.startswith("/consent"):
            page = client.get(location)
            response = client.post(
                "/consent",
                data={
                    "csrf_token": form_value(page.text, "csrf_token"),
                    "tx": form_value(page.text, "tx"),
                    "decision": consent,
                },
                follow_redirects=False,
            )
        else:
            response = client.get(location, follow_redirects=False)
    raise AssertionError("too many redirects")


def redeem(
    client: TestClient, request: AuthRequest, code: str, *, auth: tuple[str, str] | None = SHOP, **extra: str
) -> Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": request.redirect_uri,
        "code_verifier": request.verifier,
    }
    if auth is None:
        data["client_id"] = request.client_id
    data.update(extra)
    return client.post("/token", data=data, auth=auth)


def sign_in_and_get_code(client: TestClient, request: AuthRequest | None = None, **kw: Any) -> tuple[AuthRequest, str]:
    request = request or AuthRequest()
    location = follow_to_client(client, start(client, request), **kw)
    params = query_of(location)
    assert "code" in params, params
    return request, params["code"]


def tokens_for(client: TestClient, request: AuthRequest | None = None) -> dict[str, Any]:
    request, code = sign_in_and_get_code(client, request)
    response = redeem(client, request, code)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def refresh(client: TestClient, refresh_token: str, *, auth: tuple[str, str] = SHOP) -> Response:
    return client.post("/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}, auth=auth)


def decode_id_token(client: TestClient, id_token: str) -> dict[str, Any]:
    keys = KeySet.import_key_set(client.get("/jwks").json())
    return dict(jwt.decode(id_token, keys, algorithms=["RS256"]).claims)
