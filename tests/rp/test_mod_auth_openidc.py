"""Apache httpd with mod_auth_openidc (Debian's libapache2-mod-auth-openidc, 2.4 on Debian 12)
as the relying party, in Debian's Chromium against a real `idp serve`.

Apache runs with a configuration of its own on a free port of 127.0.0.1 (tests/support/
apache.py), never the system service. Its protected location runs a CGI script that prints
the OIDC_CLAIM_* variables mod_auth_openidc sets from the ID token and userinfo, so what the
module verified and passed on is what the test reads. The redirect URI doubles as the
back-channel logout URI (`?logout=backchannel`), as mod_auth_openidc documents."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.support.apache import Apache, apache_binary, running_apache
from tests.support.csp import CspViolations
from tests.support.idp_server import ALICE, BOB, LocalIdp, User, serving_idp
from tests.support.processes import free_port
from tests.support.rp_journeys import (
    assert_password_sign_in,
    authorization_requests,
    sign_in_through_idp,
)

pytestmark = pytest.mark.browser

CLAIMS_PATH = "/protected/claims"
REDIRECT_PATH = "/protected/redirect_uri"
LOGGED_OUT_PATH = "/logged-out.html"
BACKCHANNEL_SECONDS = 10.0

CLAIMS_CGI = """\
#!/bin/sh
printf 'Content-Type: text/plain; charset=utf-8\\r\\nCache-Control: no-store\\r\\n\\r\\n'
printf 'REMOTE_USER=%s\\n' "$REMOTE_USER"
env | grep '^OIDC_CLAIM_' | LC_ALL=C sort
"""
LOGGED_OUT_HTML = "<!doctype html><title>Apache RP</title><p>Signed out of the Apache RP.</p>\n"
FILES = {"cgi-bin/claims": (CLAIMS_CGI, 0o755), f"htdocs{LOGGED_OUT_PATH}": (LOGGED_OUT_HTML, 0o644)}


def client_toml(client_id: str, secret: str, rp: str, *extra: str) -> str:
    """A confidential client for an Apache RP at `rp`: its redirect URI, the logged-out page
    as post-logout redirect, back-channel logout into the redirect URI."""
    return "\n".join(
        [
            "[[clients]]",
            f'client_id = "{client_id}"',
            'client_name = "Apache RP"',
            f'client_secret = "{secret}"',
            f'redirect_uris = ["{rp}{REDIRECT_PATH}"]',
            f'post_logout_redirect_uris = ["{rp}{LOGGED_OUT_PATH}"]',
            f'backchannel_logout_uri = "{rp}{REDIRECT_PATH}?logout=backchannel"',
            'grant_types = ["authorization_code", "refresh_token"]',
            'token_endpoint_auth_method = "client_secret_basic"',
            'scope = "openid profile email"',
            *extra,
            "",
        ]
    )


def site(issuer: str, client_id: str, secret: str, rp: str, *directives: str) -> Callable[[Path], str]:
    """The mod_auth_openidc part of httpd.conf, for a ServerRoot: the provider by its
    discovery document, this client, and /protected behind `AuthType openid-connect`;
    `directives` are everything beyond mod_auth_openidc's defaults."""

    def for_root(root: Path) -> str:
        return "\n".join(
            [
                f"OIDCProviderMetadataURL {issuer}/.well-known/openid-configuration",
                f"OIDCClientID {client_id}",
                f"OIDCClientSecret {secret}",
                f"OIDCRedirectURI {rp}{REDIRECT_PATH}",
                f"OIDCCryptoPassphrase {secrets.token_hex(32)}",
                *directives,
                f'ScriptAlias {CLAIMS_PATH} "{root}/cgi-bin/claims"',
                "<Location /protected>",
                "  AuthType openid-connect",
                "  Require valid-user",
                "</Location>",
                "",
            ]
        )

    return for_root


