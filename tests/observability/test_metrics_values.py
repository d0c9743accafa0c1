"""What the Prometheus counters say (idp/observability/metrics.py), read through /metrics as
a scrape would: requests per route template (never per raw path), method and status; and
the security counters derived from the audit trail — logins by method and outcome, lockouts,
rate-limit refusals (every one), tokens by grant type, sign-ins by acr and back-channel
logout deliveries by outcome.

Metrics are process-global, so every assertion is on the difference between two scrapes."""

from __future__ import annotations

import secrets

import pyotp
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from idp.audit.trail import record_audit
from idp.db.models import User
from tests.observability.conftest import MakeClient
from tests.observability.support import Samples, delta, scrape
from tests.oidc.test_logout import (
    configure,
    drain_deliveries,
    logout,
    receiver,
    sign_in,
    wait_until,
)
from tests.support.clock import START
from tests.support.rp import (
    SHOP,
    AuthRequest,
    form_value,
    redeem,
    refresh,
    sign_in_and_get_code,
    start,
    submit_login,
    tokens_for,
)
from tests.support.seed import PASSWORD

REQUESTS = "idp_http_requests_total"
LATENCY_COUNT = "idp_http_request_duration_seconds_count"
LOGINS = "idp_logins_total"
WRONG = PASSWORD + " but wrong"


def requests_delta(before: Samples, after: Samples, endpoint: str, method: str, status: int) -> float:
    return delta(before, after, REQUESTS, endpoint=endpoint, method=method, status=str(status))


# ---- requests: route template, method, status ---------------------------------------------------


def test_a_request_counts_under_its_route_template_not_its_concrete_path(client: TestClient) -> None:
    """A label per concrete id would be a new series per session id a client tries."""
    app = client.app
    before = scrape(app)
    statuses = [client.post(f"/account/sessions/{n}/end").status_code for n in (17, 23, 99999)]

    after = scrape(app)
    template = "/account/sessions/{session_id:int}/end"
    assert sum(requests_delta(before, after, template, "POST", s) for s in set(statuses)) == 3
    assert delta(before, after, LATENCY_COUNT, endpoint=template, method="POST") == 3
    assert not [
        s
        for s in after.series(REQUESTS)
        if s["endpoint"].startswith("/account/sessions/") and any(d in s["endpoint"] for d in ("17", "23", "99999"))
    ]


def test_unknown_paths_all_count_as_unmatched_without_a_new_series_each(client: TestClient) -> None:
    """Paths are client input: every path no route serves shares endpoint="unmatched"."""
    app = client.app
    client.get("/probe-warmup")  # the unmatched/GET/404 series exists from here on
    scrape(app)  # and the /metrics one
    before = scrape(app)
    paths = [f"/wp-admin/{secrets.token_hex(6)}.php" for _ in range(7)]
    for path in paths:
        assert client.get(path).status_code == 404

    after = scrape(app)
    assert requests_delta(before, after, "unmatched", "GET", 404) == 7
    assert delta(before, after, LATENCY_COUNT, endpoint="unmatched", method="GET") == 7
    assert len(after.series(REQUESTS)) == len(before.series(REQUESTS))
    assert not any(p.split("/")[2] in after.text for p in paths)


def test_the_status_label_is_the_status_sent(client: TestClient) -> None:
    """200, 404 and 405 each under their own status, on the right endpoint."""
    app = client.app
    before = scrape(app)
    assert client.get("/healthz").status_code == 200
    assert client.delete("/healthz").status_code == 405  # routed, wrong method: the route's template
    assert client.put("/jwks").status_code == 405  # answered before routing, by the static documents
    assert client.get("/jwks").status_code == 200
    assert client.head("/.well-known/openid-configuration").status_code == 200
    assert client.get("/no/such/thing").status_code == 404

    after = scrape(app)
    assert requests_delta(before, after, "/healthz", "GET", 200) == 1
    assert requests_delta(before, after, "/healthz", "DELETE", 405) == 1
    assert requests_delta(before, after, "/jwks", "PUT", 405) == 1
    assert requests_delta(before, after, "/jwks", "GET", 200) == 1
    assert requests_delta(before, after, "/.well-known/openid-configuration", "HEAD", 200) == 1
    assert requests_delta(before, after, "unmatched", "GET", 404) == 1
    assert requests_delta(before, after, "/healthz", "GET", 405) == 0


def test_the_latency_histogram_observes_each_request_once(client: TestClient) -> None:
    app = client.app
    before = scrape(app)
    for _ in range(5):
        client.get("/healthz")

    after = scrape(app)
    assert delta(before, after, LATENCY_COUNT, endpoint="/healthz", method="GET") == 5
    assert (
        delta(before, after, "idp_http_request_duration_seconds_bucket", endpoint="/healthz", method="GET", le="+Inf")
        == 5
    )
    assert delta(before, after, "idp_http_request_duration_seconds_sum", endpoint="/healthz", method="GET") > 0


