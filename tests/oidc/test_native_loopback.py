"""Native apps' loopback redirects (issue 16 item 9; RFC 8252 §7.3, §8.3): a client with
`application_type = "native"` whose redirect_uri is registered with the IP literal
127.0.0.1 or [::1] is accepted at any port, as the app listens on whatever port its system
gives it; everything else about the URI (scheme, host as written, path, query, no userinfo,
no fragment) still matches exactly, `localhost` is never widened, nor are web clients. The
pages that post towards such an app allow, in CSP form-action, the request's actual port:
browsers block the redirect after a form POST to an origin form-action does not name.

Each refusal first shows the same client accepted at another port, so the table fails on a
server that matched exactly (no port but the registered one) as well as on one too loose."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from idp.clients_file import parse_clients_toml
from idp.clients_sync import sync_clients
from idp.oidc.redirects import check_redirect_uri, without_loopback_port
from tests.support.rp import AuthRequest, follow_to_client, form_value, query_of, redeem, start, submit_login
from tests.support.seed import _toml_with_inline_jwks

NATIVE_TOML = """
[[clients]]
client_id = "desktop"
client_name = "Desktop App"
application_type = "native"
redirect_uris = ["http://127.0.0.1/callback", "http://[::1]:8400/callback", "http://localhost/callback"]
grant_types = ["authorization_code"]
token_endpoint_auth_method = "none"
scope = "openid profile"

