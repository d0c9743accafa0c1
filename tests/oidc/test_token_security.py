"""Security decisions at the token endpoint: single-use codes, refresh rotation with reuse
detection, PKCE, redirect_uri binding, client authentication (RFC 6749, RFC 7636,
RFC 7523, RFC 9700 §4.14)."""

from __future__ import annotations

import time
import uuid

import pytest
from joserfc import jwt

from tests.support.rp import (
    SHOP,
    AuthRequest,
    redeem,
    refresh,
    sign_in_and_get_code,
    start,
    tokens_for,
)
from tests.support.seed import RP_KEY


def introspect(client, token, auth=SHOP):
    return client.post("/introspect", data={"token": token}, auth=auth).json()


def test_authorization_code_reuse_fails_and_revokes_issued_tokens(client):
    request, code = sign_in_and_get_code(client)
    first = redeem(client, request, code).json()
    assert introspect(client, first["access_token"])["active"] is True
    second = redeem(client, request, code)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
    assert introspect(client, first["access_token"])["active"] is False
    assert refresh(client, first["refresh_token"]).json()["error"] == "invalid_grant"


def test_refresh_rotation_issues_a_new_token_and_reuse_revokes_the_family(client):
    tokens = tokens_for(client)
    rotated = refresh(client, tokens["refresh_token"]).json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    replay = refresh(client, tokens["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert refresh(client, rotated["refresh_token"]).json()["error"] == "invalid_grant"
    assert introspect(client, rotated["access_token"])["active"] is False


def test_refresh_grace_period_gives_a_raced_request_the_same_successor(settings, clock):
    from dataclasses import replace

    from starlette.testclient import TestClient

    from idp.app import create_app
    from idp.state.memory import MemoryStore
    from tests.support.seed import seed

    app = create_app(replace(settings, refresh_grace_seconds=5), store=MemoryStore(), clock=clock)
    seed(app.state.services)
    with TestClient(app, base_url="http://localhost:8000") as client:
        tokens = tokens_for(client)
        first = refresh(client, tokens["refresh_token"]).json()
        raced = refresh(client, tokens["refresh_token"]).json()
        assert raced["refresh_token"] == first["refresh_token"]
        assert refresh(client, first["refresh_token"]).status_code == 200


def test_refresh_token_has_an_absolute_lifetime(client, clock):
    from sqlalchemy import update

    from idp.db.models import RefreshToken

    tokens = tokens_for(client)
    with client.app.state.services.sessions.begin() as db:
        db.execute(update(RefreshToken).values(family_expires_at=clock.now()))
    assert refresh(client, tokens["refresh_token"]).json()["error"] == "invalid_grant"


def test_refresh_token_of_another_client_is_refused(client):
    tokens = tokens_for(client)
    response = client.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": "portal",
            "client_secret": SHOP[1] + "-portal",
        },
    )
    assert response.json()["error"] in ("invalid_grant", "unauthorized_client")


@pytest.mark.parametrize(
    "verifier",
    [
        pytest.param(None, id="refuses a missing code_verifier"),
        pytest.param("x" * 64, id="refuses a wrong code_verifier"),
    ],
)
def test_pkce_verifier_must_match(client, verifier):
    request, code = sign_in_and_get_code(client)
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": request.redirect_uri}
    if verifier:
        data["code_verifier"] = verifier
    response = client.post("/token", data=data, auth=SHOP)
    assert response.status_code == 400 and response.json()["error"] in ("invalid_grant", "invalid_request")


@pytest.mark.parametrize(
    "extra, error",
    [
        pytest.param({"code_challenge_method": "plain"}, "invalid_request", id="refuses code_challenge_method=plain"),
        pytest.param(
            {"code_challenge": None, "code_challenge_method": None},
            "invalid_request",
            id="refuses a request without PKCE",
        ),
        pytest.param(
            {"code_challenge_method": None},
            "invalid_request",
            id="refuses a challenge without a method (plain by default)",
        ),
    ],
)
def test_pkce_downgrade_is_refused_at_the_authorization_endpoint(client, extra, error):
    from tests.support.rp import query_of

    response = start(client, AuthRequest(extra=extra))
    assert query_of(response.headers["location"])["error"] == error


def test_public_client_must_use_pkce_and_cannot_use_a_secret(client):
    request = AuthRequest(client_id="spa", redirect_uri="http://localhost:5173/callback", scope="openid")
    request, code = sign_in_and_get_code(client, request)
    ok = redeem(client, request, code, auth=None)
    assert ok.status_code == 200 and "id_token" in ok.json()


def test_redirect_uri_at_token_endpoint_must_match_the_authorization_request(client):
    request, code = sign_in_and_get_code(client)
    response = redeem(client, request, code, redirect_uri="https://shop.example/other")
    assert response.json()["error"] == "invalid_grant"


