"""SQL statements per token request, counted on the app's engine: the machine endpoints'
cost is mostly round trips to the database, so a security check that needs data must
find it in a query the request already makes (or on the revoking side), not add one.

The pinned numbers are today's; a change that lowers one lowers the pin with it. Counted
on SQLite and PostgreSQL alike: the statements are the same, only their dialect differs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from joserfc import jwt
from sqlalchemy import event

from tests.support.rp import SHOP, redeem, refresh, sign_in_and_get_code, tokens_for
from tests.support.seed import RP_KEY

ISSUER = "http://localhost:8000"

# BEGIN/COMMIT are not cursor executions; these are the SELECT/INSERT/UPDATE statements
# (a code: find it, claim it, the ORM flush of its used_at, the user, audit, access, refresh).
PINNED = {
    "authorization_code": 7,
    "refresh_token": 5,
    "client_credentials (secret)": 2,
    "client_credentials (private_key_jwt)": 2,
    "introspection": 1,
    "userinfo": 1,
}


@contextmanager
def counted(app) -> Iterator[list[str]]:
    engine = app.state.services.engine
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement.split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _assertion() -> str:
    now = int(time.time())
    claims = {"iss": "backend", "sub": "backend", "aud": ISSUER, "jti": uuid.uuid4().hex, "iat": now, "exp": now + 60}
    return jwt.encode({"alg": "RS256", "kid": RP_KEY.kid}, claims, RP_KEY)


def test_authorization_code_redemption(app, client):
    request, code = sign_in_and_get_code(client)
    with counted(app) as statements:
        assert redeem(client, request, code).status_code == 200
    assert len(statements) == PINNED["authorization_code"], statements


def test_refresh_with_rotation(app, client):
    tokens = tokens_for(client)
    with counted(app) as statements:
        assert refresh(client, tokens["refresh_token"]).status_code == 200
    assert len(statements) == PINNED["refresh_token"], statements


def test_client_credentials_with_a_secret(app, client):
    with counted(app) as statements:
        response = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"}, auth=SHOP)
    assert response.status_code == 200, response.text
    assert len(statements) == PINNED["client_credentials (secret)"], statements


def test_client_credentials_with_private_key_jwt(app, client):
    with counted(app) as statements:
        response = client.post(
            "/token",
            data={
                "grant_type": "client_credentials",
                "scope": "profile",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": _assertion(),
            },
        )
    assert response.status_code == 200, response.text
    assert len(statements) == PINNED["client_credentials (private_key_jwt)"], statements


def test_introspection(app, client):
    tokens = tokens_for(client)
    with counted(app) as statements:
        response = client.post("/introspect", data={"token": tokens["access_token"]}, auth=SHOP)
    assert response.json()["active"] is True
    assert len(statements) == PINNED["introspection"], statements


def test_userinfo(app, client):
    tokens = tokens_for(client)
    with counted(app) as statements:
        response = client.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert response.status_code == 200
    assert len(statements) == PINNED["userinfo"], statements


@pytest.fixture(autouse=True)
def _warm(client):
    """The first request of an app loads keys and clients; count steady-state requests."""
    client.get("/jwks")


def test_the_app_access_check_costs_a_refresh_one_statement_and_client_credentials_none(app, client):
    """Issue 17: allowed_groups is checked again at every refresh (one query for the user's
    groups, only for a client that has them), never for client_credentials (no user)."""
    from tests.oidc.test_app_access import groups, restrict

    groups(client, ("staff", None, ["alice"]))
    restrict(client, "shop", ["staff"])
    tokens = tokens_for(client)
    with counted(app) as statements:
        assert refresh(client, tokens["refresh_token"]).status_code == 200
    assert len(statements) == PINNED["refresh_token"] + 1, statements
    with counted(app) as statements:
        response = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"}, auth=SHOP)
    assert response.status_code == 200, response.text
    assert len(statements) == PINNED["client_credentials (secret)"], statements
