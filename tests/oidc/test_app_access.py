"""Who may use which app (issue 17): a client's allowed_groups checked on every path that
can yield tokens (a new sign-in, an existing session, prompt=none, refresh), a group's
minimum assurance raising what every member's sign-in reaches, and taking a user out of
a group ending what they hold at the apps that required it. Each test names the attack
or the defect it pins: without the check, the refused user gets a code or a token."""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from idp.clients_file import parse_clients_toml
from idp.clients_sync import sync_clients
from idp.db.models import AuditEvent, Client, IdpSession
from idp.groups import add_group, add_members, remove_members
from tests.login.test_chain import at_step, enrol_totp, id_token_of, post_code, to_client
from tests.support.rp import (
    SHOP,
    SHOP_REDIRECT,
    AuthRequest,
    follow_to_client,
    query_of,
    refresh,
    start,
    submit_login,
    tokens_for,
)
from tests.support.seed import _toml_with_inline_jwks

ISSUER = "http://localhost:8000"


def restrict(client, client_id: str, groups: list[str] | None) -> None:
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == client_id))
        db.execute(update(Client).where(Client.id == row.id).values(config={**row.config, "allowed_groups": groups}))
    services.oidc.clients.reload()


def groups(client, *specs: tuple[str, str | None, list[str]]) -> None:
    with client.app.state.services.sessions.begin() as db:
        for name, min_acr, members in specs:
            add_group(db, name, min_acr=min_acr)
            if members:
                add_members(db, name, members)


def audit_kinds(client, kind: str) -> list[AuditEvent]:
    with client.app.state.services.sessions() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.kind == kind)))


def way_back(html: str) -> dict[str, list[str]]:
    """The error page's only button: the RP's redirect_uri with the error in its query."""
    link = re.search(r'href="(https://shop\.example/callback\?[^"]+)"', html)
    assert link, html
    return parse_qs(urlsplit(link.group(1).replace("&amp;", "&")).query)


@pytest.fixture
def staff_only(client):
    groups(client, ("staff", None, ["alice"]))
    restrict(client, "shop", ["staff"])
    return client


def test_a_member_of_an_allowed_group_signs_in(staff_only):
    tokens = tokens_for(staff_only)
    assert tokens["access_token"] and tokens["refresh_token"]


def test_a_non_member_is_refused_after_the_password_without_a_code_session_or_second_factor(staff_only):
    """Attack: a user outside the app's groups signs in to it. The chain stops once the user
    is known: no second factor is asked, no session starts, and the only button returns
    access_denied with the request's state and our iss."""
    enrol_totp(staff_only, "bob")  # bob has a second factor: it must not even be asked
    request = AuthRequest()
    response = submit_login(staff_only, start(staff_only, request).headers["location"], username="bob")
    assert response.status_code == 403, response.headers
    assert "may not use Shop" in response.text
    assert "idp_session" not in response.headers.get("set-cookie", "")
    back = way_back(response.text)
    assert back["error"] == ["access_denied"] and back["state"] == [request.state] and back["iss"] == [ISSUER]
    with staff_only.app.state.services.sessions() as db:
        assert db.scalar(select(IdpSession)) is None
    (refused,) = audit_kinds(staff_only, "access.refused")
    assert refused.client_id == "shop" and refused.detail["reason"] == "not_in_allowed_groups"


def test_an_existing_session_of_a_non_member_gets_the_refusal_page_not_a_code(staff_only):
    """Attack: single sign-on carries a session from an open app into a restricted one."""
    follow_to_client(
        staff_only,
        start(staff_only, AuthRequest(client_id="portal", redirect_uri="https://portal.example/cb")),
        username="bob",
    )
    request = AuthRequest()
    response = start(staff_only, request)
    assert response.status_code == 403 and "may not use Shop" in response.text
    assert way_back(response.text)["error"] == ["access_denied"]


