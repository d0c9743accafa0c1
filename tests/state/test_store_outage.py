"""When the state store cannot be reached: the hosted login says so with a 503 page and
checks nothing without it (fail closed); the token, userinfo, discovery and JWKS endpoints
keep serving; everything works again once the store answers. The same behaviour against a
real Redis that is stopped and restarted is in tests/scale/test_redis_outage.py; this one
switches an in-process store off, so every path can be covered quickly."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest
from joserfc import jwt
from starlette.testclient import TestClient

from idp.app import create_app
from idp.state.memory import MemoryStore
from idp.state.store import StoreUnavailable
from tests.conftest import ISSUER
from tests.support.rp import (
    SHOP,
    AuthRequest,
    form_value,
    start,
    submit_login,
    tokens_for,
)
from tests.support.seed import RP_KEY, seed

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class SwitchableStore(MemoryStore):
    """A MemoryStore that can be made to fail like an unreachable Redis."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("state store unreachable (test)")

    def get(self, key):  # type: ignore[no-untyped-def]
        self._check()
        return super().get(key)

    def set(self, key, value, *, ttl_seconds):  # type: ignore[no-untyped-def]
        self._check()
        return super().set(key, value, ttl_seconds=ttl_seconds)

    def add(self, key, value, *, ttl_seconds):  # type: ignore[no-untyped-def]
        self._check()
        return super().add(key, value, ttl_seconds=ttl_seconds)

    def take(self, key):  # type: ignore[no-untyped-def]
        self._check()
        return super().take(key)

    def incr(self, key, *, ttl_seconds):  # type: ignore[no-untyped-def]
        self._check()
        return super().incr(key, ttl_seconds=ttl_seconds)

    def delete(self, key):  # type: ignore[no-untyped-def]
        self._check()
        return super().delete(key)


@pytest.fixture
def outage(settings):  # type: ignore[no-untyped-def]
    store = SwitchableStore()
    app = create_app(replace(settings), store=store)
    seed(app.state.services)
    with TestClient(app, base_url=ISSUER, raise_server_exceptions=False) as client:
        yield client, store


def assertion() -> str:
    now = int(time.time())
    claims = {
        "iss": "backend",
        "sub": "backend",
        "aud": ISSUER,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode({"alg": "RS256", "kid": RP_KEY.kid}, claims, RP_KEY)


def assert_unavailable_page(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/html")
    assert "temporarily unavailable" in response.text.lower()
    assert int(response.headers["retry-after"]) > 0


def test_the_hosted_login_answers_503_and_resumes_when_the_store_is_back(outage):
    client, store = outage
    tokens = tokens_for(client)  # before the outage
    client.cookies.clear()  # a browser without an IdP session from here on
    login_page = start(client, AuthRequest()).headers["location"]
    assert login_page.startswith("/login")
    csrf_token = form_value(client.get(login_page).text, "csrf_token")
    store.down = True

    assert_unavailable_page(start(client, AuthRequest()))  # cannot park a new login
    assert_unavailable_page(client.get(login_page))  # cannot read the parked one
    assert_unavailable_page(
        client.post(
            "/login",
            data={
                "tx": login_page.split("tx=")[1],
                "username": "alice",
                "password": "whatever",
                "csrf_token": csrf_token,
            },
        )
    )

    # the API keeps serving
    assert client.get("/.well-known/openid-configuration").status_code == 200
    assert client.get("/jwks").status_code == 200
    assert (
        client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"}, auth=SHOP).status_code
        == 200
    )
    assert client.get("/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"}).status_code == 200
    refreshed = client.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, auth=SHOP
    )
    assert refreshed.status_code == 200

    store.down = False
    response = submit_login(client, login_page)
    assert response.status_code == 303 and response.headers["location"].startswith("/authorize/resume")


def test_private_key_jwt_is_refused_not_unchecked_while_the_store_is_down(outage):
    """The assertion's jti must be checked against replay: without the store, 503, never 200."""
    client, store = outage
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(),
    }
    store.down = True
    response = client.post("/token", data=data)
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert int(response.headers["retry-after"]) > 0
    store.down = False
    data["client_assertion"] = assertion()
    assert client.post("/token", data=data).status_code == 200
