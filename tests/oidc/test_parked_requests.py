"""Bounded parked requests (issue 15 item 3): an authorization request parked for the login
chain or the consent page keeps only the parameters idp honours, at most MAX_PARKED_BYTES of
them (beyond: invalid_request to a verified redirect_uri, a 400 page otherwise, nothing
parked), counts against IDP_RATE_LIMIT_AUTHORIZE_IP, and lives
IDP_LOGIN_UNTOUCHED_TTL_SECONDS until a step saves it again."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from html import unescape
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from idp.app import create_app
from idp.db.models import AuditEvent
from idp.oidc.parked import MAX_PARKED_BYTES, PARKED_PARAMETERS
from idp.settings import Settings
from idp.state.memory import MemoryStore
from tests.conftest import ISSUER
from tests.support.rp import (
    SHOP_REDIRECT,
    AuthRequest,
    follow_to_client,
    query_of,
    start,
    submit_login,
)
from tests.support.seed import seed

TX_PREFIX = "login-tx:"
MakeClient = Callable[..., TestClient]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def make_client(settings: Settings) -> Iterator[MakeClient]:
    """A seeded app on a MemoryStore (on `clock` if given) with some settings replaced."""
    with ExitStack() as stack:

        def make(
            *, clock: FakeClock | None = None, client: tuple[str, int] | None = None, **overrides: object
        ) -> TestClient:
            store = MemoryStore() if clock is None else MemoryStore(clock=clock)
            app = create_app(dataclasses.replace(settings, **overrides), store=store)
            seed(app.state.services)
            kwargs = {} if client is None else {"client": client}
            return stack.enter_context(TestClient(app, base_url=ISSUER, **kwargs))

        yield make


def store_of(client: TestClient) -> MemoryStore:
    return client.app.state.services.store  # type: ignore[attr-defined,no-any-return]


def tx_id_of(location: str) -> str:
    return parse_qs(urlsplit(location).query)["tx"][0]


def parked(client: TestClient, location: str) -> dict[str, str] | None:
    raw = store_of(client).get(TX_PREFIX + tx_id_of(location))
    return None if raw is None else json.loads(raw)["params"]  # type: ignore[no-any-return]


def fields_of(html: str) -> dict[str, str]:
    return {
        unescape(n): unescape(v) for n, v in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', html)
    }


# ---- only the parameters idp honours are parked -------------------------------------------


def test_unknown_parameters_are_not_parked_and_every_honoured_one_is(make_client):
    client = make_client()
    honoured = {
        "prompt": "login",
        "max_age": "3600",
        "acr_values": "pwd",
        "login_hint": "alice",
        "response_mode": "query",
    }
    unknown = {"display": "page", "ui_locales": "fr", "claims": "{}", **{f"x-pad-{n}": "t" * 4000 for n in range(12)}}
    request = AuthRequest(extra={**honoured, **unknown})
    response = start(client, request)
    assert response.status_code == 303 and response.headers["location"].startswith("/login?")

    kept = parked(client, response.headers["location"])
    assert kept is not None
    assert set(kept) == set(request.params()) - set(unknown)
    assert len(store_of(client).get(TX_PREFIX + tx_id_of(response.headers["location"])) or b"") < MAX_PARKED_BYTES
    assert set(kept) <= set(PARKED_PARAMETERS)
    assert {k: kept[k] for k in honoured} == honoured and kept["state"] == request.state
    # the resumed request still honours all of it: a code for the RP's own state
    location = follow_to_client(client, submit_login(client, response.headers["location"]))
    assert location.startswith(SHOP_REDIRECT) and query_of(location)["state"] == request.state
    assert "code" in query_of(location)


def test_the_longest_request_idp_accepts_is_parked(make_client):
    client = make_client()
    request = AuthRequest(state="s" * 2048, nonce="n" * 512, extra={"login_hint": "h" * 128, "acr_values": "pwd mfa"})
    response = start(client, request)
    assert response.status_code == 303 and parked(client, response.headers["location"]) is not None


# ---- over the size cap: refused, nothing parked --------------------------------------------

# Each value within what idp/web/params.py lets one parameter hold (4096 characters), together
# over MAX_PARKED_BYTES.
OVERSIZED = [
    pytest.param({"login_hint": "h" * 4096, "scope": "openid " + "x" * 4089}, id="login_hint and scope of 4 KB"),
    pytest.param(
        {"login_hint": "h" * 4096, "acr_values": "pwd " * 1000, "nonce": "n" * 512},
        id="login_hint, acr_values and nonce",
    ),
    pytest.param(
        {"state": "s" * 2048, "login_hint": "h" * 4096, "prompt": "login " * 500},
        id="a long state beside them is still returned",
    ),
]


@pytest.mark.parametrize("extra", OVERSIZED)
def test_an_oversized_request_is_invalid_request_to_the_verified_redirect_uri(make_client, extra):
    client = make_client()
    request = AuthRequest(extra=extra)
    state = extra.get("state", request.state)
    before = len(store_of(client))
    response = start(client, request)

    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith(SHOP_REDIRECT + "?")
    answer = query_of(location)
    assert answer["error"] == "invalid_request" and answer["error_description"]
    assert answer["state"] == state and answer["iss"] == ISSUER  # RFC 6749 §4.1.2.1, RFC 9207
    assert len(store_of(client)) == before


def test_an_oversized_request_is_posted_back_with_response_mode_form_post(make_client):
    client = make_client()
    request = AuthRequest(extra={"response_mode": "form_post", "login_hint": "h" * 4096, "acr_values": "pwd " * 1000})
    before = len(store_of(client))
    page = start(client, request)

    assert page.status_code == 200
    assert re.search(r'<form method="post" action="https://shop\.example/callback"', page.text)
    fields = fields_of(page.text)
    assert fields["error"] == "invalid_request" and fields["error_description"]
    assert fields["state"] == request.state and fields["iss"] == ISSUER
    assert len(store_of(client)) == before


@pytest.mark.parametrize(
    "who",
    [
        pytest.param({"client_id": "no-such-client"}, id="an unknown client"),
        pytest.param({"redirect_uri": "https://evil.example/cb"}, id="an unregistered redirect_uri"),
    ],
)
def test_an_oversized_request_of_an_unverified_client_gets_a_400_page(make_client, who):
    client = make_client()
    request = AuthRequest(extra={**who, "login_hint": "h" * 4096, "acr_values": "pwd " * 1000})
    before = len(store_of(client))
    response = start(client, request)

    assert response.status_code == 400 and "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert len(store_of(client)) == before


@pytest.mark.parametrize("name", ["state", "login_hint"])
def test_a_60_kb_value_is_a_400_page_and_nothing_is_parked(make_client, name):
    # refused while the parameters are read (idp/web/params.py), before any client is known
    client = make_client()
    before = len(store_of(client))
    response = start(client, AuthRequest(extra={name: "v" * 60_000}))
    assert response.status_code == 400 and "location" not in response.headers
    assert len(store_of(client)) == before


# ---- transactions per client IP ------------------------------------------------------------


def authorize_from(client: TestClient, address: str, request: AuthRequest | None = None):  # type: ignore[no-untyped-def]
    request = request or AuthRequest()
    return client.get(
        "/authorize", params=request.params(), headers={"X-Forwarded-For": address}, follow_redirects=False
    )


def test_the_parking_limit_refuses_one_address_and_not_another(make_client):
    client = make_client(rate_limit_authorize_ip="2/minute", trusted_proxies=("10.0.0.0/8",), client=("10.0.0.5", 1234))
    answers = [authorize_from(client, "203.0.113.7") for _ in range(3)]

    assert [a.status_code for a in answers] == [303, 303, 429]
    refused = answers[2]
    assert refused.headers["content-type"].startswith("text/html")
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert re.search(r"Wait \d+ (seconds|minutes) and try again", refused.text)
    assert authorize_from(client, "198.51.100.9").status_code == 303
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        rows = list(db.scalars(select(AuditEvent).where(AuditEvent.kind == "rate_limit.exceeded")))
        assert [(r.ip, r.client_id, r.detail["scope"]) for r in rows] == [("203.0.113.7", "shop", "authorize_ip")]


def test_requests_answered_at_once_do_not_count(make_client):
    client = make_client(rate_limit_authorize_ip="2/minute")
    for _ in range(5):  # errors: the RP hears at once, nothing is parked
        assert "error" in query_of(start(client, AuthRequest(extra={"prompt": "none"})).headers["location"])
        assert "error" in query_of(start(client, AuthRequest(extra={"response_type": "token"})).headers["location"])
        assert start(client, AuthRequest(client_id="no-such-client")).status_code == 400
    # one parked request signs in to a first-party client; then codes come at once
    portal = {"client_id": "portal", "redirect_uri": "https://portal.example/cb"}
    assert "code" in query_of(follow_to_client(client, start(client, AuthRequest(**portal))))
    for _ in range(5):
        assert "code" in query_of(start(client, AuthRequest(**portal)).headers["location"])
    assert start(client, AuthRequest(**portal, extra={"prompt": "login"})).status_code == 303  # the second parked
    assert start(client, AuthRequest(**portal, extra={"prompt": "login"})).status_code == 429


# ---- lifetime: short until a step saves the transaction ------------------------------------


def test_a_parked_request_nobody_acts_on_expires_after_the_untouched_ttl(make_client):
    clock = FakeClock()
    client = make_client(clock=clock)
    untouched = client.app.state.services.settings.login_untouched_ttl_seconds  # type: ignore[attr-defined]
    assert untouched < client.app.state.services.settings.login_ttl_seconds  # type: ignore[attr-defined]
    location = start(client, AuthRequest()).headers["location"]

    clock.advance(untouched - 1)
    assert parked(client, location) is not None
    clock.advance(1)
    assert parked(client, location) is None


def test_after_the_password_step_the_transaction_lives_the_full_ttl(make_client):
    clock = FakeClock()
    client = make_client(clock=clock)
    settings = client.app.state.services.settings  # type: ignore[attr-defined]
    request = AuthRequest(client_id="portal", redirect_uri="https://portal.example/cb")
    after_password = submit_login(client, start(client, request).headers["location"])
    assert after_password.status_code == 303

    clock.advance(settings.login_untouched_ttl_seconds + 60)  # past the short life, within the full one
    location = follow_to_client(client, after_password)
    assert "code" in query_of(location) and query_of(location)["state"] == request.state


def test_a_consent_transaction_is_parked_the_same_way(make_client):
    clock = FakeClock()
    client = make_client(clock=clock)
    untouched = client.app.state.services.settings.login_untouched_ttl_seconds  # type: ignore[attr-defined]
    follow_to_client(client, start(client, AuthRequest()))  # signed in, consent given once
    location = start(client, AuthRequest(extra={"prompt": "consent"})).headers["location"]
    assert location.startswith("/consent?")

    clock.advance(untouched)
    assert parked(client, location) is None


def test_consent_after_the_chain_keeps_the_full_ttl(make_client):
    clock = FakeClock()
    client = make_client(clock=clock)
    settings = client.app.state.services.settings  # type: ignore[attr-defined]
    after_password = submit_login(client, start(client, AuthRequest()).headers["location"])
    consent = client.get(after_password.headers["location"], follow_redirects=False).headers["location"]
    assert consent.startswith("/consent?")

    clock.advance(settings.login_untouched_ttl_seconds + 60)
    assert parked(client, consent) is not None
    clock.advance(settings.login_ttl_seconds)
    assert parked(client, consent) is None
