"""The hosted password login: no user enumeration (status, message, timing), CSRF on the
form, session cookie flags, and a parked request that only its own browser can resume."""

from __future__ import annotations

import re
import statistics
import time

import pytest
from starlette.testclient import TestClient

from tests.support.rp import AuthRequest, form_value, start, submit_login
from tests.support.seed import PASSWORD


def login_url(client) -> str:
    return start(client, AuthRequest()).headers["location"]


def _error_of(html: str) -> str:
    match = re.search(r'<p class="error" role="alert">(.*?)</p>', html)
    return match.group(1) if match else ""


def _disable(client, username):
    from idp.users import disable_user

    with client.app.state.services.sessions.begin() as db:
        disable_user(db, username)


@pytest.mark.parametrize(
    "username, password",
    [
        pytest.param("nobody", PASSWORD, id="unknown user"),
        pytest.param("alice", PASSWORD + "x", id="wrong password"),
        pytest.param("bob", PASSWORD, id="disabled user with the right password"),
    ],
)
def test_unknown_user_wrong_password_and_disabled_account_look_the_same(client, username, password):
    _disable(client, "bob")
    response = submit_login(client, login_url(client), username=username, password=password)
    assert response.status_code == 401
    assert _error_of(response.text) == "The username or password is incorrect."
    assert "idp_session" not in response.headers.get("set-cookie", "")


def test_login_form_matches_the_contract_for_password_managers(client):
    page = client.get(login_url(client)).text
    assert re.search(r'<input[^>]*name="username"[^>]*autocomplete="username webauthn"', page)
    assert re.search(r'<input[^>]*name="password"[^>]*type="password"[^>]*autocomplete="current-password"', page)
    assert 'name="csrf_token"' in page


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="refuses a missing csrf token"),
        pytest.param("0" * 64, id="refuses a forged csrf token"),
    ],
)
def test_login_without_a_valid_csrf_token_is_refused(client, token):
    page = client.get(login_url(client))
    data = {"tx": form_value(page.text, "tx"), "username": "alice", "password": PASSWORD}
    if token:
        data["csrf_token"] = token
    response = client.post("/login", data=data, follow_redirects=False)
    assert response.status_code == 403
    assert "idp_session" not in response.headers.get("set-cookie", "")


def test_csrf_token_of_another_browser_is_refused(app):
    with (
        TestClient(app, base_url="http://localhost:8000") as victim,
        TestClient(app, base_url="http://localhost:8000") as attacker,
    ):
        attacker_page = attacker.get(login_url(attacker))
        victim.get(login_url(victim))  # the victim has a csrf cookie of their own
        response = victim.post(
            "/login",
            data={
                "csrf_token": form_value(attacker_page.text, "csrf_token"),
                "tx": form_value(attacker_page.text, "tx"),
                "username": "alice",
                "password": PASSWORD,
            },
            follow_redirects=False,
        )
        assert response.status_code == 403


