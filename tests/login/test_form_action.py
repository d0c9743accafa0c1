"""CSP form-action on the pages whose form can end at a relying party (issue 13): browsers
apply form-action to every redirect after a form POST, so these pages allow exactly the
RP's verified redirect origin (scheme, host, actual port), and every other page 'self'."""

from __future__ import annotations

import re

import pyotp
import pytest
from sqlalchemy import select, update

from idp.db.models import Client
from idp.web.pages import redirect_source
from tests.login.test_chain import at_step, enrol_totp, post_code
from tests.login.test_transaction_binding import login_page_url, post_password, tx_of
from tests.support.rp import AuthRequest, start, submit_login


@pytest.mark.parametrize(
    "uri,source",
    [
        ("https://shop.example/callback", "https://shop.example"),
        ("https://Shop.Example:443/cb?x=1", "https://shop.example"),
        ("https://shop.example:8443/cb", "https://shop.example:8443"),
        ("http://localhost:5173/callback", "http://localhost:5173"),
        ("http://127.0.0.1:80/cb", "http://127.0.0.1"),
        ("http://[::1]:8080/cb", "http://[::1]:8080"),
        ("com.example.app:/oauth2redirect", "com.example.app:"),
        ("https://shop.example; script-src 'unsafe-inline'/cb", None),
        ("https://user@shop.example/cb", None),
        ("https://shop.example:99999/cb", None),
        ("javascript:alert(1)", None),
        ("data:text/html,x", None),
        ("/relative/only", None),
        ("", None),
        (None, None),
    ],
    ids=lambda value: repr(value),
)
def test_redirect_source_is_exactly_the_origin_or_nothing(uri, source):
    assert redirect_source(uri) == ((source,) if source else ())


def form_action(response) -> list[str]:  # type: ignore[no-untyped-def]
    match = re.search(r"form-action ([^;]+)", response.headers["content-security-policy"])
    assert match, response.headers["content-security-policy"]
    return match.group(1).split()


RP = ["'self'", "https://shop.example"]


def test_the_login_page_of_a_parked_request_allows_the_rps_origin_and_no_other(client):
    assert form_action(client.get(login_page_url(client))) == RP


def test_the_code_step_allows_the_rps_origin(client):
    enrol_totp(client, "alice")
    code_step = post_password(client, tx_of(login_page_url(client)), "alice")
    page = client.get(code_step.headers["location"])
    assert page.status_code == 200 and form_action(page) == RP
    backup = client.get(code_step.headers["location"].replace("/login/totp?", "/login/backup_code?"))
    assert form_action(backup) == RP
    wrong = post_code(client, code_step.headers["location"], code="000000")
    assert wrong.status_code == 401 and form_action(wrong) == RP  # the form shown again after a wrong code


def test_the_enrolment_and_passkey_steps_allow_the_rps_origin(client):
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "shop"))
        db.execute(
            update(Client).where(Client.id == row.id).values(config={**row.config, "default_acr_values": ["mfa"]})
        )
    services.oidc.clients.reload()
    enrol = post_password(client, tx_of(login_page_url(client)), "alice")
    assert form_action(client.get(enrol.headers["location"])) == RP
    tx = tx_of(enrol.headers["location"])
    elsewhere = client.get(
        f"/login/passkey?tx={tx}", follow_redirects=False
    )  # no passkey yet: the chain is on the enrolment
    assert elsewhere.status_code == 303 and elsewhere.headers["location"] == f"/login/enrol_totp?tx={tx}"


def test_a_step_up_code_page_allows_the_rps_origin(client):
    submit_login(client, "/login")
    secret = enrol_totp(client, "alice")
    step_up = start(client, AuthRequest(extra={"acr_values": "mfa"}))
    page = client.get(step_up.headers["location"])
    assert form_action(page) == RP
    assert (
        post_code(client, step_up.headers["location"], code=pyotp.TOTP(secret).at(at_step(client, 1))).status_code
        == 303
    )


def test_the_logout_confirmation_allows_the_post_logout_origin_only(client):
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "shop"))
        db.execute(
            update(Client)
            .where(Client.id == row.id)
            .values(config={**row.config, "post_logout_redirect_uris": ["https://shop.example:8443/bye"]})
        )
    services.oidc.clients.reload()
    submit_login(client, "/login")
    page = client.get(
        "/logout", params={"client_id": "shop", "post_logout_redirect_uri": "https://shop.example:8443/bye"}
    )
    assert page.status_code == 200 and form_action(page) == ["'self'", "https://shop.example:8443"]
    unlisted = client.get("/logout", params={"client_id": "shop"})
    assert form_action(unlisted) == ["'self'"]


@pytest.mark.parametrize("path", ["/", "/login", "/account"])
def test_pages_that_cannot_lead_to_an_rp_keep_self(client, path):
    submit_login(client, "/login")
    assert form_action(client.get(path)) == ["'self'"]
