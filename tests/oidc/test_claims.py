"""Claims (issue 17): the `groups` scope and claim (only the groups a client may see), the
OIDC Core §5.1 profile and phone claims an admin set, custom claims released only through
a scope the clients file declared and both the client's registration and its grant hold,
id_token_claims = "minimal", discovery, the consent page, and what it costs in SQL."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import delete, event, select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.clients_file import parse_clients_toml
from idp.clients_sync import sync_clients
from idp.db.models import Group, GroupMember, User
from idp.groups import add_group, add_members
from idp.users import UserChanges, update_user
from tests.support.rp import (
    AuthRequest,
    decode_id_token,
    follow_to_client,
    query_of,
    redeem,
    sign_in_and_get_code,
    start,
    submit_login,
)

SECRET = "claims-secret-0123456789abcdefghijklmnopqrstuvwxyz"
DEPARTMENT_SCOPE = """
[[scopes]]
name = "department"
claims = ["department", "cost_centre"]
description = "Your <department> & cost centre"
"""
HR = """
[[clients]]
client_id = "hr"
client_secret = "{secret}"
redirect_uris = ["https://hr.example/cb"]
grant_types = ["authorization_code", "refresh_token"]
scope = "{scope}"
allowed_groups = ["staff", "admins"]
"""
OTHERS = f"""
[[clients]]
client_id = "dir"
client_secret = "{SECRET}"
redirect_uris = ["https://dir.example/cb"]
scope = "openid profile groups"
groups_claim = "all"

[[clients]]
client_id = "lean"
client_secret = "{SECRET}"
redirect_uris = ["https://lean.example/cb"]
scope = "openid profile email phone groups department"
allowed_groups = ["staff"]
id_token_claims = "minimal"

[[clients]]
client_id = "plain"
client_secret = "{SECRET}"
redirect_uris = ["https://plain.example/cb"]
scope = "openid profile"
"""
HR_SCOPE = "openid profile email phone groups department offline_access"
ATTRIBUTES = (
    ("given_name", "Alice"),
    ("family_name", "Liddell"),
    ("locale", "en-GB"),
    ("zoneinfo", "Europe/London"),
    ("picture", "https://cdn.example/alice.png"),
    ("phone_number", "+441632960001"),
    ("phone_number_verified", "yes"),
    ("department", "Looking Glass"),
    ("cost_centre", "CC-42"),
)


def register(app: Starlette, hr_scope: str = HR_SCOPE) -> None:
    text = DEPARTMENT_SCOPE + HR.format(secret=SECRET, scope=hr_scope) + OTHERS
    services = app.state.services
    with services.sessions.begin() as db:
        sync_clients(db, services.keyring, parse_clients_toml(text, source="test"))
    services.oidc.clients.reload()  # what the background refresher does within seconds


@pytest.fixture
def world(app: Starlette) -> Starlette:
    """alice is in staff and ops (not admins) and has every attribute above."""
    with app.state.services.sessions.begin() as db:
        for name in ("staff", "admins", "ops"):
            add_group(db, name)
    register(app)  # allowed_groups must name groups that exist
    with app.state.services.sessions.begin() as db:
        add_members(db, "staff", ["alice"])
        add_members(db, "ops", ["alice"])
        update_user(db, "alice", UserChanges(attributes=ATTRIBUTES))
    return app


def request_for(client_id: str, scope: str) -> AuthRequest:
    return AuthRequest(client_id=client_id, redirect_uri=f"https://{client_id}.example/cb", scope=scope)


def tokens(client: TestClient, client_id: str, scope: str) -> dict[str, Any]:
    request, code = sign_in_and_get_code(client, request_for(client_id, scope))
    response = redeem(client, request, code, auth=(client_id, SECRET))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def userinfo(client: TestClient, issued: dict[str, Any]) -> dict[str, Any]:
    response = client.get("/userinfo", headers={"authorization": f"Bearer {issued['access_token']}"})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def released(client: TestClient, client_id: str, scope: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ID token claims, userinfo) for one sign-in."""
    issued = tokens(client, client_id, scope)
    return decode_id_token(client, issued["id_token"]), userinfo(client, issued)


def refreshed(client: TestClient, refresh_token: str, client_id: str = "hr") -> dict[str, Any]:
    response = client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token}, auth=(client_id, SECRET)
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# --- groups ------------------------------------------------------------------------------------


def test_the_groups_claim_lists_only_the_allowed_groups_the_user_is_in(world: Starlette, client: TestClient) -> None:
    id_token, info = released(client, "hr", "openid groups")
    assert id_token["groups"] == info["groups"] == ["staff"]  # not ops: hr may not see it


def test_groups_claim_all_lists_every_group_of_the_user(world: Starlette, client: TestClient) -> None:
    id_token, info = released(client, "dir", "openid groups")
    assert id_token["groups"] == info["groups"] == ["ops", "staff"]


