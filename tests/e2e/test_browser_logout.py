"""Logout end to end, as two relying parties and their user see it: RP-Initiated Logout 1.0
from one RP in Debian's Chromium, Back-Channel Logout 1.0 tokens POSTed to both RPs' own
HTTP servers (verified with PyJWT, not idp's JOSE library), the confirmation page for a
request not tied to the session, and signing out other browsers from /account."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode, urlsplit

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
from playwright.sync_api import Browser, Page, expect

from tests.support.hosted_pages import at_path, sign_in, visited_paths

if TYPE_CHECKING:
    from .conftest import RunningIdp

pytestmark = pytest.mark.browser

SCOPE = "openid profile email"
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
SESSION_COOKIE = "idp_session"
DELIVERY_SECONDS = 10.0
NARROW, WIDE = (360, 740), (1280, 800)


# --- the relying parties' own HTTP servers -----------------------------------------------------


@dataclass
class RelyingParty:
    """One RP: its registration and the real HTTP server behind its URIs, which records the
    authorization callbacks, the back-channel POSTs and the post-logout landings."""

    client_id: str
    client_name: str
    client_secret: str
    base_url: str = ""
    callbacks: list[str] = field(default_factory=list)
    backchannel: list[tuple[str, bytes]] = field(default_factory=list)  # (content-type, body)
    logged_out: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def redirect_uri(self) -> str:
        return f"{self.base_url}/callback"

    @property
    def logged_out_uri(self) -> str:
        return f"{self.base_url}/logged-out"

    @property
    def backchannel_uri(self) -> str:
        return f"{self.base_url}/backchannel"

    def logout_tokens(self) -> list[str]:
        with self.lock:
            posts = list(self.backchannel)
        tokens = []
        for content_type, body in posts:
            assert content_type.split(";")[0].strip() == "application/x-www-form-urlencoded", content_type
            form = parse_qs(body.decode("ascii"), strict_parsing=True)
            assert list(form) == ["logout_token"] and len(form["logout_token"]) == 1, form
            tokens.append(form["logout_token"][0])
        return tokens


def _rp_handler(rp: RelyingParty) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            parts = urlsplit(self.path)
            if parts.path == "/callback":
                rp.callbacks.append(parts.query)
                self._page(f"{rp.client_name}: signed in.")
            elif parts.path == "/logged-out":
                rp.logged_out.append(parts.query)
                self._page(f"{rp.client_name}: signed out.")
            else:
                self.send_error(404)

        def do_POST(self) -> None:  # noqa: N802
            if urlsplit(self.path).path != "/backchannel":
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with rp.lock:
                rp.backchannel.append((self.headers.get("Content-Type") or "", body))
            self.send_response(200)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _page(self, text: str) -> None:
            body = f"<!doctype html><title>{rp.client_name}</title><p>{text}</p>".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def _clients_toml(*rps: RelyingParty) -> str:
    return "".join(
        f"""\
[[clients]]
client_id = "{rp.client_id}"
client_name = "{rp.client_name}"
client_secret = "{rp.client_secret}"
redirect_uris = ["{rp.redirect_uri}"]
post_logout_redirect_uris = ["{rp.logged_out_uri}"]
backchannel_logout_uri = "{rp.backchannel_uri}"
grant_types = ["authorization_code", "refresh_token"]
token_endpoint_auth_method = "client_secret_basic"
scope = "openid profile email offline_access"

