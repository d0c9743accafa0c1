"""The login chain end to end at the app level (issue 5): the policy's decisions as the
relying party sees them in the ID token (acr, amr, auth_time), step-up that asks only for
what is missing, enrolment demanded by an admin or a client, backup codes, unmet
requirements, and the shared lockout across the password and code steps."""

from __future__ import annotations

import re
from typing import Any

import pyotp
import pytest
from sqlalchemy import select, update

from idp.db.models import Client, User
from idp.users import require_mfa
from tests.support.clock import START
from tests.support.rp import (
    AuthRequest,
    decode_id_token,
    form_value,
    query_of,
    redeem,
    start,
    submit_login,
)
from tests.support.seed import PASSWORD

T0 = START.timestamp()  # the app's clock starts there, a step boundary plus 20 s (tests/support/clock.py)


def user_id(client, username: str = "alice") -> int:
    with client.app.state.services.sessions() as db:
        return db.scalar(select(User.id).where(User.username == username))


def enrol_totp(client, username: str = "alice") -> str:
    """A confirmed authenticator for the user, as /account would leave it; returns the secret."""
    services = client.app.state.services
    uid = user_id(client, username)  # SQLite here has one connection: no session inside another
    with services.sessions.begin() as db:
        secret = services.factors.begin_totp(db, uid)
        assert services.factors.confirm_totp(db, uid, pyotp.TOTP(secret).at(services.clock.time())).ok
    return secret


def at_step(client, offset_steps: int) -> float:
    """Moves the app's clock: each code is accepted once per step, so each use needs a new one."""
    now = T0 + 30 * offset_steps
    client.app.state.services.clock.set(now)
    return now


def post_code(client, location: str, **fields: str):
    page = client.get(location)
    assert page.status_code == 200, page.text
    data = {"csrf_token": form_value(page.text, "csrf_token"), "tx": form_value(page.text, "tx"), **fields}
    return client.post(location.split("?")[0], data=data, follow_redirects=False)  # the page's own step


def error_of(html: str) -> str:
    match = re.search(r'<p class="error" role="alert">(.*?)</p>', html)
    return match.group(1) if match else ""


def to_client(client, response) -> str:
    """Follows resume and consent (Allow) to the redirect back to the RP."""
    for _ in range(6):
        location = response.headers["location"]
        if not location.startswith("/"):
            return location
        if location.startswith("/consent"):
            page = client.get(location)
            response = client.post(
                "/consent",
                data={
                    "csrf_token": form_value(page.text, "csrf_token"),
                    "tx": form_value(page.text, "tx"),
                    "decision": "allow",
                },
                follow_redirects=False,
            )
        else:
            response = client.get(location, follow_redirects=False)
    raise AssertionError("too many redirects")


def id_token_of(client, request: AuthRequest, location: str) -> dict[str, Any]:
    params = query_of(location)
    assert "code" in params, params
    tokens = redeem(client, request, params["code"]).json()
    return decode_id_token(client, tokens["id_token"])


def test_a_user_with_totp_always_does_the_code_step_and_the_rp_gets_mfa(client):
    secret = enrol_totp(client)
    request = AuthRequest()
    response = submit_login(client, start(client, request).headers["location"])
    assert response.status_code == 303 and response.headers["location"].startswith("/login/totp?tx=")
    now = at_step(client, 1)
    response = post_code(client, response.headers["location"], code=pyotp.TOTP(secret).at(now))
    assert response.status_code == 303
    claims = id_token_of(client, request, to_client(client, response))
    assert claims["acr"] == "mfa" and claims["amr"] == ["pwd", "otp", "mfa"]
    assert claims["auth_time"] == now  # the sign-in finished with the code


