"""CORS on the endpoints a browser app calls (issue 14): a preflight for any origin some
client registered, the origin echoed on the real answer only when it belongs to the client
that authenticated (userinfo: the token's client), never credentials, always Vary: Origin,
and no CORS at all on introspection. Discovery and JWKS stay public (`*`)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from idp.db.models import Client
from tests.support.rp import SHOP, AuthRequest, redeem, sign_in_and_get_code, tokens_for

SPA_ORIGIN = "http://localhost:5173"  # the seeded public client "spa" redirects there
PARTNER_ORIGIN = "https://partner.example"


def preflight(client, path: str, origin: str, method: str = "POST"):  # type: ignore[no-untyped-def]
    return client.options(
        path,
        headers={
            "origin": origin,
            "access-control-request-method": method,
            "access-control-request-headers": "authorization, content-type",
        },
    )


def allow_shop_origin(client, origin: str) -> None:  # type: ignore[no-untyped-def]
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "shop"))
        db.execute(
            update(Client).where(Client.id == row.id).values(config={**row.config, "allowed_cors_origins": [origin]})
        )
    services.oidc.clients.reload()


def spa_tokens(client):  # type: ignore[no-untyped-def]
    """The SPA's authorization request, signed in: (request, code)."""
    return sign_in_and_get_code(
        client, AuthRequest(client_id="spa", redirect_uri=f"{SPA_ORIGIN}/callback", scope="openid profile email")
    )


@pytest.mark.parametrize("path,methods", [("/token", "POST"), ("/revoke", "POST"), ("/userinfo", "GET, POST")])
def test_a_preflight_from_a_public_clients_redirect_origin_is_answered(client, path, methods):
    response = preflight(client, path, SPA_ORIGIN, methods.split(", ")[0])
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == SPA_ORIGIN
    assert response.headers["access-control-allow-methods"] == methods
    assert "authorization" in response.headers["access-control-allow-headers"]
    assert response.headers["vary"] == "Origin" and "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "https://shop.example", "null", "http://localhost:5174", "HTTP://LOCALHOST:5173"],
    ids=repr,
)
def test_a_preflight_from_an_unregistered_origin_is_refused_clearly(client, origin):
    """shop is confidential: its redirect origin is not a CORS origin unless listed."""
    response = preflight(client, "/token", origin)
    assert response.status_code == 403 and response.json()["error"] == "invalid_request"
    assert "not registered" in response.json()["error_description"]
    assert "access-control-allow-origin" not in response.headers and response.headers["vary"] == "Origin"


def test_a_preflight_for_another_method_is_refused(client):
    assert preflight(client, "/token", SPA_ORIGIN, "PUT").status_code == 403


def test_introspection_has_no_cors(client):
    assert preflight(client, "/introspect", SPA_ORIGIN).status_code == 405


def test_the_spa_reads_its_token_answer_and_errors_but_not_another_clients(client):
    request, code = spa_tokens(client)
    headers = {"origin": SPA_ORIGIN}
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": request.redirect_uri,
        "code_verifier": request.verifier,
        "client_id": "spa",
    }
    answer = client.post("/token", data=data, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == SPA_ORIGIN and answer.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in answer.headers
    replayed = client.post("/token", data=data, headers=headers)  # an error the SPA must be able to read
    assert replayed.status_code == 400 and replayed.headers["access-control-allow-origin"] == SPA_ORIGIN

    # shop's answer is not readable by the SPA's page, even though the SPA's origin is registered
    shop_request, shop_code = sign_in_and_get_code(client)
    shop = redeem(client, shop_request, shop_code)
    assert shop.status_code == 200
    other = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": shop.json()["refresh_token"]},
        auth=SHOP,
        headers=headers,
    )
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers and other.headers["vary"] == "Origin"


def test_a_confidential_client_gets_cors_only_for_its_listed_origins(client):
    allow_shop_origin(client, PARTNER_ORIGIN)
    assert preflight(client, "/token", PARTNER_ORIGIN).status_code == 204
    assert preflight(client, "/token", "https://shop.example").status_code == 403
    request, code = sign_in_and_get_code(client)
    answer = redeem(client, request, code)
    assert answer.status_code == 200
    refreshed = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": answer.json()["refresh_token"]},
        auth=SHOP,
        headers={"origin": PARTNER_ORIGIN},
    )
    assert refreshed.status_code == 200 and refreshed.headers["access-control-allow-origin"] == PARTNER_ORIGIN
    as_spa = client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": refreshed.json()["refresh_token"]},
        auth=SHOP,
        headers={"origin": SPA_ORIGIN},
    )
    assert "access-control-allow-origin" not in as_spa.headers  # the SPA's origin is the spa client's, not shop's


def test_userinfo_echoes_the_origin_of_the_tokens_client_only(client):
    request, code = spa_tokens(client)
    spa = client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": "spa",
            "redirect_uri": request.redirect_uri,
            "code_verifier": request.verifier,
        },
    ).json()
    bearer = {"authorization": f"Bearer {spa['access_token']}"}
    mine = client.get("/userinfo", headers={**bearer, "origin": SPA_ORIGIN})
    assert mine.status_code == 200 and mine.headers["access-control-allow-origin"] == SPA_ORIGIN
    shop_token = tokens_for(client)["access_token"]
    theirs = client.get("/userinfo", headers={"authorization": f"Bearer {shop_token}", "origin": SPA_ORIGIN})
    assert theirs.status_code == 200 and "access-control-allow-origin" not in theirs.headers
    invalid = client.get("/userinfo", headers={"authorization": "Bearer " + "x" * 40, "origin": SPA_ORIGIN})
    assert invalid.status_code == 401 and "access-control-allow-origin" not in invalid.headers
    assert invalid.headers["vary"] == "Origin"


def test_every_answer_varies_by_origin_even_without_one(client):
    assert client.post("/token", data={"grant_type": "client_credentials"}).headers["vary"] == "Origin"
    assert client.get("/userinfo").headers["vary"] == "Origin"


@pytest.mark.parametrize("path", ["/.well-known/openid-configuration", "/jwks"])
def test_discovery_and_jwks_stay_public(client, path):
    response = client.get(path, headers={"origin": "https://anyone.example"})
    assert response.headers["access-control-allow-origin"] == "*"