"""
        for rp in rps
    )


def _registered(idp: RunningIdp, rp: RelyingParty) -> bool:
    """Whether the running idp already serves `rp` as synced: a cookieless logout request with
    its post_logout_redirect_uri is sent there (unknown client: 400; old config: no redirect)."""
    response = httpx.get(
        f"{idp.issuer}/logout", params={"client_id": rp.client_id, "post_logout_redirect_uri": rp.logged_out_uri}
    )
    return response.status_code == 303 and response.headers["location"] == rp.logged_out_uri


@pytest.fixture
def rps(idp: RunningIdp, idp_cli, tmp_path: Path) -> Iterator[tuple[RelyingParty, RelyingParty]]:  # type: ignore[no-untyped-def]
    """Shop (the `idp` fixture's client, same secret) and Blog, each with its own server, both
    registered with a backchannel_logout_uri and a post_logout_redirect_uri: the admin's clients
    file is rewritten and `idp clients sync` run against the running idp, which picks it up."""
    shop = RelyingParty("shop", "Shop", idp.client_secret)
    blog = RelyingParty("blog", "Blog", secrets.token_urlsafe(36))
    servers = []
    for rp in (shop, blog):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _rp_handler(rp))
        rp.base_url = f"http://localhost:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
    try:
        clients_file = tmp_path / "clients.toml"  # the file the `idp` fixture's server was started with
        clients_file.write_text(_clients_toml(shop, blog))
        idp_cli("clients", "sync", str(clients_file))
        deadline = time.monotonic() + 15  # the server reloads its clients every few seconds
        while not (_registered(idp, shop) and _registered(idp, blog)):
            assert time.monotonic() < deadline, "the running idp did not pick up `idp clients sync` within 15 s"
            time.sleep(0.2)
        yield shop, blog
    finally:
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


# --- the relying parties' OpenID Connect side (pyoidc) ----------------------------------------


@dataclass(frozen=True)
class Authorization:
    url: str
    state: str
    nonce: str
    code_verifier: str


def oidc_client(idp: RunningIdp, rp: RelyingParty) -> Client:
    client = Client(client_id=rp.client_id, client_authn_method=CLIENT_AUTHN_METHOD)
    client.provider_config(idp.issuer)  # discovery and JWKS
    client.store_registration_info(
        RegistrationResponse(
            client_id=rp.client_id,
            client_secret=rp.client_secret,
            redirect_uris=[rp.redirect_uri],
            token_endpoint_auth_method="client_secret_basic",
        )
    )
    return client


def start_authorization(client: Client, rp: RelyingParty) -> Authorization:
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    pkce, code_verifier = client.add_code_challenge()  # S256
    request = client.construct_AuthorizationRequest(
        request_args={
            "client_id": rp.client_id,
            "response_type": "code",
            "scope": SCOPE,
            "redirect_uri": rp.redirect_uri,
            "state": state,
            "nonce": nonce,
            **pkce,
        }
    )
    return Authorization(request.request(client.authorization_endpoint), state, nonce, code_verifier)


def redeem(client: Client, rp: RelyingParty, authorization: Authorization, query: str) -> AccessTokenResponse:
    response = client.parse_response(AuthorizationResponse, info=query, sformat="urlencoded")
    assert response["state"] == authorization.state
    tokens = client.do_access_token_request(
        state=authorization.state,
        authn_method="client_secret_basic",
        request_args={
            "code": response["code"],
            "redirect_uri": rp.redirect_uri,
            "code_verifier": authorization.code_verifier,
        },
    )  # verifies the ID token's signature (JWKS), iss, aud and nonce
    assert isinstance(tokens, AccessTokenResponse), tokens.to_dict()
    assert tokens["id_token"]["nonce"] == authorization.nonce
    return tokens


# --- the browser -------------------------------------------------------------------------------


def sign_in_at_rp(
    page: Page, idp: RunningIdp, client: Client, rp: RelyingParty, *, password: bool
) -> AccessTokenResponse:
    """The RP sends the browser to /authorize; the login form if `password` (else it must not
    appear), consent if asked, then the RP's callback; returns the RP's verified tokens."""
    authorization = start_authorization(client, rp)
    paths = visited_paths(page)
    page.goto(authorization.url)
    if password:
        page.wait_for_url(at_path("/login"))
        sign_in(page, idp.username, idp.password)
    page.wait_for_url(lambda url: urlsplit(url).path in ("/consent", "/callback"))
    if urlsplit(page.url).path == "/consent":
        expect(page.get_by_role("heading", name=f"Allow {rp.client_name}?")).to_be_visible()
        page.get_by_role("button", name="Allow", exact=True).click()
    page.wait_for_url(lambda url: url.startswith(rp.redirect_uri + "?"))
    expect(page.locator("body")).to_contain_text(f"{rp.client_name}: signed in.")  # the RP's own page
    if not password:
        assert "/login" not in paths, f"the login form was shown again: {paths}"
    return redeem(client, rp, authorization, urlsplit(page.url).query)


@contextmanager
def fresh_page(browser: Browser) -> Iterator[Page]:
    """Another browser profile: no cookies, no IdP session."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def session_cookie(page: Page) -> str | None:
    return next((c["value"] for c in page.context.cookies() if c["name"] == SESSION_COOKIE), None)


def screenshots(page: Page, artifacts: Path, name: str) -> None:
    """The page at a phone's and a laptop's width; at the phone's, nothing may stick out."""
    for width, height in (NARROW, WIDE):
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=artifacts / f"{name}-{width}.png", full_page=True)
        if width == NARROW[0]:
            scroll_width = page.evaluate("document.documentElement.scrollWidth")
            assert scroll_width <= width + 1, f"{name}: the page is {scroll_width} px wide in a {width} px viewport"