def test_session_cookie_is_httponly_and_samesite_lax(client):
    response = submit_login(client, login_url(client))
    cookie = next(v for k, v in response.headers.multi_items() if k == "set-cookie" and v.startswith("idp_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Max-Age" not in cookie


def test_session_cookie_is_secure_for_an_https_issuer(settings):
    from dataclasses import replace

    from idp.app import create_app
    from idp.state.memory import MemoryStore
    from tests.support.seed import seed

    app = create_app(replace(settings, issuer="https://id.example"), store=MemoryStore())
    seed(app.state.services)
    with TestClient(app, base_url="https://id.example") as client:
        response = submit_login(client, start(client, AuthRequest()).headers["location"])
        assert "Secure" in response.headers["set-cookie"]
        assert response.headers["strict-transport-security"].startswith("max-age=")


def test_a_parked_request_cannot_be_finished_by_another_browser(app):
    with (
        TestClient(app, base_url="http://localhost:8000") as alice,
        TestClient(app, base_url="http://localhost:8000") as mallory,
    ):
        location = login_url(alice)
        tx = location.split("tx=")[1]
        submit_login(mallory, "/login")  # mallory has a session of her own
        resumed = mallory.get(f"/authorize/resume?tx={tx}", follow_redirects=False)
        # alice's browser started it: to mallory's browser it does not exist (no code, no consent, no login)
        assert resumed.status_code == 400 and "location" not in resumed.headers
        assert "expired" in resumed.text


def test_pages_send_a_strict_csp_and_no_store(client):
    response = client.get(login_url(client))
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"


def test_invalid_client_shows_an_error_page_and_never_redirects(client):
    response = start(client, AuthRequest(redirect_uri="https://evil.example/callback"))
    assert response.status_code == 400 and "location" not in response.headers
    response = start(client, AuthRequest(client_id="ghost"))
    assert response.status_code == 400 and "location" not in response.headers


def test_login_ignores_open_redirect_attempts(client):
    response = client.get("/login?tx=https://evil.example")
    assert response.status_code == 400 and "location" not in response.headers


def _timed_failed_login(client, username, password):
    page = client.get("/login")
    data = {"csrf_token": form_value(page.text, "csrf_token"), "username": username, "password": password}
    began = time.perf_counter()
    response = client.post("/login", data=data, follow_redirects=False)
    elapsed = time.perf_counter() - began
    assert response.status_code == 401
    return elapsed


def test_unknown_user_timing_is_within_15_percent_of_wrong_password(settings):
    """Real Argon2 cost at a test-friendly size: the dummy verification for unknown users
    must take what a real one takes. Samples alternate so machine noise hits both alike."""
    from dataclasses import replace

    from idp.app import create_app
    from idp.state.memory import MemoryStore
    from tests.support.seed import seed

    app = create_app(replace(settings, argon2_time_cost=2, argon2_memory_kib=32768), store=MemoryStore())
    seed(app.state.services)  # seeded hashes use the same parameters
    with TestClient(app, base_url="http://localhost:8000") as client:
        for _ in range(3):  # warm both paths (the dummy hash is made on first use)
            _timed_failed_login(client, "nobody-here", PASSWORD)
            _timed_failed_login(client, "alice", PASSWORD + "x")
        unknown, wrong = [], []
        for _ in range(25):
            unknown.append(_timed_failed_login(client, "nobody-here", PASSWORD))
            wrong.append(_timed_failed_login(client, "alice", PASSWORD + "x"))
        u, w = statistics.median(unknown), statistics.median(wrong)
        assert abs(u - w) / w <= 0.15, f"unknown user {u * 1000:.1f} ms vs wrong password {w * 1000:.1f} ms"


def test_a_locked_account_with_the_right_password_times_like_a_wrong_password(settings, clock):
    """F-02: a lock must not show in the timing either. Alice is locked (the right password
    is refused after a real Argon2 verification); bob gets wrong passwords (the limit is set
    high enough that he never locks). Samples alternate; medians within 15%."""
    from dataclasses import replace
    from datetime import timedelta

    from sqlalchemy import update

    from idp.app import create_app
    from idp.db.models import User
    from idp.state.memory import MemoryStore
    from tests.support.seed import seed

    app = create_app(
        replace(settings, argon2_time_cost=2, argon2_memory_kib=32768, lockout_attempts=100),
        store=MemoryStore(),
        clock=clock,
    )
    seed(app.state.services)
    with app.state.services.sessions.begin() as db:
        db.execute(
            update(User)
            .where(User.username == "alice")
            .values(failed_logins=5, failures_since=clock.now(), locked_until=clock.now() + timedelta(minutes=30))
        )
    with TestClient(app, base_url="http://localhost:8000") as client:
        for _ in range(3):
            _timed_failed_login(client, "alice", PASSWORD)
            _timed_failed_login(client, "bob", PASSWORD + "x")
        locked, wrong = [], []
        for _ in range(25):
            locked.append(_timed_failed_login(client, "alice", PASSWORD))
            wrong.append(_timed_failed_login(client, "bob", PASSWORD + "x"))
        m_locked, m_wrong = statistics.median(locked), statistics.median(wrong)
        assert abs(m_locked - m_wrong) / m_wrong <= 0.15, (
            f"locked account {m_locked * 1000:.1f} ms vs wrong password {m_wrong * 1000:.1f} ms"
        )