@pytest.mark.parametrize("client_id", ["hr", "dir"])
def test_without_the_groups_scope_there_is_no_groups_claim(
    world: Starlette, client: TestClient, client_id: str
) -> None:
    id_token, info = released(client, client_id, "openid profile")
    assert "groups" not in id_token and "groups" not in info


def test_refresh_and_userinfo_carry_the_groups_of_the_moment(world: Starlette, client: TestClient) -> None:
    issued = tokens(client, "hr", "openid groups offline_access")
    with world.state.services.sessions.begin() as db:
        add_members(db, "admins", ["alice"])

    first = refreshed(client, issued["refresh_token"])
    assert decode_id_token(client, first["id_token"])["groups"] == ["admins", "staff"]
    assert userinfo(client, issued)["groups"] == ["admins", "staff"]  # the old access token too: userinfo reads now

    with world.state.services.sessions.begin() as db:
        alice = db.scalar(select(User.id).where(User.username == "alice"))
        staff = db.scalar(select(Group.id).where(Group.name == "staff"))
        db.execute(delete(GroupMember).where(GroupMember.user_id == alice, GroupMember.group_id == staff))

    second = refreshed(client, first["refresh_token"])
    assert decode_id_token(client, second["id_token"])["groups"] == ["admins"]
    assert userinfo(client, second)["groups"] == ["admins"]


# --- profile and phone -------------------------------------------------------------------------

PROFILE = {
    "given_name": "Alice",
    "family_name": "Liddell",
    "locale": "en-GB",
    "zoneinfo": "Europe/London",
    "picture": "https://cdn.example/alice.png",
}
PHONE = {"phone_number": "+441632960001", "phone_number_verified": True}


@pytest.mark.parametrize(
    ("scope", "present", "absent"),
    [
        pytest.param("openid profile", PROFILE, PHONE, id="profile releases the profile claims only"),
        pytest.param("openid phone", PHONE, PROFILE, id="phone releases the number and its verification"),
        pytest.param("openid profile phone", {**PROFILE, **PHONE}, {}, id="both"),
        pytest.param("openid email", {}, {**PROFILE, **PHONE}, id="neither"),
    ],
)
def test_profile_and_phone_claims_follow_their_scopes(
    world: Starlette, client: TestClient, scope: str, present: dict[str, Any], absent: dict[str, Any]
) -> None:
    for claims in released(client, "hr", scope):
        assert {k: claims.get(k) for k in present} == present
        assert not set(absent) & set(claims)
        assert "department" not in claims  # a custom claim needs its own scope


def test_an_unverified_number_is_released_as_unverified(world: Starlette, client: TestClient) -> None:
    with world.state.services.sessions.begin() as db:
        update_user(db, "alice", UserChanges(attributes=(("phone_number", "+441632960002"),)))
    for claims in released(client, "hr", "openid phone"):
        assert (claims["phone_number"], claims["phone_number_verified"]) == ("+441632960002", False)


# --- custom claims -----------------------------------------------------------------------------

DEPARTMENT = {"department": "Looking Glass", "cost_centre": "CC-42"}


def test_a_custom_claim_is_released_when_registration_and_grant_both_hold_its_scope(
    world: Starlette, client: TestClient
) -> None:
    for claims in released(client, "hr", "openid department"):
        assert {k: claims.get(k) for k in DEPARTMENT} == DEPARTMENT


def test_a_custom_claim_is_not_released_when_the_grant_lacks_its_scope(world: Starlette, client: TestClient) -> None:
    for claims in released(client, "hr", "openid profile"):
        assert not set(DEPARTMENT) & set(claims)


def test_a_custom_scope_the_client_did_not_register_is_not_granted(world: Starlette, client: TestClient) -> None:
    issued = tokens(client, "plain", "openid profile department")
    assert issued["scope"] == "openid profile"
    for claims in (decode_id_token(client, issued["id_token"]), userinfo(client, issued)):
        assert not set(DEPARTMENT) & set(claims)


def test_a_custom_claim_stops_once_the_registration_drops_its_scope(world: Starlette, client: TestClient) -> None:
    issued = tokens(client, "hr", "openid department offline_access")
    register(world, hr_scope="openid profile offline_access")  # the admin narrowed hr since

    again = refreshed(client, issued["refresh_token"])
    for claims in (userinfo(client, issued), decode_id_token(client, again["id_token"]), userinfo(client, again)):
        assert not set(DEPARTMENT) & set(claims)


# --- id_token_claims = "minimal" ---------------------------------------------------------------