# --- back-channel logout tokens, checked with PyJWT --------------------------------------------


def wait_for_logout_tokens(*rps: RelyingParty, timeout: float = DELIVERY_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not all(rp.backchannel for rp in rps):
        if time.monotonic() > deadline:
            missing = [rp.client_id for rp in rps if not rp.backchannel]
            pytest.fail(f"no back-channel logout POST within {timeout:.0f} s for {missing}")
        time.sleep(0.05)


def verified_logout_token(token: str, client: Client, idp: RunningIdp, rp: RelyingParty) -> dict[str, object]:
    """Back-Channel Logout 1.0 §2.4 and §2.6, as an RP must validate it, with PyJWT."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256", header
    assert header.get("typ") == "logout+jwt", header  # explicit typing (§2.4, RFC 8725 §3.11)
    signing_key = jwt.PyJWKClient(client.provider_info["jwks_uri"]).get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        signing_key.key,
        algorithms=["RS256"],
        audience=rp.client_id,
        issuer=idp.issuer,
        options={"require": ["iss", "aud", "iat", "exp", "jti", "events", "sid"]},
    )
    assert claims["aud"] in (rp.client_id, [rp.client_id]), claims
    now = time.time()
    assert isinstance(claims["iat"], int) and abs(claims["iat"] - now) < 60, claims
    assert isinstance(claims["exp"], int) and claims["exp"] > now and claims["exp"] > claims["iat"], claims
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16, claims
    events = claims["events"]
    assert isinstance(events, dict) and events.get(BACKCHANNEL_EVENT) == {}, events
    assert "nonce" not in claims, claims  # §2.4: a logout token must never pass for an ID token
    return claims


# --- the tests ---------------------------------------------------------------------------------


def test_rp_initiated_logout_signs_out_of_both_rps_over_the_back_channel(page, idp, rps):
    shop, blog = rps
    shop_client, blog_client = oidc_client(idp, shop), oidc_client(idp, blog)

    # 1. one browser: the password once for Shop, then Blog on the same IdP session
    shop_tokens = sign_in_at_rp(page, idp, shop_client, shop, password=True)
    blog_tokens = sign_in_at_rp(page, idp, blog_client, blog, password=False)
    sid, sub = shop_tokens["id_token"]["sid"], shop_tokens["id_token"]["sub"]
    assert sid and blog_tokens["id_token"]["sid"] == sid
    assert blog_tokens["id_token"]["sub"] == sub
    assert session_cookie(page) is not None
    assert shop.backchannel == [] and blog.backchannel == []

    # 2. Shop's RP-initiated logout: tied to the session by the hint, so no confirmation page
    end_session_endpoint = shop_client.provider_info["end_session_endpoint"]
    assert end_session_endpoint == f"{idp.issuer}/logout"
    state = secrets.token_urlsafe(24)
    paths = visited_paths(page)
    page.goto(
        end_session_endpoint
        + "?"
        + urlencode(
            {
                "id_token_hint": shop_tokens["id_token_jwt"],
                "post_logout_redirect_uri": shop.logged_out_uri,
                "state": state,
            }
        )
    )
    page.wait_for_url(lambda url: url.startswith(shop.logged_out_uri + "?"))
    expect(page.locator("body")).to_contain_text("Shop: signed out.")
    assert paths == ["/logout", "/logged-out"], paths  # straight through: no "Sign out?" page
    assert parse_qs(urlsplit(page.url).query, strict_parsing=True) == {"state": [state]}
    assert shop.logged_out == [f"state={state}"] and blog.logged_out == []
    assert session_cookie(page) is None

    # 3. both RPs are POSTed a logout token for that session
    wait_for_logout_tokens(shop, blog)
    claims = {}
    for rp, client in ((shop, shop_client), (blog, blog_client)):
        tokens = rp.logout_tokens()
        assert len(tokens) == 1, f"{rp.client_id} got {len(tokens)} logout tokens"
        claims[rp.client_id] = verified_logout_token(tokens[0], client, idp, rp)
        assert claims[rp.client_id]["sid"] == sid
        assert claims[rp.client_id].get("sub", sub) == sub
    assert claims["shop"]["jti"] != claims["blog"]["jti"]

    # 4. the IdP session is over: Blog's next authorization asks for the password
    authorization = start_authorization(blog_client, blog)
    page.goto(authorization.url)
    page.wait_for_url(at_path("/login"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("input[name=password][type=password]")).to_be_visible()
    assert len(blog.callbacks) == 1  # only the first sign-in came back

    time.sleep(1)  # no second delivery (e.g. a retry after a 200)
    assert len(shop.backchannel) == 1 and len(blog.backchannel) == 1


def test_a_logout_request_without_a_hint_asks_first_and_fits_a_phone_and_a_laptop(page, idp, rps, artifacts):
    shop, _ = rps
    shop_client = oidc_client(idp, shop)
    sid = sign_in_at_rp(page, idp, shop_client, shop, password=True)["id_token"]["sid"]

    page.goto(f"{idp.issuer}/logout?" + urlencode({"client_id": "shop"}))  # e.g. a link on another site
    expect(page.get_by_role("heading", name="Sign out?")).to_be_visible()
    expect(page.locator("body")).to_contain_text("Shop asks to sign you out")
    screenshots(page, artifacts, "logout-confirm")

    # nothing has ended yet: the session still opens /account and no RP was told anything
    other_tab = page.context.new_page()
    other_tab.goto(f"{idp.issuer}/account")
    expect(other_tab.get_by_role("heading", name="Your account")).to_be_visible()
    other_tab.close()
    time.sleep(0.5)
    assert shop.backchannel == []

    page.set_viewport_size({"width": WIDE[0], "height": WIDE[1]})
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()
    expect(page.locator("body")).to_contain_text("go back to Shop")
    assert urlsplit(page.url).path == "/logout"
    assert session_cookie(page) is None
    screenshots(page, artifacts, "logged-out")

    wait_for_logout_tokens(shop)
    assert verified_logout_token(shop.logout_tokens()[0], shop_client, idp, shop)["sid"] == sid
    page.goto(f"{idp.issuer}/account")
    page.wait_for_url(at_path("/login"))


def test_signing_out_all_other_sessions_on_account_ends_the_other_browsers_session(browser, idp, rps, artifacts):
    shop, _ = rps
    shop_client = oidc_client(idp, shop)
    with fresh_page(browser) as a, fresh_page(browser) as b:
        a.goto(f"{idp.issuer}/login")  # a plain sign-in lands on /account
        sign_in(a, idp.username, idp.password)
        a.wait_for_url(at_path("/account"))
        b_sid = sign_in_at_rp(b, idp, shop_client, shop, password=True)["id_token"]["sid"]  # B also uses Shop
        b.goto(f"{idp.issuer}/account")
        expect(b.get_by_role("heading", name="Your account")).to_be_visible()

        a.goto(f"{idp.issuer}/account")
        section = a.get_by_role("region", name=re.compile(r"sessions|signed in", re.IGNORECASE))
        expect(section).to_be_visible()
        sessions = section.get_by_role("listitem")
        expect(sessions).to_have_count(2)  # A and B
        current = sessions.filter(has_text=re.compile(r"this (browser|device|session)|current", re.IGNORECASE))
        expect(current).to_have_count(1)
        sign_out_others = a.get_by_role("button", name=re.compile(r"Sign out all other"))
        expect(sign_out_others).to_be_visible()
        screenshots(a, artifacts, "account-sessions")

        sign_out_others.click()
        a.wait_for_url(at_path("/account"))
        expect(sign_out_others).to_have_count(0)  # nothing left to sign out
        expect(sessions).to_have_count(1)  # only this browser's session is left
        expect(current).to_have_count(1)

        b.goto(f"{idp.issuer}/account")
        b.wait_for_url(at_path("/login"))  # B's session ended
        expect(b.locator("input[name=password][type=password]")).to_be_visible()

        a.goto(f"{idp.issuer}/account")  # A's was kept
        expect(a.get_by_role("heading", name="Your account")).to_be_visible()

        wait_for_logout_tokens(shop)  # B had signed in to Shop: Shop is told that session ended
        tokens = shop.logout_tokens()
        assert len(tokens) == 1, tokens
        assert verified_logout_token(tokens[0], shop_client, idp, shop)["sid"] == b_sid