def test_prompt_none_for_a_non_member_redirects_access_denied_at_once(staff_only):
    follow_to_client(
        staff_only,
        start(staff_only, AuthRequest(client_id="portal", redirect_uri="https://portal.example/cb")),
        username="bob",
    )
    request = AuthRequest(extra={"prompt": "none"})
    response = start(staff_only, request)
    assert response.status_code == 303
    params = query_of(response.headers["location"])
    assert response.headers["location"].startswith(SHOP_REDIRECT)
    assert params["error"] == "access_denied" and params["state"] == request.state and params["iss"] == ISSUER
    assert "code" not in params


def test_removal_from_the_group_ends_refresh_and_access_tokens_there(staff_only):
    """Attack: a user removed from the app's group keeps using the app with the tokens it
    already holds (offline_access included)."""
    tokens = tokens_for(staff_only)
    with staff_only.app.state.services.sessions.begin() as db:
        removal = remove_members(db, "staff", ["alice"])
    assert removal.withdrawn == (("alice", "shop"),)
    assert [e.clients for e in removal.ended] == [("shop",)]  # a back-channel logout for that RP only
    answer = refresh(staff_only, tokens["refresh_token"])
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    userinfo = staff_only.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert userinfo.status_code == 401
    assert audit_kinds(staff_only, "access.withdrawn")


def test_refresh_is_refused_once_the_clients_file_narrows_the_groups(staff_only):
    """Defect pinned: the access check at refresh, not only at removal (the admin changed
    allowed_groups in the clients file: nobody was removed from a group)."""
    tokens = tokens_for(staff_only)
    groups(staff_only, ("ops", None, []))
    restrict(staff_only, "shop", ["ops"])
    answer = refresh(staff_only, tokens["refresh_token"])
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    refused = audit_kinds(staff_only, "access.refused")
    assert refused and refused[-1].detail["grant_type"] == "refresh_token"
    userinfo = staff_only.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert userinfo.status_code == 401  # what the user held there ended with the refusal


def test_another_group_of_the_app_keeps_the_user_in(staff_only):
    groups(staff_only, ("ops", None, ["alice"]))
    restrict(staff_only, "shop", ["staff", "ops"])
    tokens = tokens_for(staff_only)
    with staff_only.app.state.services.sessions.begin() as db:
        removal = remove_members(db, "staff", ["alice"])
    assert removal.withdrawn == ()
    assert refresh(staff_only, tokens["refresh_token"]).status_code == 200


def test_a_group_minimum_of_mfa_makes_a_member_enrol_whatever_the_app_asks(client):
    """Attack: an app that asks for nothing lets a member of a group that requires MFA in
    with a password alone."""
    groups(client, ("admins", "mfa", ["alice"]))
    response = submit_login(client, start(client, AuthRequest()).headers["location"])
    assert response.headers["location"].startswith("/login/enrol_totp?tx=")


def test_a_group_minimum_of_mfa_steps_up_an_existing_password_session_and_the_id_token_says_mfa(client):
    enrol_totp(client, "bob")
    follow_to_client(
        client,
        start(client, AuthRequest(client_id="portal", redirect_uri="https://portal.example/cb")),
        username="alice",
    )
    groups(client, ("admins", "mfa", ["alice"]))
    secret = enrol_totp(client, "alice")
    request = AuthRequest()
    response = start(client, request)
    assert response.headers["location"].startswith("/login/totp?tx="), response.headers  # a step-up, not a code
    import pyotp

    now = at_step(client, 1)
    answer = post_code(client, response.headers["location"], code=pyotp.TOTP(secret).at(now))
    claims = id_token_of(client, request, to_client(client, answer))
    assert claims["acr"] == "mfa"


def test_a_group_minimum_of_phr_without_a_passkey_tells_the_user_and_returns_unmet(client):
    """No enrolment on the spot for phr: the page says to ask an administrator, and its
    only button gives the RP unmet_authentication_requirements."""
    groups(client, ("root", "phr", ["alice"]))
    request = AuthRequest()
    response = submit_login(client, start(client, request).headers["location"])
    assert response.status_code == 403, response.headers
    assert "enrolment link" in response.text
    back = way_back(response.text)
    assert back["error"] == ["unmet_authentication_requirements"] and back["state"] == [request.state]