def test_an_invented_http_method_does_not_create_a_series_of_its_own(client: TestClient) -> None:
    """Labels are meant to be a closed set (metrics.py's docstring): a client inventing
    methods must not create series."""
    app = client.app
    before = scrape(app)
    for n in range(5):
        client.request(f"PROBE{n}", "/token")

    after = scrape(app)
    invented = [s for s in after.series(REQUESTS) if s["method"].startswith("PROBE")]
    assert invented == [], invented
    assert len(after.series(REQUESTS)) <= len(before.series(REQUESTS)) + 2


# ---- logins, lockouts, rate limits ---------------------------------------------------------------


def test_password_logins_count_failures_and_successes_through_the_login_form(client: TestClient) -> None:
    app = client.app
    before = scrape(app)
    url = start(client, AuthRequest()).headers["location"]
    assert submit_login(client, url, password=WRONG).status_code == 401
    assert submit_login(client, url, username="nobody-here", password=WRONG).status_code == 401
    assert submit_login(client, url).status_code == 303

    after = scrape(app)
    assert delta(before, after, LOGINS, method="password", outcome="failure") == 2
    assert delta(before, after, LOGINS, method="password", outcome="success") == 1
    assert delta(before, after, LOGINS, method="password", outcome="refused") == 0
    assert delta(before, after, "idp_sign_ins_completed_total", acr="pwd") == 1
    assert delta(before, after, "idp_audit_events_total", kind="login.password.failed", outcome="failure") == 2


def _enrol_totp(client: TestClient, username: str, now: float) -> str:
    services = client.app.state.services
    services.clock.set(now)
    with services.sessions() as db:
        user_id = db.scalar(select(User.id).where(User.username == username))
    with services.sessions.begin() as db:
        secret = services.factors.begin_totp(db, user_id)
        assert services.factors.confirm_totp(db, user_id, pyotp.TOTP(secret).at(now)).ok
    return secret


def _post_code(client: TestClient, location: str, code: str):  # type: ignore[no-untyped-def]
    page = client.get(location)
    data = {"csrf_token": form_value(page.text, "csrf_token"), "tx": form_value(page.text, "tx"), "code": code}
    return client.post("/login/totp", data=data, follow_redirects=False)


def test_a_code_step_counts_as_a_totp_login_and_the_sign_in_under_acr_mfa(client: TestClient) -> None:
    t0 = START.timestamp()
    secret = _enrol_totp(client, "bob", t0)
    app = client.app
    before = scrape(app)
    response = submit_login(client, start(client, AuthRequest()).headers["location"], username="bob")
    assert response.status_code == 303 and response.headers["location"].startswith("/login/totp?tx=")
    later = t0 + 30
    client.app.state.services.clock.set(later)
    right = pyotp.TOTP(secret).at(later)
    wrong = "000000" if right != "000000" else "111111"
    assert _post_code(client, response.headers["location"], wrong).status_code == 401
    done = _post_code(client, response.headers["location"], right)
    assert done.status_code == 303, done.text

    after = scrape(app)
    assert delta(before, after, LOGINS, method="password", outcome="success") == 1
    assert delta(before, after, LOGINS, method="totp", outcome="failure") == 1
    assert delta(before, after, LOGINS, method="totp", outcome="success") == 1
    assert delta(before, after, "idp_sign_ins_completed_total", acr="mfa") == 1
    assert delta(before, after, "idp_sign_ins_completed_total", acr="pwd") == 0


def test_locking_an_account_counts_one_lockout_and_later_attempts_as_refused(make_client: MakeClient) -> None:
    client = make_client(lockout_attempts=3)
    app = client.app
    before = scrape(app)
    url = start(client, AuthRequest()).headers["location"]
    for _ in range(3):
        assert submit_login(client, url, password=WRONG).status_code == 401
    middle = scrape(app)
    assert delta(before, middle, "idp_lockouts_total") == 1
    assert delta(before, middle, LOGINS, method="password", outcome="failure") == 3

    assert submit_login(client, url, password=WRONG).status_code == 401  # locked: refused
    assert submit_login(client, url, password=WRONG).status_code == 401

    after = scrape(app)
    assert delta(middle, after, "idp_lockouts_total") == 0  # already locked: no second lockout
    assert delta(middle, after, LOGINS, method="password", outcome="refused") == 2
    assert delta(middle, after, LOGINS, method="password", outcome="failure") == 0


