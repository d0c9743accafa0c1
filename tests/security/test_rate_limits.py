"""Rate limits (issue 4): per account name and per client IP on the login step, per client on
the token endpoint, site-wide per IP; checked before any Argon2 work, answered with 429 and
Retry-After (a page for people, a JSON error for API clients), audited once per key and
window, shared between processes through Redis, and still enforced per process while Redis
is unreachable."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from idp.app import create_app
from idp.db.models import AuditEvent
from idp.security.rate_limits import RateLimits
from idp.settings import Settings, load_settings
from idp.state.memory import MemoryStore
from tests.conftest import ISSUER, unavailable
from tests.support.argon2_calls import count_verifications
from tests.support.rp import SHOP, form_value
from tests.support.seed import PASSWORD, seed

REDIS_URL = "redis://127.0.0.1:6379/14"
CLOSED_REDIS_URL = "redis://127.0.0.1:1/0"
WRONG = PASSWORD + " but wrong"

MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(settings: Settings) -> Iterator[MakeClient]:
    """An app built from the test's settings with some fields replaced (seeded unless
    seeded=False: a second app on the same database), and a TestClient on it."""
    with ExitStack() as stack:

        def make(
            *,
            store_memory: bool = True,
            client: tuple[str, int] | None = None,
            seeded: bool = True,
            **overrides: object,
        ) -> TestClient:
            app = create_app(dataclasses.replace(settings, **overrides), store=MemoryStore() if store_memory else None)
            if seeded:
                seed(app.state.services)
            kwargs = {} if client is None else {"client": client}
            return stack.enter_context(TestClient(app, base_url=ISSUER, **kwargs))

        yield make


def csrf_of(client: TestClient) -> str:
    return form_value(client.get("/login").text, "csrf_token")


def post_login(
    client: TestClient,
    username: str,
    password: str = WRONG,
    *,
    csrf: str | None = None,
    headers: dict[str, str] | None = None,
):  # type: ignore[no-untyped-def]
    data = {"csrf_token": csrf or csrf_of(client), "username": username, "password": password}
    return client.post("/login", data=data, headers=headers, follow_redirects=False)


def retry_after_of(response) -> int:  # type: ignore[no-untyped-def]
    value = response.headers.get("retry-after")
    assert value is not None, "429 without Retry-After"
    assert value.isdigit(), value
    seconds = int(value)
    assert seconds > 0
    return seconds


def assert_refused_page(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 429, response.text
    seconds = retry_after_of(response)
    assert seconds <= 60  # "…/minute": the window ends within a minute
    assert response.headers["content-type"].startswith("text/html")
    assert re.search(r"Wait \d+ (seconds|minutes) and try again", response.text), response.text


def assert_refused_json(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 429, response.text
    retry_after_of(response)
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"] == "too_many_requests"


def audit_rows(client: TestClient, kind: str) -> list[AuditEvent]:
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        rows = list(db.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))
        db.expunge_all()
        return rows


# ---- login, per account name --------------------------------------------------------------


def test_login_per_account_name_refuses_the_fourth_attempt_with_a_page_and_retry_after(make_client):
    client = make_client(rate_limit_login_account="3/minute")
    csrf = csrf_of(client)
    for _ in range(3):
        assert post_login(client, "alice", csrf=csrf).status_code == 401

    refused = post_login(client, "alice", csrf=csrf)

    assert_refused_page(refused)
    assert "idp_session" not in refused.headers.get("set-cookie", "")
    # even the right password is refused while the window lasts
    assert post_login(client, "alice", PASSWORD, csrf=csrf).status_code == 429
    # another account name is not affected
    assert post_login(client, "bob", csrf=csrf).status_code == 401


def test_the_account_limit_counts_the_name_however_it_is_typed(make_client):
    client = make_client(rate_limit_login_account="3/minute")
    csrf = csrf_of(client)
    for typed in ("alice", " ALICE ", "Alice"):
        assert post_login(client, typed, csrf=csrf).status_code == 401

    assert_refused_page(post_login(client, "  aLiCe", csrf=csrf))
    assert_refused_page(post_login(client, "alice", csrf=csrf))


def test_an_unknown_name_is_limited_exactly_like_a_real_one(make_client):
    client = make_client(rate_limit_login_account="3/minute")
    csrf = csrf_of(client)
    known = [post_login(client, "alice", csrf=csrf).status_code for _ in range(4)]
    unknown = [post_login(client, "nobody", csrf=csrf).status_code for _ in range(4)]

    assert known == unknown == [401, 401, 401, 429]
    assert_refused_page(post_login(client, "nobody", csrf=csrf))


def test_a_refused_attempt_runs_no_argon2(make_client, monkeypatch):
    client = make_client(rate_limit_login_account="3/minute")
    hashing = client.app.state.services.hashing  # type: ignore[attr-defined]
    calls: list[object] = []
    count_verifications(monkeypatch, hashing, calls)
    csrf = csrf_of(client)
    for expected_calls in (1, 2, 3):
        assert post_login(client, "alice", csrf=csrf).status_code == 401
        assert len(calls) == expected_calls

    assert post_login(client, "alice", csrf=csrf).status_code == 429
    assert post_login(client, "alice", PASSWORD, csrf=csrf).status_code == 429
    assert len(calls) == 3, "a refused attempt must not reach Argon2"
    # and a refused attempt counts no lockout failure
    from idp.db.models import User

    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        assert db.scalar(select(User.failed_logins).where(User.username == "alice")) == 3


# ---- login, per client IP -----------------------------------------------------------------


def test_login_per_ip_refuses_the_third_attempt_whatever_the_names(make_client):
    client = make_client(rate_limit_login_ip="2/minute", rate_limit_login_account="off")
    csrf = csrf_of(client)
    assert post_login(client, "alice", csrf=csrf).status_code == 401
    assert post_login(client, "bob", csrf=csrf).status_code == 401

    assert_refused_page(post_login(client, "carol", csrf=csrf))


def test_x_forwarded_for_from_an_untrusted_peer_does_not_change_the_limited_address(make_client):
    client = make_client(rate_limit_login_ip="2/minute", rate_limit_login_account="off", trusted_proxies=())
    csrf = csrf_of(client)
    statuses = [
        post_login(client, f"user{i}", csrf=csrf, headers={"X-Forwarded-For": f"203.0.113.{i}"}).status_code
        for i in range(1, 5)
    ]

    assert statuses == [401, 401, 429, 429]
    rows = audit_rows(client, "rate_limit.exceeded")
    assert [r.ip for r in rows] == ["testclient"]  # the peer, never the header's claim


def test_x_forwarded_for_from_a_trusted_proxy_gives_each_client_its_own_bucket(make_client):
    client = make_client(
        rate_limit_login_ip="2/minute",
        rate_limit_login_account="off",
        trusted_proxies=("10.0.0.0/8",),
        client=("10.0.0.5", 1234),
    )
    csrf = csrf_of(client)

    def attempt(forwarded: str) -> int:
        return post_login(client, "alice", csrf=csrf, headers={"X-Forwarded-For": forwarded}).status_code

    assert [attempt("203.0.113.7") for _ in range(3)] == [401, 401, 429]
    assert [attempt("198.51.100.9") for _ in range(3)] == [401, 401, 429]
    # a further trusted hop in the chain does not make a new client
    assert attempt("203.0.113.7, 10.1.2.3") == 429
    assert sorted(r.ip for r in audit_rows(client, "rate_limit.exceeded")) == ["198.51.100.9", "203.0.113.7"]


# ---- token endpoint, per client -----------------------------------------------------------


def client_credentials(client: TestClient, auth: tuple[str, str] = SHOP):  # type: ignore[no-untyped-def]
    return client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"}, auth=auth)


def test_token_endpoint_limit_per_client_refuses_with_a_json_error(make_client):
    client = make_client(rate_limit_token_client="2/minute")
    assert client_credentials(client).status_code == 200
    assert client_credentials(client).status_code == 200

    refused = client_credentials(client)

    assert_refused_json(refused)
    assert refused.headers["cache-control"] == "no-store"


def test_failed_client_authentication_does_not_use_the_client_s_quota(make_client):
    client = make_client(rate_limit_token_client="2/minute")
    for _ in range(3):
        wrong = client_credentials(client, auth=("shop", SHOP[1] + "x"))
        assert wrong.status_code == 401
        assert wrong.json()["error"] == "invalid_client"

    assert client_credentials(client).status_code == 200
    assert client_credentials(client).status_code == 200
    assert_refused_json(client_credentials(client))


def test_a_token_refusal_is_audited_once_per_client_and_window(make_client):
    client = make_client(rate_limit_token_client="1/minute")
    assert client_credentials(client).status_code == 200
    for _ in range(3):
        assert client_credentials(client).status_code == 429

    rows = audit_rows(client, "rate_limit.exceeded")
    assert len(rows) == 1
    assert (rows[0].client_id, rows[0].outcome, rows[0].ip) == ("shop", "refused", "testclient")
    assert rows[0].detail["scope"] == "token_client"


# ---- site-wide, per client IP -------------------------------------------------------------


def test_site_limit_answers_an_api_path_with_json(make_client):
    client = make_client(rate_limit_site_ip="5/minute")
    for _ in range(5):
        assert client.get("/.well-known/openid-configuration").status_code == 200

    assert_refused_json(client.get("/.well-known/openid-configuration"))


def test_site_limit_answers_a_page_with_html(make_client):
    client = make_client(rate_limit_site_ip="5/minute")
    for _ in range(5):
        assert client.get("/login").status_code == 200

    assert_refused_page(client.get("/login"))


# ---- audit of refusals --------------------------------------------------------------------


def test_refused_logins_write_one_audit_row_per_key_and_window(make_client):
    client = make_client(rate_limit_login_account="2/minute")
    csrf = csrf_of(client)
    agent = {"User-Agent": "rate-limit-test/1.0"}
    for name in ("alice", "bob"):
        statuses = [post_login(client, name, csrf=csrf, headers=agent).status_code for _ in range(5)]
        assert statuses == [401, 401, 429, 429, 429]

    rows = audit_rows(client, "rate_limit.exceeded")
    assert len(rows) == 2  # one per account name, not one per refusal
    for row in rows:
        assert row.outcome == "refused"
        assert row.ip == "testclient"
        assert row.user_agent == "rate-limit-test/1.0"
        assert row.detail["scope"] == "login_account"
        assert row.detail["path"] == "/login"
        assert row.detail["retry_after"] > 0
    assert not any("alice" in str(row.detail) or "bob" in str(row.detail) for row in rows)


# ---- across processes (Redis) -------------------------------------------------------------


@pytest.fixture
def redis_db14() -> Iterator[object]:
    redis = pytest.importorskip("redis")
    connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        connection.flushdb()
    except redis.RedisError as exc:
        connection.close()
        unavailable(f"Redis is not reachable at {REDIS_URL}: {type(exc).__name__}")
    yield connection
    connection.flushdb()
    connection.close()


def test_login_limits_are_shared_by_every_process_through_redis(make_client, redis_db14):
    # two apps, as two worker processes would be: the same settings, database and Redis
    first = make_client(store_memory=False, redis_url=REDIS_URL, rate_limit_login_account="3/minute")
    second = make_client(store_memory=False, redis_url=REDIS_URL, rate_limit_login_account="3/minute", seeded=False)
    assert first.app.state.services.rate_limits.shared  # type: ignore[attr-defined]
    assert first.app is not second.app

    assert post_login(first, "alice").status_code == 401
    assert post_login(first, "alice").status_code == 401
    assert post_login(second, "alice").status_code == 401

    assert_refused_page(post_login(second, "alice"))
    assert_refused_page(post_login(first, "alice"))
    assert len(audit_rows(first, "rate_limit.exceeded")) == 1  # one row for both processes


def test_redis_holds_no_account_names(make_client, redis_db14):
    """rate_limits.py: "Identifiers are keyed digests (never raw account names) so Redis
    holds no usernames"."""
    client = make_client(store_memory=False, redis_url=REDIS_URL, rate_limit_login_account="3/minute")
    assert post_login(client, "alice").status_code == 401
    assert post_login(client, "nobody-by-this-name").status_code == 401

    keys = [k.decode("utf-8", "replace") for k in redis_db14.scan_iter("*")]  # type: ignore[attr-defined]
    assert any("limits" in k for k in keys), keys  # the limits are counted there
    leaked = [k for k in keys if "alice" in k or "nobody-by-this-name" in k]
    assert leaked == [], f"account names in Redis keys: {leaked}"


# ---- fallback while Redis is unreachable --------------------------------------------------


def test_with_redis_unreachable_limits_fall_back_to_per_process_counting_and_say_so_once(caplog):
    limits = RateLimits(
        load_settings(environ={}, redis_url=CLOSED_REDIS_URL, rate_limit_login_account="2/minute"),
        digest=lambda value: hashlib.sha256(value.encode()).hexdigest(),
    )
    assert limits.shared

    with caplog.at_level(logging.WARNING, logger="idp.rate_limits"):
        verdicts = [limits.hit("login_account", "alice") for _ in range(4)]
        other = limits.hit("login_account", "bob")

    assert [v.allowed for v in verdicts] == [True, True, False, False]
    assert verdicts[2].scope == "login_account" and verdicts[2].retry_after > 0
    assert other.allowed
    warnings = [r for r in caplog.records if r.name == "idp.rate_limits" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "Redis" in warnings[0].getMessage()