def test_prompt_none_below_a_group_minimum_is_interaction_required(client):
    follow_to_client(
        client,
        start(client, AuthRequest(client_id="portal", redirect_uri="https://portal.example/cb")),
        username="alice",
    )
    groups(client, ("root", "phr", ["alice"]))
    response = start(client, AuthRequest(extra={"prompt": "none"}))
    assert query_of(response.headers["location"])["error"] == "interaction_required"


def test_client_credentials_is_not_checked_against_groups(staff_only):
    response = staff_only.post("/token", data={"grant_type": "client_credentials", "scope": "profile"}, auth=SHOP)
    assert response.status_code == 200


def test_a_clients_file_that_narrows_the_groups_ends_what_outsiders_hold_there_at_once(staff_only):
    """Defect pinned: a sync that narrowed an app's allowed_groups left the access tokens of
    users outside the new groups working until they expired (only their next refresh was
    refused). Now the sync withdraws the app from them as a removal from a group does."""
    tokens = tokens_for(staff_only)
    groups(staff_only, ("ops", None, []))
    services = staff_only.app.state.services
    configs = [
        dataclasses.replace(c, allowed_groups=("ops",)) if c.client_id == "shop" else c
        for c in parse_clients_toml(_toml_with_inline_jwks())
    ]
    with services.sessions.begin() as db:
        report = sync_clients(db, services.keyring, configs)
    services.oidc.clients.reload()
    assert report.withdrawn == (("alice", "shop"),)
    assert [e.clients for e in report.ended] == [("shop",)]
    userinfo = staff_only.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert userinfo.status_code == 401
    assert audit_kinds(staff_only, "access.withdrawn")[-1].detail["reason"] == "allowed_groups_narrowed"
    # widening again takes nothing more away, and gives nothing back
    with services.sessions.begin() as db:
        again = sync_clients(
            db,
            services.keyring,
            [dataclasses.replace(c, allowed_groups=("ops", "staff")) if c.client_id == "shop" else c for c in configs],
        )
    assert again.withdrawn == ()
    assert refresh(staff_only, tokens["refresh_token"]).status_code == 400


def test_a_start_up_sync_that_withdraws_an_app_sends_the_back_channel_logouts(staff_only, settings, tmp_path):
    """Defect pinned: a clients file narrowed while idp was down was synced at start-up,
    which revoked the outsiders' tokens but never told the RP their sessions were over (only
    `idp clients sync` sent the logouts). Now the started server sends them."""
    from idp.app import create_app
    from idp.state.memory import MemoryStore
    from tests.support.loopback_http import answering, loopback_server, wait_until
    from tests.support.seed import CLIENTS_TOML

    tokens_for(staff_only)  # alice holds a session that signed in to Shop
    groups(staff_only, ("ops", None, []))
    with loopback_server(answering(200)) as rp:
        narrowed = CLIENTS_TOML.replace(
            'scope = "openid profile email offline_access"',
            'scope = "openid profile email offline_access"\n'
            'allowed_groups = ["ops"]\n'
            f'backchannel_logout_uri = "{rp.url("/backchannel-logout")}"',
            1,
        )
        clients_file = tmp_path / "clients.toml"
        clients_file.write_text(narrowed + _toml_with_inline_jwks().removeprefix(CLIENTS_TOML))
        restarted = create_app(
            dataclasses.replace(settings, clients_file=str(clients_file)), store=MemoryStore(), clock=None
        )
        with TestClient(restarted, base_url=ISSUER):
            assert wait_until(lambda: rp.connections >= 1), "no back-channel logout after the start-up sync"
        assert rp.heads and rp.heads[0].startswith("POST /backchannel-logout ")
    [delivered] = audit_kinds(staff_only, "logout.backchannel")
    assert (delivered.client_id, delivered.outcome) == ("shop", "success")