def test_step_up_from_a_password_session_asks_only_for_the_code_and_keeps_the_session(client):
    first = AuthRequest(scope="openid")
    claims = id_token_of(
        client, first, to_client(client, submit_login(client, start(client, first).headers["location"]))
    )
    assert claims["acr"] == "pwd" and claims["amr"] == ["pwd"]
    secret = enrol_totp(client)

    stepped = AuthRequest(scope="openid", extra={"acr_values": "mfa"})
    response = start(client, stepped)
    assert response.headers["location"].startswith("/login/totp?tx="), "a step-up must not ask for the password"
    now = at_step(client, 1)
    response = post_code(client, response.headers["location"], code=pyotp.TOTP(secret).at(now))
    upgraded = id_token_of(client, stepped, to_client(client, response))
    assert upgraded["acr"] == "mfa" and upgraded["amr"] == ["pwd", "otp", "mfa"]
    assert upgraded["sid"] == claims["sid"]  # the same IdP session, upgraded
    assert upgraded["auth_time"] >= claims["auth_time"]


def test_acr_values_mfa_for_a_user_without_a_factor_enrols_on_the_spot(client):
    request = AuthRequest(extra={"acr_values": "mfa"})
    response = submit_login(client, start(client, request).headers["location"])
    assert response.headers["location"].startswith("/login/enrol_totp?tx=")
    page = client.get(response.headers["location"])
    assert page.status_code == 200
    secret = re.search(r'data-totp-secret="([A-Z2-7]+)"', page.text).group(1)
    assert 'src="data:image/svg+xml' in page.text
    now = at_step(client, 0)
    confirm = client.post(
        "/login/enrol_totp",
        data={
            "csrf_token": form_value(page.text, "csrf_token"),
            "tx": form_value(page.text, "tx"),
            "code": pyotp.TOTP(secret).at(now),
        },
        follow_redirects=False,
    )
    assert confirm.status_code == 200  # the backup codes, shown once, before going on
    codes = re.findall(r"\b[A-Z0-9]{4}-[A-Z0-9]{4}\b", confirm.text)
    assert len(set(codes)) == 10
    onward = re.search(r'href="(/authorize/resume\?tx=[^"]+)"', confirm.text).group(1)
    claims = id_token_of(client, request, to_client(client, client.get(onward, follow_redirects=False)))
    assert claims["acr"] == "mfa"


def test_admin_enforced_mfa_makes_the_next_login_enrol_before_any_code_is_issued(client):
    with client.app.state.services.sessions.begin() as db:
        require_mfa(db, "alice")
    request = AuthRequest()
    response = submit_login(client, start(client, request).headers["location"])
    assert response.headers["location"].startswith("/login/enrol_totp?tx=")
    # skipping the enrolment does not get a code: resume sends the browser back into the chain
    tx = response.headers["location"].split("tx=")[1]
    resumed = client.get(f"/authorize/resume?tx={tx}", follow_redirects=False)
    assert "code=" not in resumed.headers.get("location", "")


def test_a_clients_default_acr_values_demand_a_second_factor(client):
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "shop"))
        db.execute(
            update(Client).where(Client.id == row.id).values(config={**row.config, "default_acr_values": ["mfa"]})
        )
    services.oidc.clients.reload()
    response = submit_login(client, start(client, AuthRequest()).headers["location"])
    assert response.headers["location"].startswith("/login/enrol_totp?tx=")


def test_an_unsatisfiable_level_is_an_error_returned_to_the_rp(client):
    """phr for a user without a passkey: after the password, the RP gets the OIDC error."""
    request = AuthRequest(extra={"acr_values": "phr"})
    response = submit_login(client, start(client, request).headers["location"])
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("https://shop.example/callback?")
    params = query_of(location)
    assert params["error"] == "unmet_authentication_requirements"
    assert params["state"] == request.state and params["iss"] == "http://localhost:8000"
    assert "code" not in params


def test_prompt_none_when_a_step_up_is_needed_is_interaction_required(client):
    to_client(client, submit_login(client, start(client, AuthRequest()).headers["location"]))
    enrol_totp(client)
    response = start(client, AuthRequest(extra={"prompt": "none"}))
    assert query_of(response.headers["location"])["error"] == "interaction_required"


