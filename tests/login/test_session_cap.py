"""The per-user cap on concurrent IdP sessions (settings.sessions_per_user): signing in
beyond it ends the oldest session, revokes its refresh tokens (except offline_access
ones) and audits the eviction."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.app import create_app
from idp.db.models import AuditEvent, IdpSession, User
from idp.settings import Settings
from idp.state.memory import MemoryStore
from tests.conftest import ISSUER
from tests.support.rp import (
    AuthRequest,
    decode_id_token,
    redeem,
    refresh,
    sign_in_and_get_code,
    start,
)
from tests.support.seed import seed


@pytest.fixture
def capped_app(settings: Settings) -> Starlette:
    app = create_app(dataclasses.replace(settings, sessions_per_user=2), store=MemoryStore())
    seed(app.state.services)
    return app


@pytest.fixture
def browsers(capped_app: Starlette) -> Iterator[list[TestClient]]:
    """Three browsers (separate cookie jars) on the same idp."""
    with (
        TestClient(capped_app, base_url=ISSUER) as one,
        TestClient(capped_app, base_url=ISSUER) as two,
        TestClient(capped_app, base_url=ISSUER) as three,
    ):
        yield [one, two, three]


def sign_in(browser: TestClient, scope: str) -> dict:  # type: ignore[type-arg]
    request, code = sign_in_and_get_code(browser, AuthRequest(scope=scope))
    response = redeem(browser, request, code)
    assert response.status_code == 200, response.text
    tokens = response.json()
    tokens["sid"] = decode_id_token(browser, tokens["id_token"])["sid"]
    return tokens


def asks_for_login(browser: TestClient, scope: str) -> bool:
    return start(browser, AuthRequest(scope=scope)).headers["location"].startswith("/login")


def test_the_oldest_session_beyond_the_cap_is_ended(browsers):
    services = browsers[0].app.state.services
    assert services.session_policy.max_per_user == 2
    scope = "openid profile email"
    first = sign_in(browsers[0], scope)
    first_offline = sign_in(browsers[0], scope + " offline_access")  # same session, an offline_access grant
    assert first_offline["sid"] == first["sid"]
    first_cookie = browsers[0].cookies["idp_session"]
    second = sign_in(browsers[1], scope)
    assert not asks_for_login(browsers[0], scope)  # two sessions: within the cap
    third = sign_in(browsers[2], scope)
    assert len({first["sid"], second["sid"], third["sid"]}) == 3

    # the first browser's session is gone; the other two live
    assert asks_for_login(browsers[0], scope)
    assert not asks_for_login(browsers[1], scope)
    assert not asks_for_login(browsers[2], scope)
    with services.sessions.begin() as db:
        alice = db.scalar(select(User).where(User.username == "alice"))
        rows = {row.sid: row for row in db.scalars(select(IdpSession).where(IdpSession.user_id == alice.id))}
        assert set(rows) == {first["sid"], second["sid"], third["sid"]}
        assert rows[first["sid"]].ended_at is not None
        assert rows[second["sid"]].ended_at is None and rows[third["sid"]].ended_at is None
        assert rows[first["sid"]].cookie_digest == services.keyring.digest(first_cookie)
        events = list(db.scalars(select(AuditEvent).where(AuditEvent.kind == "session.evicted")))
        assert len(events) == 1
        [event] = events
        assert event.user_id == alice.id and event.outcome == "success"
        assert event.detail["sid"] == first["sid"] and event.detail["cap"] == 2

    # the evicted session's refresh token is revoked; the offline_access one survives; others are fine
    refused = refresh(browsers[0], first["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert refresh(browsers[0], first_offline["refresh_token"]).status_code == 200
    assert refresh(browsers[1], second["refresh_token"]).status_code == 200
    assert refresh(browsers[2], third["refresh_token"]).status_code == 200


def test_the_cap_is_per_user(browsers):
    """bob signing in does not count against alice's sessions."""
    scope = "openid profile email"
    sign_in(browsers[0], scope)
    sign_in(browsers[1], scope)
    request, code = sign_in_and_get_code(browsers[2], AuthRequest(scope=scope), username="bob")
    assert redeem(browsers[2], request, code).status_code == 200
    for browser in browsers:
        assert not asks_for_login(browser, scope)
    services = browsers[0].app.state.services
    with services.sessions.begin() as db:
        assert list(db.scalars(select(AuditEvent).where(AuditEvent.kind == "session.evicted"))) == []
