"""Authorization code flow (RFC 6749 §4.1, OIDC Core §3.1) through the hosted pages."""

from __future__ import annotations

from tests.support.rp import (
    SHOP,
    AuthRequest,
    decode_id_token,
    follow_to_client,
    query_of,
    redeem,
    refresh,
    sign_in_and_get_code,
    start,
    tokens_for,
)


def test_code_flow_issues_id_access_and_refresh_tokens(client, clock):
    request, code = sign_in_and_get_code(client)
    response = redeem(client, request, code)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["access_token"] and body["refresh_token"]
    claims = decode_id_token(client, body["id_token"])
    assert claims["iss"] == "http://localhost:8000"
    assert claims["aud"] == "shop"
    assert claims["nonce"] == request.nonce
    assert claims["acr"] == "pwd" and claims["amr"] == ["pwd"]
    assert claims["auth_time"] == clock.time()  # the clock stood still since the sign-in
    assert claims["sid"] and claims["at_hash"]
    assert claims["sub"] != "alice" and len(claims["sub"]) >= 16


def test_every_authorization_response_carries_the_issuer(client):
    request = AuthRequest()
    location = follow_to_client(client, start(client, request))
    params = query_of(location)
    assert params["iss"] == "http://localhost:8000" and params["state"] == request.state
    denied = follow_to_client(client, start(client, AuthRequest(extra={"prompt": "consent"})), consent="deny")
    assert query_of(denied)["error"] == "access_denied"
    assert query_of(denied)["iss"] == "http://localhost:8000"


def test_userinfo_returns_the_claims_of_the_scope(client):
    tokens = tokens_for(client)
    for call in (lambda h: client.get("/userinfo", headers=h), lambda h: client.post("/userinfo", headers=h)):
        info = call({"authorization": f"Bearer {tokens['access_token']}"}).json()
        assert info["email"] == "alice@example.com" and info["preferred_username"] == "alice"
    bad = client.get("/userinfo", headers={"authorization": "Bearer nope-nope-nope-nope-nope"})
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]


def test_single_sign_on_skips_login_and_remembered_consent(client):
    sign_in_and_get_code(client)
    second = start(client, AuthRequest())
    assert second.headers["location"].startswith("https://shop.example/callback?code=")


def test_prompt_login_asks_again_and_then_finishes(client):
    sign_in_and_get_code(client)
    response = start(client, AuthRequest(extra={"prompt": "login"}))
    assert response.headers["location"].startswith("/login")
    location = follow_to_client(client, response)
    assert "code" in query_of(location)


def test_max_age_zero_forces_reauthentication(client, clock):
    sign_in_and_get_code(client)
    clock.advance(1)
    response = start(client, AuthRequest(extra={"max_age": "0"}))
    assert response.headers["location"].startswith("/login")


def test_max_age_zero_forces_reauthentication_within_the_same_second(client):
    """OIDC Core §3.1.2.1: max_age=0 is equivalent to prompt=login, however little time has
    passed since the sign-in (no time at all, on the test clock)."""
    sign_in_and_get_code(client)
    response = start(client, AuthRequest(extra={"max_age": "0"}))
    assert response.headers["location"].startswith("/login")
    location = follow_to_client(client, response)  # and, once signed in again, no loop
    assert "code" in query_of(location)


def test_prompt_none_without_session_returns_login_required(client):
    response = start(client, AuthRequest(extra={"prompt": "none"}))
    params = query_of(response.headers["location"])
    assert params["error"] == "login_required" and params["iss"] == "http://localhost:8000"


def test_prompt_none_without_consent_returns_consent_required(client):
    sign_in_and_get_code(client)
    response = start(
        client,
        AuthRequest(
            scope="openid", client_id="spa", redirect_uri="http://localhost:5173/callback", extra={"prompt": "none"}
        ),
    )
    assert query_of(response.headers["location"])["error"] == "consent_required"


def test_first_party_client_skips_consent(client):
    request, code = sign_in_and_get_code(
        client, AuthRequest(client_id="portal", redirect_uri="https://portal.example/cb", scope="openid email")
    )
    response = redeem(client, request, code, auth=None, client_secret=SHOP[1] + "-portal")
    assert response.status_code == 200, response.text


def test_login_hint_prefills_the_username(client):
    response = start(client, AuthRequest(extra={"login_hint": "bob"}))
    page = client.get(response.headers["location"])
    assert 'value="bob"' in page.text


def test_refresh_returns_a_new_id_token_with_the_original_login(client):
    tokens = tokens_for(client)
    first = decode_id_token(client, tokens["id_token"])
    refreshed = refresh(client, tokens["refresh_token"]).json()
    again = decode_id_token(client, refreshed["id_token"])
    assert again["sub"] == first["sub"] and again["auth_time"] == first["auth_time"] and "nonce" not in again