@dataclass(frozen=True)
class Deployment:
    idp: LocalIdp
    apache: Apache

    @property
    def claims_url(self) -> str:
        return self.apache.origin + CLAIMS_PATH

    @property
    def logged_out_url(self) -> str:
        return self.apache.origin + LOGGED_OUT_PATH

    def diagnostics(self) -> str:
        return f"--- apache error.log ---\n{self.apache.error_log()}\n--- idp log ---\n{self.idp.log()}"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """idp with the client `apache`, and Apache configured as its docs say, PKCE on:
    `OIDCPKCEMethod S256`, scopes openid profile email."""
    apache_binary()  # skip (laptop) or fail (CI) before starting anything
    port, secret = free_port(), secrets.token_hex(32)
    rp = f"http://127.0.0.1:{port}"
    with serving_idp(
        tmp_path_factory.mktemp("idp-apache"), client_toml("apache", secret, rp), users=(ALICE, BOB)
    ) as idp:
        configured = site(idp.issuer, "apache", secret, rp, "OIDCPKCEMethod S256", 'OIDCScope "openid profile email"')
        with running_apache(port, configured, FILES) as apache:
            yield Deployment(idp, apache)


def passed_claims(page: Page) -> dict[str, str]:
    """The protected page's NAME=value lines: REMOTE_USER and every OIDC_CLAIM_*."""
    lines = page.locator("body").inner_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def sign_in_at_apache(deployment: Deployment, page: Page, csp: CspViolations, user: User) -> dict[str, str]:
    """The protected page, idp's login (and consent the first time), back on the protected
    page; returns what mod_auth_openidc passed to it."""
    page.goto(deployment.claims_url)
    sign_in_through_idp(page, csp, deployment.idp.issuer, deployment.apache.origin, user)
    csp.wait_for_url(page, lambda url: url == deployment.claims_url, "the protected page after the callback")
    return passed_claims(page)


def apache_session_alive(context: BrowserContext, deployment: Deployment) -> bool:
    """The protected page with this profile's cookies, redirects not followed: 200 while
    mod_auth_openidc has a session for them, a redirect to idp once it has none."""
    response = context.request.get(deployment.claims_url, max_redirects=0)
    if response.status == 200:
        return True
    assert response.status in (302, 303), f"{response.status} from the protected page:\n{deployment.diagnostics()}"
    assert response.headers["location"].startswith(deployment.idp.issuer + "/authorize?"), response.headers
    return False


def wait_until_apache_session_ends(context: BrowserContext, deployment: Deployment) -> None:
    deadline = time.monotonic() + BACKCHANNEL_SECONDS
    while apache_session_alive(context, deployment):
        assert time.monotonic() < deadline, (
            f"the Apache session outlived idp's session by {BACKCHANNEL_SECONDS:.0f} s: no back-channel logout "
            f"reached mod_auth_openidc\n{deployment.diagnostics()}"
        )
        time.sleep(0.2)


def claims_as_json(passed: dict[str, str]) -> dict[str, Any]:
    """mod_auth_openidc's strings as the ID token's JSON types (arrays come comma-separated)."""
    return {
        "acr": passed.get("OIDC_CLAIM_acr"),
        "amr": passed.get("OIDC_CLAIM_amr", "").split(","),
        "auth_time": passed.get("OIDC_CLAIM_auth_time", "0"),
        "nonce": passed.get("OIDC_CLAIM_nonce"),
        "sid": passed.get("OIDC_CLAIM_sid"),
    }