def test_code_issued_to_one_client_cannot_be_redeemed_by_another(client):
    request, code = sign_in_and_get_code(client)
    response = client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": request.redirect_uri,
            "code_verifier": request.verifier,
            "client_id": "portal",
            "client_secret": SHOP[1] + "-portal",
        },
    )
    assert response.json()["error"] in ("invalid_grant", "unauthorized_client")


def test_expired_code_is_refused(client, clock):
    request, code = sign_in_and_get_code(client)
    clock.advance(client.app.state.services.settings.code_ttl_seconds)
    assert redeem(client, request, code).json()["error"] == "invalid_grant"


def test_wrong_client_secret_is_refused(client):
    response = client.post("/token", data={"grant_type": "client_credentials"}, auth=("shop", "wrong-" + SHOP[1]))
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_client_credentials_grant_issues_an_access_token_without_refresh(client):
    response = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"}, auth=SHOP)
    body = response.json()
    assert response.status_code == 200 and body["access_token"] and "refresh_token" not in body
    assert introspect(client, body["access_token"])["active"] is True


def _assertion(audience="http://localhost:8000", jti=None, key=RP_KEY):  # the issuer
    now = int(time.time())  # joserfc checks an assertion against the wall clock, not the app's
    claims = {
        "iss": "backend",
        "sub": "backend",
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": jti or uuid.uuid4().hex,
    }
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)


def _private_key_jwt(client, assertion):
    return client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "scope": "profile",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )


def test_private_key_jwt_authenticates_and_refuses_a_replayed_assertion(client):
    assertion = _assertion()
    assert _private_key_jwt(client, assertion).status_code == 200
    replay = _private_key_jwt(client, assertion)
    assert replay.status_code in (400, 401) and replay.json()["error"] == "invalid_client"


def test_private_key_jwt_refuses_a_foreign_key_or_audience(client):
    from joserfc.jwk import RSAKey

    other = RSAKey.generate_key(2048, parameters={"kid": RP_KEY.kid})
    assert _private_key_jwt(client, _assertion(key=other)).json()["error"] == "invalid_client"
    assert (
        _private_key_jwt(client, _assertion(audience="https://elsewhere.example")).json()["error"] == "invalid_client"
    )


def test_revoking_a_refresh_token_revokes_its_access_tokens(client):
    tokens = tokens_for(client)
    assert (
        client.post(
            "/revoke", data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"}, auth=SHOP
        ).status_code
        == 200
    )
    assert introspect(client, tokens["access_token"])["active"] is False
    assert refresh(client, tokens["refresh_token"]).json()["error"] == "invalid_grant"


def test_introspection_shows_only_the_callers_own_tokens(client):
    tokens = tokens_for(client)
    mine = introspect(client, tokens["access_token"])
    assert mine["active"] is True and mine["client_id"] == "shop" and mine["sub"]
    other = client.post(
        "/introspect",
        data={"token": tokens["access_token"], "client_id": "portal", "client_secret": SHOP[1] + "-portal"},
    )
    assert other.json() == {"active": False}


def test_disabled_user_loses_refresh_and_userinfo(client):
    from idp.users import disable_user

    tokens = tokens_for(client)
    with client.app.state.services.sessions.begin() as db:
        disable_user(db, "alice")
    assert refresh(client, tokens["refresh_token"]).json()["error"] == "invalid_grant"
    assert client.get("/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"}).status_code == 401


def test_a_wrong_code_verifier_does_not_let_a_code_thief_spoil_the_real_redemption(client):
    request, code = sign_in_and_get_code(client)
    wrong = redeem(client, request, code, code_verifier="y" * 64)
    assert wrong.json()["error"] == "invalid_grant"
    assert redeem(client, request, code).status_code == 200


def test_scope_values_the_client_may_not_have_are_dropped_and_the_token_says_what_was_granted(client):
    """OIDC Core §3.1.2.1: values not understood are ignored (spa has no offline_access;
    groups is unknown); the token response names the granted scope."""
    from tests.support.rp import follow_to_client, query_of

    request = AuthRequest(
        client_id="spa", redirect_uri="http://localhost:5173/callback", scope="openid profile groups offline_access"
    )
    code = query_of(follow_to_client(client, start(client, request)))["code"]
    tokens = redeem(client, request, code, auth=None)
    assert tokens.status_code == 200 and tokens.json()["scope"] == "openid profile"


def test_refresh_asking_for_more_than_the_grant_is_invalid_scope_never_intersected(client):
    """RFC 6749 §6: at refresh the scope may only narrow."""
    tokens = tokens_for(client, AuthRequest(scope="openid offline_access"))
    wider = client.post(
        "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "scope": "openid profile offline_access",
        },
        auth=SHOP,
    )
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
