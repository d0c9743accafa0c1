"""Grants end whole (RFC 7009 §2.1, RFC 7662 §2.2, RFC 9700 §4.14.2): the refresh grace
period hands a rotated-out token's successor out once, and never after that successor was
rotated; introspection calls a rotated-out refresh token inactive; and whatever ends a
grant's refresh tokens (logout, password change, disable, reuse detection, /revoke) ends its
access tokens too, so userinfo and introspection refuse them at once.

Each test names the attack it stops."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.app import create_app
from idp.db.models import User
from idp.revocation import revoke_user_grants_at_client
from idp.settings import Settings
from idp.state.memory import MemoryStore
from tests.conftest import ISSUER
from tests.oidc.test_logout import run_admin_command
from tests.support.clock import ManualClock
from tests.support.rp import SHOP, AuthRequest, decode_id_token, form_value, redeem, refresh, sign_in_and_get_code
from tests.support.rp import tokens_for as _tokens_for
from tests.support.seed import PASSWORD, SHOP_SECRET, seed

GRACE_SECONDS = 5
ONLINE = "openid profile email"
OFFLINE = "openid profile email offline_access"
PORTAL = SHOP_SECRET + "-portal"  # a first-party client without the refresh_token grant


@pytest.fixture
def graced(settings: Settings, clock: ManualClock) -> Iterator[TestClient]:
    """An app with IDP_REFRESH_GRACE_SECONDS set."""
    app = create_app(
        dataclasses.replace(settings, refresh_grace_seconds=GRACE_SECONDS), store=MemoryStore(), clock=clock
    )
    seed(app.state.services)
    with TestClient(app, base_url=ISSUER) as client:
        yield client


def tokens_for(client: TestClient, scope: str = OFFLINE) -> dict[str, Any]:
    return _tokens_for(client, AuthRequest(scope=scope))


def introspect(client: TestClient, token: str, *, as_portal: bool = False) -> dict[str, Any]:
    if as_portal:  # client_secret_post
        response = client.post("/introspect", data={"token": token, "client_id": "portal", "client_secret": PORTAL})
    else:
        response = client.post("/introspect", data={"token": token}, auth=SHOP)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def userinfo_status(client: TestClient, access_token: str) -> int:
    return client.get("/userinfo", headers={"Authorization": f"Bearer {access_token}"}).status_code


def access_token_works(client: TestClient, access_token: str, *, of_portal: bool = False) -> bool:
    """What a resource server would be told, by userinfo and by introspection alike."""
    works = userinfo_status(client, access_token) == 200
    assert introspect(client, access_token, as_portal=of_portal)["active"] is works, (
        "userinfo and introspection disagree"
    )
    return works


def refused(response) -> bool:  # type: ignore[no-untyped-def]
    return response.status_code == 400 and response.json()["error"] == "invalid_grant"


# ---- the refresh grace period ------------------------------------------------------------------


def test_a_stolen_refresh_token_replayed_twice_in_the_grace_window_is_reuse_and_revokes_the_family(graced, clock):
    """Attack: a thief replays a rotated-out refresh token again and again inside the grace
    window, each time receiving the live successor and a fresh access token."""
    first = tokens_for(graced)
    rotated = refresh(graced, first["refresh_token"]).json()
    clock.advance(1)
    raced = refresh(graced, first["refresh_token"])  # the one racing request the window is for
    assert raced.status_code == 200 and raced.json()["refresh_token"] == rotated["refresh_token"]

    clock.advance(1)
    assert refused(refresh(graced, first["refresh_token"]))  # a second replay: reuse

    assert refused(refresh(graced, rotated["refresh_token"]))
    for tokens in (first, rotated, raced.json()):
        assert not access_token_works(graced, tokens["access_token"])


def test_a_replay_after_the_successor_was_rotated_is_reuse_even_within_the_grace_window(graced, clock):
    """Attack: the thief replays the old token after the real client already rotated its
    successor, and is handed that (already used) successor plus a new access token."""
    first = tokens_for(graced)
    second = refresh(graced, first["refresh_token"]).json()
    third = refresh(graced, second["refresh_token"]).json()
    clock.advance(1)

    assert refused(refresh(graced, first["refresh_token"]))

    assert refused(refresh(graced, third["refresh_token"]))
    assert not access_token_works(graced, third["access_token"])


def test_a_replay_after_the_grace_window_is_reuse(graced, clock):
    first = tokens_for(graced)
    rotated = refresh(graced, first["refresh_token"]).json()
    clock.advance(GRACE_SECONDS + 1)
    assert refused(refresh(graced, first["refresh_token"]))
    assert refused(refresh(graced, rotated["refresh_token"]))


# ---- introspection of refresh tokens -----------------------------------------------------------


def test_introspection_calls_a_rotated_out_refresh_token_inactive(client):
    """Attack: a client (or whoever holds its credentials) is told a stolen, rotated-out
    refresh token is active, though presenting it would be reuse."""
    first = tokens_for(client)
    rotated = refresh(client, first["refresh_token"]).json()
    assert introspect(client, first["refresh_token"]) == {"active": False}
    assert introspect(client, rotated["refresh_token"])["active"] is True


def test_a_rotated_out_refresh_token_is_inactive_once_its_grace_hand_out_is_spent(graced, clock):
    first = tokens_for(graced)
    rotated = refresh(graced, first["refresh_token"]).json()
    assert introspect(graced, first["refresh_token"])["active"] is True  # its one hand-out is still due
    assert refresh(graced, first["refresh_token"]).status_code == 200
    assert introspect(graced, first["refresh_token"]) == {"active": False}
    assert introspect(graced, rotated["refresh_token"])["active"] is True


def test_a_rotated_out_refresh_token_is_inactive_once_its_successor_was_rotated(graced):
    first = tokens_for(graced)
    second = refresh(graced, first["refresh_token"]).json()
    refresh(graced, second["refresh_token"])
    assert introspect(graced, first["refresh_token"]) == {"active": False}


# ---- access tokens die with their grant --------------------------------------------------------


def logout_with(client: TestClient, tokens: dict[str, Any]) -> None:
    response = client.get("/logout", params={"id_token_hint": tokens["id_token"]}, follow_redirects=False)
    assert response.status_code == 200 and "You are signed out" in response.text


def test_rp_initiated_logout_kills_the_access_tokens_of_the_sessions_grants(client):
    """Attack: an access token copied from a signed-in browser keeps reading the user's data
    for up to its lifetime after the user signed out."""
    online = tokens_for(client, ONLINE)
    assert access_token_works(client, online["access_token"])
    logout_with(client, online)
    assert not access_token_works(client, online["access_token"])
    assert refused(refresh(client, online["refresh_token"]))


def test_logout_spares_the_access_tokens_of_offline_access_grants(client):
    """Attack: as above, while the grant the user gave for use in their absence
    (offline_access) must keep working, access token and refresh token alike."""
    online = tokens_for(client, ONLINE)
    offline = tokens_for(client, OFFLINE)
    assert decode_id_token(client, online["id_token"])["sid"] == decode_id_token(client, offline["id_token"])["sid"]
    logout_with(client, online)
    assert not access_token_works(client, online["access_token"])
    assert access_token_works(client, offline["access_token"])
    assert refresh(client, offline["refresh_token"]).status_code == 200


def test_logout_kills_the_access_token_of_a_grant_without_refresh_token(client):
    """Attack: as above, at a client without the refresh_token grant: its access token had
    no refresh token to die with."""
    request = AuthRequest(client_id="portal", redirect_uri="https://portal.example/cb", scope=ONLINE)
    request, code = sign_in_and_get_code(client, request)
    tokens = redeem(client, request, code, auth=None, client_secret=PORTAL).json()
    assert "refresh_token" not in tokens and access_token_works(client, tokens["access_token"], of_portal=True)
    logout_with(client, tokens)
    assert not access_token_works(client, tokens["access_token"], of_portal=True)


def test_a_password_change_kills_every_access_token_of_the_user(client):
    """Attack: whoever stole the password (and an access token minted with it) keeps using
    the access token after the owner changed the password, offline_access grants included."""
    csrf = form_value(client.get("/login").text, "csrf_token")
    client.post("/login", data={"csrf_token": csrf, "username": "alice", "password": PASSWORD})
    online, offline = tokens_for(client, ONLINE), tokens_for(client, OFFLINE)
    response = client.post(
        "/account/password",
        data={
            "csrf_token": form_value(client.get("/account").text, "csrf_token"),
            "current_password": PASSWORD,
            "new_password": "plum tractor velvet orbit",
            "confirm_password": "plum tractor velvet orbit",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/account?done=password"
    for tokens in (online, offline):
        assert not access_token_works(client, tokens["access_token"])


def test_disabling_a_user_kills_their_access_tokens_for_good(client, settings):
    """Attack: disabling only hid the access tokens behind the disabled flag; enabling the
    account again (an admin's mistake undone) revived every stolen one."""
    online, offline = tokens_for(client, ONLINE), tokens_for(client, OFFLINE)
    done = run_admin_command(settings, "user", "disable", "alice")
    assert done.returncode == 0, done.stderr
    for tokens in (online, offline):
        assert not access_token_works(client, tokens["access_token"])
    with client.app.state.services.sessions.begin() as db:
        db.execute(update(User).where(User.username == "alice").values(disabled=False))  # `idp user enable`
    for tokens in (online, offline):
        assert not access_token_works(client, tokens["access_token"])


def test_refresh_token_reuse_kills_the_familys_access_tokens(client):
    """Attack: a thief's replay of a rotated-out refresh token is detected, yet the access
    tokens of the family (the thief's and the client's) stay valid."""
    first = tokens_for(client)
    rotated = refresh(client, first["refresh_token"]).json()
    assert refused(refresh(client, first["refresh_token"]))
    for tokens in (first, rotated):
        assert not access_token_works(client, tokens["access_token"])


def test_revoking_a_refresh_token_kills_its_grants_access_tokens(client):
    """Attack: an RP revokes a leaked refresh token at /revoke (RFC 7009 §2.1), but the
    access tokens of that grant stay valid."""
    first = tokens_for(client)
    rotated = refresh(client, first["refresh_token"]).json()
    other = tokens_for(client)
    response = client.post("/revoke", data={"token": rotated["refresh_token"]}, auth=SHOP)
    assert response.status_code == 200
    for tokens in (first, rotated):
        assert not access_token_works(client, tokens["access_token"])
    assert access_token_works(client, other["access_token"])  # another grant of the same user


def test_a_reused_code_kills_the_access_tokens_issued_from_it(client):
    """Attack: an authorization code intercepted and redeemed twice (RFC 6749 §4.1.2): what
    the first redemption issued must die, access tokens of later refreshes included."""
    request, code = sign_in_and_get_code(client, AuthRequest(scope=OFFLINE))
    first = redeem(client, request, code).json()
    rotated = refresh(client, first["refresh_token"]).json()
    assert refused(redeem(client, request, code))
    for tokens in (first, rotated):
        assert not access_token_works(client, tokens["access_token"])


def test_revoking_a_users_grants_at_one_client_spares_other_users_and_clients(client, app: Starlette):
    """Attack: a user removed from an app's allowed groups keeps the app's tokens, offline
    ones included, until they expire."""
    online, offline = tokens_for(client, ONLINE), tokens_for(client, OFFLINE)
    with app.state.services.sessions.begin() as db:
        alice = db.scalar(select(User.id).where(User.username == "alice"))
        bob = db.scalar(select(User.id).where(User.username == "bob"))
        revoke_user_grants_at_client(db, alice, "portal")
        revoke_user_grants_at_client(db, bob, "shop")
    assert access_token_works(client, offline["access_token"])
    with app.state.services.sessions.begin() as db:
        revoke_user_grants_at_client(db, alice, "shop")
    for tokens in (online, offline):
        assert not access_token_works(client, tokens["access_token"])
        assert refused(refresh(client, tokens["refresh_token"]))


def test_a_narrowing_refresh_keeps_the_grants_scope_for_the_next_refresh(client):
    """RFC 6749 §6: the new refresh token's scope is identical to the one presented; a
    refresh that asked for less narrows only its access token (defect pinned: the grant
    shrank for good, and an offline_access grant lost offline_access to one narrow call)."""
    tokens = _tokens_for(client)
    narrow = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "scope": "openid"},
        auth=SHOP,
    ).json()
    assert narrow["scope"] == "openid"
    again = refresh(client, narrow["refresh_token"]).json()
    assert set(again["scope"].split()) == {"openid", "profile", "email", "offline_access"}