def test_mod_auth_openidc_signs_in_with_pkce_and_passes_the_verified_claims(
    deployment: Deployment, page: Page, csp: CspViolations
) -> None:
    asked = authorization_requests(page, deployment.idp.issuer)
    started = time.time()

    passed = sign_in_at_apache(deployment, page, csp, ALICE)

    assert len(asked) == 1, asked
    request = asked[0]
    assert request["code_challenge_method"] == "S256" and len(request["code_challenge"]) == 43, request
    assert request["scope"].split() == ["openid", "profile", "email"], request
    assert request["response_type"] == "code" and "response_mode" not in request, request
    assert_password_sign_in(claims_as_json(passed), nonce=request["nonce"], signed_in_after=started)
    assert passed["OIDC_CLAIM_iss"] == deployment.idp.issuer and passed["OIDC_CLAIM_aud"] == "apache", passed
    assert passed["OIDC_CLAIM_email"] == ALICE.email and passed["OIDC_CLAIM_name"] == ALICE.name, passed
    assert passed["REMOTE_USER"] == f"{passed['OIDC_CLAIM_sub']}@{deployment.idp.issuer}", passed
    csp.assert_none()


def test_rp_initiated_logout_from_mod_auth_openidc_ends_both_sessions(
    deployment: Deployment, context: BrowserContext, page: Page, csp: CspViolations
) -> None:
    sign_in_at_apache(deployment, page, csp, ALICE)

    page.goto(f"{deployment.apache.origin}{REDIRECT_PATH}?logout={quote(deployment.logged_out_url, safe='')}")

    csp.wait_for_url(page, lambda url: url.startswith(deployment.logged_out_url), "the Apache RP's logged-out page")
    expect(page.get_by_text("Signed out of the Apache RP.")).to_be_visible()
    assert not apache_session_alive(context, deployment)
    page.goto(deployment.claims_url)  # idp's session is gone too: its login page, not the claims
    csp.wait_for_url(page, lambda url: url.startswith(deployment.idp.issuer + "/login"), "idp's login page")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    csp.assert_none()


def test_signing_out_at_idp_ends_the_apache_session_by_back_channel_logout(
    deployment: Deployment, context: BrowserContext, page: Page, csp: CspViolations
) -> None:
    sign_in_at_apache(deployment, page, csp, ALICE)
    assert apache_session_alive(context, deployment)

    page.goto(deployment.idp.issuer + "/logout")  # as a link from another RP would: idp asks first
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()

    wait_until_apache_session_ends(context, deployment)
    csp.assert_none()


def test_disabling_the_user_ends_the_apache_session_by_back_channel_logout(
    deployment: Deployment, context: BrowserContext, page: Page, csp: CspViolations
) -> None:
    sign_in_at_apache(deployment, page, csp, BOB)
    assert apache_session_alive(context, deployment)

    output = deployment.idp.cli("user", "disable", BOB.username)

    assert "back-channel logouts: 1 delivered, 0 failed" in output, output + deployment.diagnostics()
    assert not apache_session_alive(context, deployment)
    csp.assert_none()


def test_mod_auth_openidc_with_its_defaults_signs_in_against_a_require_pkce_false_client(
    tmp_path: Path, page: Page, csp: CspViolations
) -> None:
    """mod_auth_openidc as most admins leave it: no OIDCPKCEMethod (2.4 sends no PKCE by
    default), no OIDCScope (only `openid`). The client opts out of PKCE, so idp requires the
    nonce mod_auth_openidc sends, and signs the user in."""
    apache_binary()
    port, secret = free_port(), secrets.token_hex(32)
    rp = f"http://127.0.0.1:{port}"
    clients = client_toml("apache-defaults", secret, rp, "require_pkce = false")
    with (
        serving_idp(tmp_path / "idp", clients) as idp,
        running_apache(port, site(idp.issuer, "apache-defaults", secret, rp), FILES) as apache,
    ):
        deployment = Deployment(idp, apache)
        asked = authorization_requests(page, idp.issuer)
        started = time.time()

        passed = sign_in_at_apache(deployment, page, csp, ALICE)

        [request] = asked
        assert "code_challenge" not in request and request["scope"] == "openid", request
        assert_password_sign_in(claims_as_json(passed), nonce=request["nonce"], signed_in_after=started)
        csp.assert_none()