[[clients]]
client_id = "dashboard"
client_name = "Dashboard"
redirect_uris = ["http://127.0.0.1:8765/callback"]
grant_types = ["authorization_code"]
token_endpoint_auth_method = "none"
scope = "openid profile"
"""

PORT = 53123  # what the app's system gave it this time


@pytest.fixture(autouse=True)
def native_clients(client: TestClient) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    with services.sessions.begin() as db:
        sync_clients(db, services.keyring, parse_clients_toml(_toml_with_inline_jwks() + NATIVE_TOML, source="test"))
    services.oidc.clients.reload()


def desktop(redirect_uri: str, **extra: str) -> AuthRequest:
    return AuthRequest(client_id="desktop", redirect_uri=redirect_uri, scope="openid", extra=extra)


def accepted(client: TestClient, request: AuthRequest) -> bool:
    """idp takes the request on (to its login page), rather than its 400 page for a bad redirect_uri."""
    response = start(client, request)
    return response.status_code == 303 and response.headers["location"].startswith("/login?tx=")


def refused(client: TestClient, request: AuthRequest) -> bool:
    """A redirect_uri idp does not trust gets a page, never a redirect (RFC 6749 §4.1.2.1)."""
    response = start(client, request)
    return response.status_code == 400 and "location" not in response.headers


@pytest.mark.parametrize(
    "redirect_uri",
    [
        f"http://127.0.0.1:{PORT}/callback",
        "http://127.0.0.1:1/callback",
        "http://127.0.0.1:65535/callback",
        "http://127.0.0.1/callback",  # the registered one, as it is
        f"http://[::1]:{PORT}/callback",
        "http://[::1]/callback",
    ],
)
def test_a_native_apps_loopback_ip_redirect_gets_its_code_at_any_port(client, redirect_uri):
    request = desktop(redirect_uri)
    location = follow_to_client(client, start(client, request))
    assert location.startswith(redirect_uri + "?"), location  # the code goes to the port asked for
    token = redeem(client, request, query_of(location)["code"], auth=None)  # the same redirect_uri, as RFC 6749 asks
    assert token.status_code == 200, token.text


@pytest.mark.parametrize(
    "redirect_uri",
    [
        pytest.param(f"https://127.0.0.1:{PORT}/callback", id="https instead of the registered http"),
        pytest.param(f"HTTP://127.0.0.1:{PORT}/callback", id="the scheme spelt otherwise"),
        pytest.param(f"http://127.0.0.2:{PORT}/callback", id="another loopback address"),
        pytest.param(f"http://127.1:{PORT}/callback", id="127.0.0.1 spelt short"),
        pytest.param(f"http://[0:0:0:0:0:0:0:1]:{PORT}/callback", id="::1 spelt long"),
        pytest.param(f"http://shop.example:{PORT}/callback", id="another host"),
        pytest.param(f"http://localhost:{PORT}/callback", id="localhost at another port (registered without)"),
        pytest.param(f"http://127.0.0.1:{PORT}/callback/more", id="a longer path"),
        pytest.param(f"http://127.0.0.1:{PORT}/Callback", id="the path in other case"),
        pytest.param(f"http://127.0.0.1:{PORT}/", id="another path"),
        pytest.param(f"http://127.0.0.1:{PORT}", id="no path"),
        pytest.param(f"http://127.0.0.1:{PORT}/callback?next=x", id="a query the registration has not"),
        pytest.param(f"http://127.0.0.1:{PORT}/callback#x", id="a fragment"),
        pytest.param(f"http://user@127.0.0.1:{PORT}/callback", id="userinfo before the host"),
        pytest.param(f"http://127.0.0.1:{PORT}@evil.example/callback", id="the loopback as userinfo of another host"),
        pytest.param(f"http://127.0.0.1:{PORT}\\@evil.example/callback", id="a backslash"),
        pytest.param("http://127.0.0.1:0/callback", id="port 0"),
        pytest.param("http://127.0.0.1:65536/callback", id="port out of range"),
        pytest.param(f"http://127.0.0.1:0{PORT}/callback", id="a port with a leading zero"),
        pytest.param("http://127.0.0.1:+80/callback", id="a signed port"),
        pytest.param("http://127.0.0.1:/callback", id="an empty port"),
    ],
)
def test_any_port_but_nothing_else_of_a_loopback_redirect_may_change(client, redirect_uri):
    assert accepted(client, desktop(f"http://127.0.0.1:{PORT}/callback"))
    assert refused(client, desktop(redirect_uri))


def test_localhost_is_matched_exactly_even_for_a_native_app(client):
    """RFC 8252 §8.3: `localhost` may resolve elsewhere, and a firewall may treat it
    otherwise: its redirect is the registered one only (here: port 80 only)."""
    assert accepted(client, desktop(f"http://[::1]:{PORT}/callback"))
    assert accepted(client, desktop("http://localhost/callback"))
    assert refused(client, desktop(f"http://localhost:{PORT}/callback"))
    assert refused(client, desktop("http://localhost:80/callback"))


def test_a_web_clients_loopback_redirect_is_matched_exactly(client):
    assert accepted(client, desktop(f"http://127.0.0.1:{PORT}/callback"))
    dashboard = AuthRequest(client_id="dashboard", scope="openid", redirect_uri="http://127.0.0.1:8765/callback")
    assert accepted(client, dashboard)
    dashboard.redirect_uri = f"http://127.0.0.1:{PORT}/callback"
    assert refused(client, dashboard)


def test_the_code_is_redeemed_only_with_the_redirect_uri_it_was_issued_for(client):
    request = desktop(f"http://127.0.0.1:{PORT}/callback")
    code = query_of(follow_to_client(client, start(client, request)))["code"]
    request.redirect_uri = f"http://127.0.0.1:{PORT + 1}/callback"  # registered as well, but not this code's
    assert redeem(client, request, code, auth=None).json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "uri,portless",
    [
        ("http://127.0.0.1:8080/cb", "http://127.0.0.1/cb"),
        ("http://127.0.0.1/cb?x=1", "http://127.0.0.1/cb?x=1"),
        ("http://[::1]:8080", "http://[::1]"),
        ("http://localhost:8080/cb", None),
        ("https://127.0.0.1:8080/cb", None),
        ("http://127.0.0.1:8080@evil.example/cb", None),
        ("http://127.0.0.1:99999/cb", None),
    ],
)
def test_without_loopback_port(uri, portless):
    assert without_loopback_port(uri) == portless


def test_only_native_clients_are_widened():
    registered = ["http://127.0.0.1/cb"]
    assert check_redirect_uri("http://127.0.0.1:5000/cb", registered, native=True)
    assert not check_redirect_uri("http://127.0.0.1:5000/cb", registered, native=False)
    assert check_redirect_uri("http://127.0.0.1/cb", registered, native=False)


# ---- CSP form-action: the request's actual port ------------------------------------------------


def form_action(response) -> list[str]:  # type: ignore[no-untyped-def]
    match = re.search(r"form-action ([^;]+)", response.headers["content-security-policy"])
    assert match, response.headers["content-security-policy"]
    return match.group(1).split()


@pytest.mark.parametrize(
    "redirect_uri,origin",
    [
        (f"http://127.0.0.1:{PORT}/callback", f"http://127.0.0.1:{PORT}"),
        (f"http://[::1]:{PORT}/callback", f"http://[::1]:{PORT}"),
    ],
)
def test_the_login_and_consent_pages_allow_the_requests_actual_port_in_form_action(client, redirect_uri, origin):
    login = start(client, desktop(redirect_uri)).headers["location"]
    assert form_action(client.get(login)) == ["'self'", origin]  # not the registered port (none, or 8400)
    consent = client.get(submit_login(client, login).headers["location"])  # resumed, to the consent page
    assert consent.url.path == "/consent" and consent.status_code == 200, consent.url
    assert form_action(consent) == ["'self'", origin]


def test_the_form_post_page_posts_to_the_requests_actual_port_only(client):
    redirect_uri = f"http://127.0.0.1:{PORT}/callback"
    login = start(client, desktop(redirect_uri, response_mode="form_post")).headers["location"]
    consent = client.get(submit_login(client, login).headers["location"])  # resumed, to the consent page
    assert consent.url.path == "/consent", consent.url
    page = client.post(
        "/consent",
        data={
            "csrf_token": form_value(consent.text, "csrf_token"),
            "tx": form_value(consent.text, "tx"),
            "decision": "allow",
        },
        follow_redirects=False,
    )
    assert page.status_code == 200 and f'action="{redirect_uri}"' in page.text, page.text[:500]
    assert form_action(page) == [f"http://127.0.0.1:{PORT}"]