def test_the_right_password_on_a_locked_account_counts_as_refused_only(make_client: MakeClient) -> None:
    client = make_client(lockout_attempts=3)
    app = client.app
    url = start(client, AuthRequest()).headers["location"]
    for _ in range(3):
        assert submit_login(client, url, password=WRONG).status_code == 401
    before = scrape(app)

    assert submit_login(client, url).status_code == 401  # refused exactly like a bad password

    after = scrape(app)
    assert delta(before, after, LOGINS, method="password", outcome="refused") == 1
    assert delta(before, after, LOGINS, method="password", outcome="success") == 0


def test_every_refusal_by_a_rate_limit_is_counted_not_only_the_audited_first(make_client: MakeClient) -> None:
    """The audit trail records the first refusal per key and window; the counter counts all."""
    client = make_client(rate_limit_login_ip="2/minute", rate_limit_login_account="off")
    app = client.app
    csrf = form_value(client.get("/login").text, "csrf_token")
    before = scrape(app)
    statuses = [
        client.post(
            "/login", data={"csrf_token": csrf, "username": "alice", "password": WRONG}, follow_redirects=False
        ).status_code
        for _ in range(6)
    ]

    after = scrape(app)
    assert statuses == [401, 401, 429, 429, 429, 429]
    assert delta(before, after, "idp_rate_limit_hits_total", scope="login_ip") == 4
    assert delta(before, after, "idp_rate_limit_hits_total", scope="login_account") == 0
    assert delta(before, after, "idp_audit_events_total", kind="rate_limit.exceeded", outcome="refused") == 1
    assert requests_delta(before, after, "/login", "POST", 429) == 4


def test_the_site_limit_counts_its_refusals_under_its_own_scope(make_client: MakeClient) -> None:
    client = make_client(client=("192.0.2.50", 5000), rate_limit_site_ip="3/minute")
    app = client.app
    before = scrape(app)  # from loopback: a bucket of its own
    statuses = [client.get("/healthz").status_code for _ in range(5)]

    assert statuses == [200, 200, 200, 429, 429]
    after = scrape(app)
    assert delta(before, after, "idp_rate_limit_hits_total", scope="site_ip") == 2
    assert requests_delta(before, after, "/healthz", "GET", 429) == 2


# ---- tokens, back-channel logout ------------------------------------------------------------


def test_tokens_issued_are_counted_by_grant_type(client: TestClient) -> None:
    app = client.app
    before = scrape(app)
    tokens = tokens_for(client)
    assert refresh(client, tokens["refresh_token"]).status_code == 200
    for _ in range(2):
        issued = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"}, auth=SHOP)
        assert issued.status_code == 200, issued.text
    request, code = sign_in_and_get_code(client)
    assert redeem(client, request, code).status_code == 200
    assert redeem(client, request, code).status_code == 400  # a replayed code issues nothing

    after = scrape(app)
    tokens_total = "idp_tokens_issued_total"
    assert delta(before, after, tokens_total, grant_type="authorization_code") == 2
    assert delta(before, after, tokens_total, grant_type="refresh_token") == 1
    assert delta(before, after, tokens_total, grant_type="client_credentials") == 2
    assert delta(before, after, tokens_total) == 5


@pytest.mark.parametrize("rp_status, outcome", [(200, "success"), (400, "failure")])
def test_a_back_channel_logout_delivery_is_counted_by_outcome(client: TestClient, rp_status: int, outcome: str) -> None:
    """A real RP-initiated logout, delivered to a receiver that accepts (200) or refuses (400)."""
    app = client.app
    with receiver(rp_status) as rp:
        configure(client, "shop", backchannel_logout_uri=rp.url)
        tokens = sign_in(client)
        before = scrape(app)
        assert logout(client, id_token_hint=tokens["id_token"]).status_code == 200
        assert wait_until(lambda: len(rp.posts) >= 1)
        drain_deliveries(client)

    after = scrape(app)
    deliveries = "idp_backchannel_logout_deliveries_total"
    assert delta(before, after, deliveries, outcome=outcome) == 1
    assert delta(before, after, deliveries) == 1


def test_back_channel_audit_events_recorded_directly_count_by_outcome(app) -> None:  # type: ignore[no-untyped-def]
    before = scrape(app)
    with app.state.services.sessions.begin() as db:
        record_audit(db, "logout.backchannel", client_id="shop", outcome="failure", sid="s1", result="timed out")
        record_audit(db, "logout.backchannel", client_id="shop", outcome="success", sid="s2", result="HTTP 200")
        record_audit(db, "logout.backchannel", client_id="shop", outcome="success", sid="s3", result="HTTP 204")

    after = scrape(app)
    deliveries = "idp_backchannel_logout_deliveries_total"
    assert delta(before, after, deliveries, outcome="failure") == 1
    assert delta(before, after, deliveries, outcome="success") == 2
