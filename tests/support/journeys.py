"""The pieces of a browser journey that are not idp's pages (those are hosted_pages.py):
the relying party (its own HTTP site on another origin, its authorization requests with
PKCE and nonce, code redemption and ID-token verification with PyJWT, RP-Initiated Logout
URLs), the person's devices (an authenticator app played by Debian's oathtool, Chromium's
virtual WebAuthn authenticator), and waits that say where the browser got stuck and why.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx
import jwt
from playwright.sync_api import CDPSession, Locator, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.support.csp import CspViolations
from tests.support.hosted_pages import describe

SCOPE = "openid profile email"
SESSION_COOKIE = "idp_session"
TOTP_PERIOD = 30
TOTP_MARGIN_SECONDS = 8  # a code of the previous step is used only if it stays valid this long


# --- the relying parties' site: a real HTTP server on its own origin ---------------------------


@dataclass
class RelyingPartySite:
    """The RPs' redirect_uri (/callback) and post-logout page (/logged-out) on one origin
    other than idp's; records each query either receives."""

    origin: str = ""
    callbacks: list[str] = field(default_factory=list)
    logged_out: list[str] = field(default_factory=list)

    @property
    def redirect_uri(self) -> str:
        return f"{self.origin}/callback"

    @property
    def post_logout_redirect_uri(self) -> str:
        return f"{self.origin}/logged-out"


def _site_handler(site: RelyingPartySite) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/callback":
                site.callbacks.append(parts.query)
                body = b"<!doctype html><title>RP</title><p>Signed in.</p>"
            elif parts.path == "/logged-out":
                site.logged_out.append(parts.query)
                body = b"<!doctype html><title>RP</title><p>Signed out.</p>"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def serving_relying_party_site() -> Iterator[RelyingPartySite]:
    site = RelyingPartySite()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _site_handler(site))
    site.origin = f"http://localhost:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def clients_toml(site: RelyingPartySite, secrets_by_client: dict[str, str]) -> str:
    """Shop (asks for consent) and Portal (first_party = true), both on `site`, both with a
    post_logout_redirect_uri there."""

    def client(client_id: str, name: str, extra: str = "") -> str:
        return f"""\
[[clients]]
client_id = "{client_id}"
client_name = "{name}"
client_secret = "{secrets_by_client[client_id]}"
redirect_uris = ["{site.redirect_uri}"]
post_logout_redirect_uris = ["{site.post_logout_redirect_uri}"]
grant_types = ["authorization_code"]
token_endpoint_auth_method = "client_secret_basic"
scope = "{SCOPE}"
{extra}
"""

    return client("shop", "Shop") + client("portal", "Portal", "first_party = true\n")


# --- the relying party's OpenID Connect side (httpx + PyJWT) -------------------------------------


@dataclass(frozen=True)
class Authorization:
    url: str
    state: str
    nonce: str
    code_verifier: str


@dataclass(frozen=True)
class IdToken:
    raw: str
    claims: dict[str, Any]

    @property
    def sid(self) -> str:
        return str(self.claims["sid"])

    @property
    def auth_time(self) -> int:
        return int(self.claims["auth_time"])


@dataclass(frozen=True)
class RelyingParty:
    client_id: str
    client_secret: str
    site: RelyingPartySite
    issuer: str
    metadata: dict[str, Any]
    jwks: jwt.PyJWKClient

    @classmethod
    def discover(cls, issuer: str, client_id: str, client_secret: str, site: RelyingPartySite) -> RelyingParty:
        metadata = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
        assert metadata["issuer"] == issuer, metadata
        return cls(client_id, client_secret, site, issuer, metadata, jwt.PyJWKClient(metadata["jwks_uri"]))

    def authorization(self, **extra: str) -> Authorization:
        state, nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = urlencode(
            {
                "client_id": self.client_id,
                "response_type": "code",
                "scope": SCOPE,
                "redirect_uri": self.site.redirect_uri,
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                **extra,
            }
        )
        return Authorization(f"{self.metadata['authorization_endpoint']}?{query}", state, nonce, verifier)

    def redeem(self, authorization: Authorization, query: str) -> IdToken:
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
                "redirect_uri": self.site.redirect_uri,
                "code_verifier": authorization.code_verifier,
            },
        )
        assert response.status_code == 200, response.text
        raw = response.json()["id_token"]
        claims = jwt.decode(
            raw,
            self.jwks.get_signing_key_from_jwt(raw).key,
            algorithms=["RS256"],
            audience=self.client_id,
            issuer=self.issuer,
            options={"require": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "sid", "acr", "amr"]},
        )
        assert claims["nonce"] == authorization.nonce, claims
        return IdToken(raw, claims)

    def end_session_url(self, state: str, *, id_token_hint: str | None = None) -> str:
        """RP-Initiated Logout 1.0: with the ID token as hint (tied to the session), or with
        only client_id (not tied: idp asks the person first)."""
        who = {"id_token_hint": id_token_hint} if id_token_hint else {"client_id": self.client_id}
        query = urlencode({**who, "post_logout_redirect_uri": self.site.post_logout_redirect_uri, "state": state})
        return f"{self.metadata['end_session_endpoint']}?{query}"