def test_a_backup_code_works_once_and_the_page_says_how_many_are_left(client):
    secret = enrol_totp(client)
    services = client.app.state.services
    codes = ["ABCD-EFGH", "JKMN-PQRS", "TVWX-YZ23"]
    uid = user_id(client)
    hashed = [(c, services.hashing.hash(c)) for c in codes]
    with services.sessions.begin() as db:
        services.factors.replace_backup_codes(db, uid, hashed)
    assert secret

    request = AuthRequest()
    response = submit_login(client, start(client, request).headers["location"])
    backup_page = response.headers["location"].replace("/login/totp?", "/login/backup_code?")
    assert 'name="backup_code"' in client.get(backup_page).text
    used = post_code(client, backup_page, backup_code="  abcd efgh ")  # case, spaces and no dash forgiven
    assert used.status_code == 200
    assert "2</strong> backup codes left" in used.text and "running out" in used.text
    onward = re.search(r'href="(/authorize/resume\?tx=[^"]+)"', used.text).group(1)
    claims = id_token_of(client, request, to_client(client, client.get(onward, follow_redirects=False)))
    assert claims["acr"] == "mfa"

    client.cookies.clear()
    again = submit_login(client, start(client, AuthRequest()).headers["location"])
    refused = post_code(
        client, again.headers["location"].replace("/login/totp?", "/login/backup_code?"), backup_code="ABCD-EFGH"
    )
    assert refused.status_code == 401
    assert "not valid or was already used" in error_of(refused.text)


def test_wrong_codes_and_wrong_passwords_share_one_lockout_counter(client):
    secret = enrol_totp(client)
    login_page = start(client, AuthRequest()).headers["location"]
    for _ in range(2):
        assert submit_login(client, login_page, password="wrong password").status_code == 401
    code_step = submit_login(client, login_page).headers["location"]  # the right password does not reset it
    for _ in range(2):
        assert post_code(client, code_step, code="000000").status_code == 401
    last = post_code(client, code_step, code="000001")
    assert last.status_code == 401 and "paused" in error_of(last.text)
    now = at_step(client, 1)
    assert post_code(client, code_step, code=pyotp.TOTP(secret).at(now)).status_code == 401  # locked now
    assert submit_login(client, login_page).status_code == 401


def test_the_code_step_needs_the_password_step_first(client):
    login_page = start(client, AuthRequest()).headers["location"]
    tx = login_page.split("tx=")[1]
    assert client.get(f"/login/totp?tx={tx}").status_code == 400


def test_a_replayed_code_is_refused_at_login(client):
    secret = enrol_totp(client)
    now = at_step(client, 1)
    code = pyotp.TOTP(secret).at(now)
    first = submit_login(client, start(client, AuthRequest()).headers["location"])
    assert post_code(client, first.headers["location"], code=code).status_code == 303
    client.cookies.clear()
    second = submit_login(client, start(client, AuthRequest()).headers["location"])
    assert post_code(client, second.headers["location"], code=code).status_code == 401


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_discovery_advertises_the_levels_idp_can_reach(client):
    assert client.get("/.well-known/openid-configuration").json()["acr_values_supported"] == ["pwd", "mfa", "phr"]


def test_plain_sign_in_to_idp_with_totp_goes_through_the_code_step_to_the_account_page(client):
    secret = enrol_totp(client)
    page = client.get("/login")
    response = client.post(
        "/login",
        data={"csrf_token": form_value(page.text, "csrf_token"), "username": "alice", "password": PASSWORD},
        follow_redirects=False,
    )
    assert response.headers["location"].startswith("/login/totp?tx=")
    now = at_step(client, 1)
    done = post_code(client, response.headers["location"], code=pyotp.TOTP(secret).at(now))
    assert done.status_code == 303 and done.headers["location"] == "/account"