def test_minimal_id_tokens_leave_the_scope_claims_to_userinfo(world: Starlette, client: TestClient) -> None:
    id_token, info = released(client, "lean", "openid profile email phone groups department")

    assert not {"preferred_username", "email", "given_name", "phone_number", "groups", "department"} & set(id_token)
    assert id_token["sub"] == info["sub"] and {"acr", "amr", "auth_time", "nonce"} <= set(id_token)
    assert info["preferred_username"] == "alice" and info["email"] == "alice@example.com"
    assert (info["given_name"], info["phone_number"], info["groups"], info["department"]) == (
        "Alice",
        "+441632960001",
        ["staff"],
        "Looking Glass",
    )


# --- discovery ---------------------------------------------------------------------------------


def test_discovery_lists_the_scopes_and_claims_idp_releases(world: Starlette, client: TestClient) -> None:
    metadata = client.get("/.well-known/openid-configuration").json()

    assert metadata["scopes_supported"] == [
        "openid",
        "profile",
        "email",
        "phone",
        "groups",
        "offline_access",
        "department",
    ]
    claims = set(metadata["claims_supported"])
    assert {"sub", "iss", "acr", "amr", "sid", "name", "email_verified", "updated_at"} <= claims
    assert {"given_name", "family_name", "locale", "zoneinfo", "picture", "birthdate"} <= claims
    assert {"phone_number", "phone_number_verified", "groups", "department", "cost_centre"} <= claims
    assert "address" not in claims and len(claims) == len(metadata["claims_supported"])


def test_discovery_follows_the_registered_scopes(world: Starlette, client: TestClient) -> None:
    with world.state.services.sessions.begin() as db:
        sync_clients(db, world.state.services.keyring, parse_clients_toml(OTHERS.replace(" department", "")))
    world.state.services.oidc.clients.reload()

    metadata = client.get("/.well-known/openid-configuration").json()
    assert "department" not in metadata["scopes_supported"] and "cost_centre" not in metadata["claims_supported"]


# --- consent -----------------------------------------------------------------------------------


def consent_items(client: TestClient, request: AuthRequest, username: str = "alice") -> list[str]:
    response = start(client, request)
    for _ in range(4):
        location = response.headers["location"]
        if location.startswith("/consent"):
            page = client.get(location)
            assert page.status_code == 200
            items = re.findall(r"<li>(.*?)</li>", page.text, re.S)
            return [html.unescape(re.sub(r"<[^>]+>", "", item)) for item in items] + [page.text]
        if location.startswith("/login"):
            response = submit_login(client, location, username=username)
        else:
            response = client.get(location, follow_redirects=False)
    raise AssertionError("no consent page")


def test_the_consent_page_lists_the_groups_and_claims_to_be_shared(world: Starlette, client: TestClient) -> None:
    *items, page = consent_items(client, request_for("hr", "openid groups department phone unknown"))

    assert items == [
        "Sign you in with your account",
        "See that you are in these groups: staff",
        "Your <department> & cost centre: department, cost_centre",
        "See your phone number",
    ]
    assert "Your &lt;department&gt; &amp; cost centre" in page  # escaped, never markup
    assert "ops" not in items[1]


def test_the_consent_page_says_when_the_user_is_in_none_of_the_groups(world: Starlette, client: TestClient) -> None:
    *items, _ = consent_items(client, request_for("dir", "openid groups"), username="bob")  # bob is in no group
    assert items == ["Sign you in with your account", "See that you are in none of its groups"]


def test_consent_then_tokens_carry_what_the_page_listed(world: Starlette, client: TestClient) -> None:
    request = request_for("hr", "openid groups department")
    location = follow_to_client(client, start(client, request))
    response = redeem(client, request, query_of(location)["code"], auth=("hr", SECRET))
    claims = decode_id_token(client, response.json()["id_token"])
    assert (claims["groups"], claims["department"], claims["cost_centre"]) == (["staff"], "Looking Glass", "CC-42")


# --- what it costs ------------------------------------------------------------------------------


@contextmanager
def counted(app: Starlette) -> Iterator[list[str]]:
    engine = app.state.services.engine
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def redemption_and_userinfo_statements(app: Starlette, client: TestClient, scope: str) -> tuple[int, int]:
    request, code = sign_in_and_get_code(client, request_for("hr", scope))
    with counted(app) as at_token:
        issued = redeem(client, request, code, auth=("hr", SECRET)).json()
    with counted(app) as at_userinfo:
        userinfo(client, issued)
    return len(at_token), len(at_userinfo)


def test_the_groups_claim_costs_at_most_one_statement_and_other_claims_none(
    world: Starlette, client: TestClient
) -> None:
    client.get("/jwks")  # keys and clients loaded: count steady-state requests
    without = redemption_and_userinfo_statements(world, client, "openid profile phone department")
    with_groups = redemption_and_userinfo_statements(world, client, "openid profile phone department groups")

    assert with_groups[0] - without[0] <= 1
    assert without[1] == 1 and with_groups[1] == 2  # userinfo: one query, and the groups only when released