@dataclass(frozen=True)
class Expected:
    """What one sign-in must put in the ID token (RFC 8176 amr values)."""

    acr: str
    amr: frozenset[str]


def assert_id_token(token: IdToken, expected: Expected, *, since: float) -> None:
    """acr and amr as expected, auth_time this sign-in's (not earlier than `since`, to the
    second), a sid; nonce, iss, aud and signature were checked when it was redeemed."""
    claims = token.claims
    assert claims["acr"] == expected.acr, claims
    assert isinstance(claims["amr"], list) and set(claims["amr"]) == expected.amr, claims
    assert len(claims["amr"]) == len(set(claims["amr"])), claims
    auth_time = claims["auth_time"]
    assert isinstance(auth_time, int) and int(since) <= auth_time <= time.time() + 1, (since, claims)
    assert isinstance(claims["sid"], str) and len(claims["sid"]) >= 16, claims


# --- waiting for the next page ----------------------------------------------------------------------


def reach(page: Page, csp: CspViolations, locator: Locator, what: str) -> None:
    """Waits until `locator` is visible; else fails naming the CSP violations, or where the
    browser is (URL, heading, alerts)."""
    try:
        locator.first.wait_for(state="visible")
    except PlaywrightTimeoutError:
        csp.assert_none(f"while waiting for {what}")
        raise AssertionError(f"never reached {what}: the browser is at {describe(page)}") from None


def arrive(page: Page, csp: CspViolations, predicate: Callable[[str], bool], what: str) -> None:
    """`page.wait_for_url(predicate)`, failing as `reach` does."""
    try:
        page.wait_for_url(predicate)
    except PlaywrightTimeoutError:
        csp.assert_none(f"while waiting for {what}")
        raise AssertionError(f"never reached {what}: the browser is at {describe(page)}") from None


def session_cookie(page: Page) -> str | None:
    return next((c["value"] for c in page.context.cookies() if c["name"] == SESSION_COOKIE), None)


def end_of_session(page: Page) -> None:
    """The IdP session ends in this browser (as when it expires); the rest of its state stays."""
    page.context.clear_cookies(name=SESSION_COOKIE)
    assert session_cookie(page) is None


# --- the person's authenticator app (Debian's oathtool, not pyotp, which idp uses) ---------------


@dataclass
class TotpApp:
    """An authenticator app holding one secret. idp accepts a code once per time step and
    user, within one step either side of now: each code comes from the earliest step still
    open that is later than the last one used (the previous step while it has
    TOTP_MARGIN_SECONDS left), so a user's first three codes never wait for the clock."""

    oathtool: str
    secret: str
    last_step: int | None = None

    def code(self) -> str:
        now = time.time()
        current = int(now // TOTP_PERIOD)
        earliest = current - 1 if (current + 1) * TOTP_PERIOD - now >= TOTP_MARGIN_SECONDS else current
        step = earliest if self.last_step is None else max(earliest, self.last_step + 1)
        assert step <= current + 1, "a fourth code within one time step would have to wait: give the journey a new user"
        result = subprocess.run(
            [self.oathtool, "--totp", "-b", self.secret, "-N", f"@{step * TOTP_PERIOD}"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        assert result.returncode == 0, f"oathtool failed: {result.stderr.strip()}"
        code = result.stdout.strip()
        assert re.fullmatch(r"[0-9]{6}", code), code
        self.last_step = step
        return code


# --- the person's device: Chromium's virtual WebAuthn authenticator ------------------------------


@dataclass(frozen=True)
class VirtualAuthenticator:
    """A platform authenticator (a laptop's fingerprint reader) that holds discoverable,
    device-bound credentials and verifies the user; `touched` says whether the person
    answers the next request (no UI either way)."""

    cdp: CDPSession
    authenticator_id: str

    def credentials(self) -> list[dict[str, Any]]:
        return self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.authenticator_id})["credentials"]

    def touched(self, touched: bool) -> None:
        self.cdp.send(
            "WebAuthn.setAutomaticPresenceSimulation", {"authenticatorId": self.authenticator_id, "enabled": touched}
        )

    def add(self, credential: dict[str, Any]) -> None:
        """A credential another authenticator made (as a synced or copied key would arrive)."""
        self.cdp.send("WebAuthn.addCredential", {"authenticatorId": self.authenticator_id, "credential": credential})


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
                "defaultBackupEligibility": False,
                "defaultBackupState": False,  # device-bound: amr hwk, not swk
            }
        },
    )
    return VirtualAuthenticator(cdp, added["authenticatorId"])


def document_statuses(page: Page) -> list[tuple[str, int]]:
    """(URL, HTTP status) of every top-level document the browser receives from now on."""
    seen: list[tuple[str, int]] = []
    page.on(
        "response",
        lambda r: (
            seen.append((r.url, r.status)) if r.request.is_navigation_request() and r.frame == page.main_frame else None
        ),
    )
    return seen
