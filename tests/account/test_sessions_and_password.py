"""/account, sessions and password (DESIGN.md §3): the list of the user's live sessions
(device from the user agent, IP, times, "This browser"), signing out one other session or
all others (cookie dead, refresh tokens refused, back-channel scheduled, audited); changing
the password (current + new per NIST SP 800-63B: length and the common-password list; the
other sessions end and every refresh token is revoked); and the recent-authentication rule
of sensitive actions (TOTP off, new backup codes, new password, passkey removal), with
passkey removal ending the other sessions when settings.passkey_removal_ends_sessions = 1.

Several browsers are several TestClients on one app, each with its own cookie jar."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pyotp
import pytest
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.app import create_app
from idp.db.models import (
    AuditEvent,
    BackupCode,
    IdpSession,
    Passkey,
    RefreshToken,
    TotpCredential,
    User,
)
from idp.settings import Settings
from idp.state.memory import MemoryStore
from idp.web import backchannel
from idp.web.account_sessions import needs_reauth
from idp.web.user_agents import describe
from tests.conftest import ISSUER
from tests.support.authenticator import SoftAuthenticator
from tests.support.clock import START, ManualClock
from tests.support.rp import AuthRequest, form_value, refresh, tokens_for
from tests.support.seed import PASSWORD, seed

FIREFOX_LINUX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Mobile/15E148 Safari/604.1"
)
NEW_PASSWORD = "plum tractor velvet orbit"
UTC_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"
REAUTH = "/login?reauth=1"


# ---- user agents ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "agent, expected",
    [
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
            "Chrome on Linux",
        ),
        (CHROME_WINDOWS, "Chrome on Windows"),
        (
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
                "Safari/537.36"
            ),
            "Chrome on macOS",
        ),
        (
            (
                "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile "
                "Safari/537.36"
            ),
            "Chrome on Android",
        ),
        (
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                "CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1"
            ),
            "Chrome on iPhone",
        ),
        (
            (
                "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
                "Safari/537.36"
            ),
            "Chrome on ChromeOS",
        ),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0", "Firefox on Windows"),
        (FIREFOX_LINUX, "Firefox on Linux"),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0", "Firefox on macOS"),
        ("Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0", "Firefox on Android"),
        (
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                "FxiOS/125.0 Mobile/15E148 Safari/605.1.15"
            ),
            "Firefox on iPhone",
        ),
        (SAFARI_IPHONE, "Safari on iPhone"),
        (
            (
                "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 "
                "Mobile/15E148 Safari/604.1"
            ),
            "Safari on iPad",
        ),
        (
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 "
                "Safari/605.1.15"
            ),
            "Safari on macOS",
        ),
        (CHROME_WINDOWS + " Edg/124.0.2478.67", "Edge on Windows"),
        (
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/70.0.3538.102 "
                "Safari/537.36 Edge/18.19582"
            ),
            "Edge on Windows",
        ),
        (
            (
                "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile "
                "Safari/537.36 EdgA/124.0.2478.64"
            ),
            "Edge on Android",
        ),
        (
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
                "Safari/537.36 Edg/124.0.0.0"
            ),
            "Edge on macOS",
        ),
        (CHROME_WINDOWS + " OPR/109.0.0.0", "Opera on Windows"),
        (
            (
                "Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
                "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36"
            ),
            "Samsung Internet on Android",
        ),
        (
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 "
                "Safari/537.36"
            ),
            "Chrome on Linux",
        ),
        ("curl/8.5.0", "curl"),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64)", "Unknown browser on Windows"),
        ("python-httpx/0.27.0", "Unknown browser"),
        ("testclient", "Unknown browser"),
        ("", "Unknown browser"),
        (None, "Unknown browser"),
        ("\x00" * 5000, "Unknown browser"),
    ],
)
def test_describe_a_user_agent(agent, expected):
    assert describe(agent) == expected


def test_needs_reauth_uses_the_setting():
    settings = Settings(reauth_seconds=300)
    now = START
    assert not needs_reauth(settings, now, now=now)
    assert not needs_reauth(settings, now - timedelta(seconds=299), now=now)
    assert needs_reauth(settings, now - timedelta(seconds=301), now=now)


# ---- browsers ---------------------------------------------------------------------------------


def browser(app: Starlette, agent: str) -> TestClient:
    """Another browser on the same app (no lifespan of its own: the fixture's runs)."""
    return TestClient(app, base_url=ISSUER, headers={"user-agent": agent})


def sign_in(client: TestClient, username: str = "alice", password: str = PASSWORD) -> None:
    csrf = form_value(client.get("/login").text, "csrf_token")
    response = client.post(
        "/login", data={"csrf_token": csrf, "username": username, "password": password}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/account", response.text


def login_status(app: Starlette, password: str, username: str = "alice") -> int:
    """A fresh browser's password sign-in: 303 on success, 401 refused."""
    fresh = browser(app, FIREFOX_LINUX)
    csrf = form_value(fresh.get("/login").text, "csrf_token")
    return fresh.post(
        "/login", data={"csrf_token": csrf, "username": username, "password": password}, follow_redirects=False
    ).status_code


def csrf_of(client: TestClient) -> str:
    return form_value(client.get("/account").text, "csrf_token")


def post(client: TestClient, path: str, **fields: str):  # type: ignore[no-untyped-def]
    response = client.post(path, data={"csrf_token": csrf_of(client), **fields}, follow_redirects=False)
    assert response.headers["cache-control"] == "no-store", (path, response.status_code)
    return response


def signed_in(client: TestClient) -> bool:
    response = client.get("/account", follow_redirects=False)
    if response.status_code == 303:
        assert response.headers["location"] == "/login"
        return False
    assert response.status_code == 200
    return True


def online_tokens(client: TestClient) -> dict[str, Any]:
    """A code flow in this browser (signing in if needed), without offline_access: the
    refresh token is bound to the browser's session."""
    return tokens_for(client, AuthRequest(scope="openid profile email"))


def refresh_works(client: TestClient, refresh_token: str) -> bool:
    response = refresh(client, refresh_token)
    if response.status_code == 200:
        return True
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant", response.text
    return False


SESSION_ITEM = re.compile(r'<li class="session-item( session-current)?" data-session-id="(\d+)">(.*?)</li>', re.DOTALL)


def sessions_on(html: str) -> list[tuple[int, bool, str]]:
    """(session id, marked current, the item's text) for each session listed."""
    return [
        (int(m.group(2)), bool(m.group(1)), " ".join(re.sub(r"<[^>]+>", " ", m.group(3)).split()))
        for m in SESSION_ITEM.finditer(html)
    ]


# ---- the database, read directly ----------------------------------------------------------------


def services_of(client: TestClient):  # type: ignore[no-untyped-def]
    return client.app.state.services  # type: ignore[attr-defined]


def user_id(client: TestClient, username: str = "alice") -> int:
    with services_of(client).sessions() as db:
        return db.scalar(select(User.id).where(User.username == username))  # type: ignore[no-any-return]


def session_id_of(client: TestClient) -> int:
    services = services_of(client)
    cookie = client.cookies.get("idp_session")
    assert cookie
    with services.sessions() as db:
        return db.scalar(
            select(IdpSession.id).where(  # type: ignore[no-any-return]
                IdpSession.cookie_digest == services.keyring.digest(cookie)
            )
        )


def password_hash(client: TestClient, username: str = "alice") -> str:
    with services_of(client).sessions() as db:
        return db.scalar(select(User.password_hash).where(User.username == username))  # type: ignore[no-any-return]


def failed_logins(client: TestClient) -> int:
    with services_of(client).sessions() as db:
        return int(db.scalar(select(User.failed_logins).where(User.username == "alice")) or 0)


def audits(client: TestClient, kind: str) -> list[AuditEvent]:
    with services_of(client).sessions() as db:
        rows = list(db.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))
        for row in rows:
            db.expunge(row)
        return rows


def live_refresh_tokens(client: TestClient) -> int:
    uid = user_id(client)
    with services_of(client).sessions() as db:
        return len(
            list(
                db.scalars(
                    select(RefreshToken.id).where(RefreshToken.user_id == uid, RefreshToken.revoked_at.is_(None))
                )
            )
        )


def age_sign_ins(client: TestClient, username: str = "alice") -> None:
    """Every session of the user last signed in interactively reauth_seconds + 60 ago."""
    services = services_of(client)
    uid = user_id(client, username)
    with services.sessions.begin() as db:
        db.execute(
            update(IdpSession)
            .where(IdpSession.user_id == uid)
            .values(auth_time=services.clock.now() - timedelta(seconds=services.settings.reauth_seconds + 60))
        )


@pytest.fixture
def scheduled(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ended sessions handed to back-channel logout."""
    calls: list[Any] = []
    monkeypatch.setattr(backchannel, "schedule", lambda services, ended: calls.append(ended))
    return calls


# ---- the session list ----------------------------------------------------------------------------


def test_the_list_shows_each_live_session_and_marks_this_browser(app, client):
    client.headers["user-agent"] = FIREFOX_LINUX
    sign_in(client)
    phone = browser(app, SAFARI_IPHONE)
    sign_in(phone)
    sign_in(browser(app, CHROME_WINDOWS), "bob")  # someone else's session is never listed
    mine, theirs = session_id_of(client), session_id_of(phone)

    page = client.get("/account")
    assert page.headers["cache-control"] == "no-store"
    listed = sessions_on(page.text)
    assert [(i, current) for i, current, _ in listed] == [(mine, True), (theirs, False)]
    assert "Firefox on Linux" in listed[0][2] and "This browser" in listed[0][2]
    assert "Safari on iPhone" in listed[1][2] and "This browser" not in listed[1][2]
    for _, _, text in listed:
        assert "testclient" in text  # the TestClient's address
        assert re.search(rf"Signed in {UTC_TIME}", text) and re.search(rf"Last seen {UTC_TIME}", text)
    assert f'action="/account/sessions/{theirs}/end"' in page.text
    assert f'action="/account/sessions/{mine}/end"' not in page.text
    assert 'action="/account/sessions/end-others"' in page.text

    other_view = sessions_on(phone.get("/account").text)
    assert [(i, current) for i, current, _ in other_view] == [(theirs, True), (mine, False)]


def test_a_lone_session_offers_no_sign_out_of_others(client):
    sign_in(client)
    page = client.get("/account").text
    assert [current for _, current, _ in sessions_on(page)] == [True]
    assert "end-others" not in page


def test_ended_and_expired_sessions_are_not_listed(app, client):
    sign_in(client)
    ended, expired = browser(app, SAFARI_IPHONE), browser(app, CHROME_WINDOWS)
    sign_in(ended)
    sign_in(expired)
    ended_id, expired_id = session_id_of(ended), session_id_of(expired)
    services = services_of(client)
    now = services.clock.now()
    with services.sessions.begin() as db:
        db.execute(update(IdpSession).where(IdpSession.id == ended_id).values(ended_at=now))
        db.execute(update(IdpSession).where(IdpSession.id == expired_id).values(expires_at=now - timedelta(seconds=1)))
    assert [i for i, _, _ in sessions_on(client.get("/account").text)] == [session_id_of(client)]


# ---- signing sessions out -------------------------------------------------------------------------


def test_signing_out_another_session(app, client, scheduled):
    sign_in(client)
    laptop = browser(app, CHROME_WINDOWS)
    laptop_tokens = online_tokens(laptop)  # signs in through the code flow: a session of its own
    mine_tokens = online_tokens(client)
    laptop_session = session_id_of(laptop)
    assert signed_in(laptop)

    response = post(client, f"/account/sessions/{laptop_session}/end")

    assert response.status_code == 303 and response.headers["location"] == "/account?done=session"
    assert not signed_in(laptop)
    assert not refresh_works(client, laptop_tokens["refresh_token"])
    assert refresh_works(client, mine_tokens["refresh_token"])
    assert signed_in(client)
    page = client.get(response.headers["location"]).text
    assert "That session was signed out." in page
    assert [i for i, _, _ in sessions_on(page)] == [session_id_of(client)]
    (event,) = audits(client, "session.ended_by_user")
    assert event.user_id == user_id(client) and event.outcome == "success"
    with services_of(client).sessions() as db:
        sid = db.scalar(select(IdpSession.sid).where(IdpSession.id == laptop_session))
    assert event.detail["sid"] == sid
    assert [e.sid for e in scheduled] == [sid]
    assert scheduled[0].clients == ("shop",)


def test_signing_out_all_other_sessions(app, client, scheduled):
    sign_in(client)
    others = [browser(app, agent) for agent in (CHROME_WINDOWS, SAFARI_IPHONE)]
    tokens = [online_tokens(other) for other in others]
    bob = browser(app, FIREFOX_LINUX)
    sign_in(bob, "bob")

    response = post(client, "/account/sessions/end-others")

    assert response.status_code == 303 and response.headers["location"] == "/account?done=sessions"
    assert signed_in(client)
    assert not any(signed_in(other) for other in others)
    assert not any(refresh_works(client, t["refresh_token"]) for t in tokens)
    assert signed_in(bob), "only the user's own sessions end"
    assert len(audits(client, "session.ended_by_user")) == 2
    assert len(scheduled) == 2
    assert [current for _, current, _ in sessions_on(client.get("/account").text)] == [True]


def test_someone_elses_session_is_not_found(app, client):
    sign_in(client)
    bob = browser(app, CHROME_WINDOWS)
    sign_in(bob, "bob")

    response = post(client, f"/account/sessions/{session_id_of(bob)}/end")

    assert response.status_code == 404
    assert signed_in(bob)
    assert audits(client, "session.ended_by_user") == []


@pytest.mark.parametrize(
    "path", ["/account/sessions/999999/end", "/account/sessions/99999999999999999999/end", "/account/sessions/0/end"]
)
def test_no_such_session_is_404_never_500(client, path):
    sign_in(client)
    assert post(client, path).status_code == 404


def test_the_current_session_is_not_ended_from_the_list(client):
    sign_in(client)
    response = post(client, f"/account/sessions/{session_id_of(client)}/end")
    assert response.status_code == 400
    assert signed_in(client)


# ---- changing the password -------------------------------------------------------------------------


def change(client: TestClient, current: str = PASSWORD, new: str = NEW_PASSWORD, confirm: str | None = None):  # type: ignore[no-untyped-def]
    return post(
        client,
        "/account/password",
        current_password=current,
        new_password=new,
        confirm_password=new if confirm is None else confirm,
    )


def test_the_password_form_is_what_password_managers_expect(client):
    sign_in(client)
    page = client.get("/account").text
    form = re.search(r'<form method="post" action="/account/password".*?</form>', page, re.DOTALL)
    assert form, "no password form"
    fields = {
        name: tag
        for tag, name in (
            (m.group(0), m.group(1)) for m in re.finditer(r'<input[^>]*name="([^"]+)"[^>]*>', form.group(0))
        )
    }
    assert 'autocomplete="current-password"' in fields["current_password"]
    assert 'autocomplete="new-password"' in fields["new_password"]
    assert 'autocomplete="new-password"' in fields["confirm_password"]
    assert 'minlength="15"' in fields["new_password"]  # no second factor: the single-factor minimum
    assert 'autocomplete="username"' in fields["username"]


def test_a_wrong_current_password_is_401_and_counts(app, client):
    sign_in(client)
    other = browser(app, CHROME_WINDOWS)
    sign_in(other)
    before = password_hash(client)

    response = change(client, current="not my password")

    assert response.status_code == 401
    assert "Your current password is not right." in response.text
    assert failed_logins(client) == 1
    assert password_hash(client) == before
    assert signed_in(other)
    assert [e.outcome for e in audits(client, "password.change_failed")] == ["failure"]
    assert audits(client, "password.changed") == []


def test_wrong_current_passwords_lock_the_account(client):
    sign_in(client)
    attempts = services_of(client).settings.lockout_attempts
    for _ in range(attempts):
        assert change(client, current="not my password").status_code == 401
    assert len(audits(client, "account.locked")) == 1

    response = change(client)  # the right password, but locked

    assert response.status_code == 401
    assert login_status(client.app, PASSWORD) == 401
    assert login_status(client.app, NEW_PASSWORD) == 401
    assert audits(client, "password.changed") == []


@pytest.mark.parametrize(
    "new, confirm, reason",
    [
        ("1qaz2wsx3edc4rfv", None, "This password is on a list of common or breached passwords; choose another."),
        ("short pass", None, "Use at least 15 characters."),
        ("alice alice alice", None, "Passwords cannot contain your username or email address."),
        (NEW_PASSWORD, NEW_PASSWORD + "!", "The two new passwords are not the same."),
        ("", "", "Enter your current password, then the new one twice."),
    ],
    ids=["common", "short", "contains the username", "not confirmed", "empty"],
)
def test_a_refused_new_password_is_400_with_the_reason_and_changes_nothing(app, client, new, confirm, reason):
    sign_in(client)
    other = browser(app, CHROME_WINDOWS)
    sign_in(other)
    before = password_hash(client)

    response = change(client, new=new, confirm=confirm)

    assert response.status_code == 400
    assert reason in response.text
    assert password_hash(client) == before
    assert failed_logins(client) == 0
    assert signed_in(other) and signed_in(client)
    assert audits(client, "password.changed") == []


def test_with_a_second_factor_the_minimum_is_shorter(client):
    sign_in(client)
    enable_totp(client)
    assert 'minlength="8"' in client.get("/account").text
    response = change(client, new="violet kayak")  # 12 characters
    assert response.status_code == 303, response.text


def test_a_new_password_ends_the_other_sessions_and_revokes_every_refresh_token(app, client, scheduled):
    sign_in(client)
    mine = online_tokens(client)
    mine_offline = tokens_for(client)  # offline_access: revoked too
    other = browser(app, CHROME_WINDOWS)
    theirs = online_tokens(other)
    old_hash = password_hash(client)

    response = change(client)

    assert response.status_code == 303 and response.headers["location"] == "/account?done=password"
    assert signed_in(client), "the current session stays"
    assert "Your password was changed." in client.get(response.headers["location"]).text
    assert not signed_in(other)
    for tokens in (mine, mine_offline, theirs):
        assert not refresh_works(client, tokens["refresh_token"])
    assert live_refresh_tokens(client) == 0
    new_hash = password_hash(client)
    assert new_hash != old_hash and new_hash.startswith("$argon2id$")
    assert login_status(app, PASSWORD) == 401
    assert login_status(app, NEW_PASSWORD) == 303
    (event,) = audits(client, "password.changed")
    assert event.user_id == user_id(client) and event.outcome == "success"
    assert event.detail["sessions_ended"] == 1
    assert NEW_PASSWORD not in str(event.detail) and PASSWORD not in str(event.detail)
    assert len(scheduled) == 1


def test_password_change_needs_the_rate_limit_before_argon2(limited_app, monkeypatch):
    client = TestClient(limited_app, base_url=ISSUER)
    sign_in(client)  # 1 of 3
    services = services_of(client)
    calls: list[object] = []
    original = services.hashing.verify_async

    async def counting_verify(stored_hash, password):  # type: ignore[no-untyped-def]
        calls.append(stored_hash)
        return await original(stored_hash, password)

    monkeypatch.setattr(services.hashing, "verify_async", counting_verify)
    statuses = [change(client, current="not it").status_code for _ in range(3)]

    assert statuses == [401, 401, 429]
    assert len(calls) == 2


@pytest.fixture
def limited_app(settings: Settings) -> Iterator[Starlette]:
    app = create_app(dataclasses.replace(settings, rate_limit_login_account="3/minute"), store=MemoryStore())
    seed(app.state.services)
    with TestClient(app, base_url=ISSUER):
        yield app


# ---- every new POST ----------------------------------------------------------------------------------

POSTS = ["/account/password", "/account/sessions/end-others", "/account/sessions/1/end"]


@pytest.mark.parametrize("path", POSTS)
def test_every_form_needs_its_csrf_token(app, client, path):
    sign_in(client)
    other = browser(app, CHROME_WINDOWS)
    sign_in(other)

    response = client.post(
        path,
        data={"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
        follow_redirects=False,
    )

    assert response.status_code == 403
    assert response.headers["cache-control"] == "no-store"
    assert signed_in(other) and login_status(app, PASSWORD) == 303


@pytest.mark.parametrize("path", POSTS)
def test_every_form_needs_a_session(client, path):
    csrf = form_value(client.get("/login").text, "csrf_token")
    response = client.post(path, data={"csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"


@pytest.mark.parametrize("path", POSTS)
def test_an_oversized_form_is_bad_input(client, path):
    sign_in(client)
    response = client.post(
        path, data={"csrf_token": csrf_of(client), "new_password": "x" * 70000}, follow_redirects=False
    )
    assert response.status_code == 400


# ---- recent authentication ---------------------------------------------------------------------------


def enable_totp(client: TestClient) -> tuple[str, ManualClock]:
    """TOTP confirmed for alice directly (the set-up's own POSTs are tested elsewhere)."""
    services = services_of(client)
    clock = services.clock
    uid = user_id(client)
    with services.sessions.begin() as db:
        secret = services.factors.begin_totp(db, uid)
        assert services.factors.confirm_totp(db, uid, pyotp.TOTP(secret).at(clock.time())).ok
        services.factors.replace_backup_codes(db, uid, [("AAAA-AAAA", services.hashing.hash("AAAA-AAAA"))])
    clock.advance(30)
    return secret, clock


def register_passkey(client: TestClient, authenticator: SoftAuthenticator) -> int:
    token = csrf_of(client)
    options = client.post("/account/passkeys/options", json={"csrf_token": token})
    assert options.status_code == 200, options.text
    body = options.json()
    done = client.post(
        "/account/passkeys",
        json={
            "csrf_token": token,
            "challenge_id": body["challenge_id"],
            "credential": authenticator.create(body["publicKey"]),
            "name": "Laptop",
        },
    )
    assert done.status_code == 200, done.text
    uid = user_id(client)
    with services_of(client).sessions() as db:
        return db.scalar(select(Passkey.id).where(Passkey.user_id == uid))  # type: ignore[no-any-return]


def totp_on(client: TestClient) -> bool:
    uid = user_id(client)
    with services_of(client).sessions() as db:
        return db.scalar(select(TotpCredential.confirmed_at).where(TotpCredential.user_id == uid)) is not None


def backup_hashes(client: TestClient) -> list[str]:
    uid = user_id(client)
    with services_of(client).sessions() as db:
        return sorted(db.scalars(select(BackupCode.code_hash).where(BackupCode.user_id == uid)))


def passkey_count(client: TestClient) -> int:
    uid = user_id(client)
    with services_of(client).sessions() as db:
        return len(list(db.scalars(select(Passkey.id).where(Passkey.user_id == uid))))


@pytest.mark.parametrize("action", ["disable TOTP", "new backup codes", "change password", "remove passkey"])
def test_sensitive_actions_need_a_recent_sign_in(app, client, monkeypatch, action):
    sign_in(client)
    passkey = register_passkey(client, SoftAuthenticator())
    secret, clock = enable_totp(client)
    other = browser(app, CHROME_WINDOWS)
    sign_in_with_code(other, secret, clock)
    before = (totp_on(client), backup_hashes(client), password_hash(client), passkey_count(client))
    age_sign_ins(client)
    services = services_of(client)
    argon2: list[object] = []
    original = services.hashing.verify_async

    async def counting_verify(stored_hash, password):  # type: ignore[no-untyped-def]
        argon2.append(stored_hash)
        return await original(stored_hash, password)

    monkeypatch.setattr(services.hashing, "verify_async", counting_verify)
    code = pyotp.TOTP(secret).at(clock.time())
    path, fields = {
        "disable TOTP": ("/account/totp/disable", {"password": PASSWORD, "code": code}),
        "new backup codes": ("/account/backup-codes", {"password": PASSWORD, "code": code}),
        "change password": (
            "/account/password",
            {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
        ),
        "remove passkey": (f"/account/passkeys/{passkey}/remove", {}),
    }[action]

    response = post(client, path, **fields)

    assert response.status_code == 303 and response.headers["location"] == REAUTH
    assert argon2 == [], "nothing is checked before the recent sign-in"
    assert (totp_on(client), backup_hashes(client), password_hash(client), passkey_count(client)) == before
    assert signed_in(other) and signed_in(client)
    assert failed_logins(client) == 0


def sign_in_with_code(client: TestClient, secret: str, clock: ManualClock) -> None:
    """alice's password, then her TOTP code (she has a second factor now)."""
    csrf = form_value(client.get("/login").text, "csrf_token")
    response = client.post(
        "/login", data={"csrf_token": csrf, "username": "alice", "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"].startswith("/login/totp"), response.text
    page = client.get(response.headers["location"])
    data = {"csrf_token": form_value(page.text, "csrf_token"), "code": pyotp.TOTP(secret).at(clock.time())}
    if 'name="tx"' in page.text:
        data["tx"] = form_value(page.text, "tx")
    clock.advance(30)
    response = client.post("/login/totp", data=data, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/account", response.text


def test_signing_in_again_lets_the_action_through(client):
    sign_in(client)
    age_sign_ins(client)
    assert change(client).headers["location"] == REAUTH

    page = client.get(REAUTH)
    assert page.status_code == 200 and "sign in again" in page.text
    sign_in(client)  # the chain lands back on /account

    assert change(client).status_code == 303
    assert login_status(client.app, NEW_PASSWORD) == 303


# ---- passkey removal ---------------------------------------------------------------------------------


@pytest.fixture(params=[1, 0], ids=["ends sessions", "keeps sessions"])
def passkey_app(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Starlette]:
    app = create_app(dataclasses.replace(settings, passkey_removal_ends_sessions=request.param), store=MemoryStore())
    seed(app.state.services)
    with TestClient(app, base_url=ISSUER):
        yield app


def test_removing_a_passkey_ends_the_other_sessions_when_configured(passkey_app, scheduled):
    ends = passkey_app.state.services.settings.passkey_removal_ends_sessions == 1
    client = browser(passkey_app, FIREFOX_LINUX)
    sign_in(client)
    other = browser(passkey_app, CHROME_WINDOWS)
    theirs = online_tokens(other)  # signed in before the passkey exists: a password is enough
    passkey = register_passkey(client, SoftAuthenticator())

    response = post(client, f"/account/passkeys/{passkey}/remove")

    assert response.status_code == 303 and response.headers["location"] == "/account"
    assert passkey_count(client) == 0
    assert signed_in(client)
    assert signed_in(other) is not ends
    assert refresh_works(client, theirs["refresh_token"]) is not ends
    assert len(scheduled) == (1 if ends else 0)
    (event,) = audits(client, "passkey.removed")
    assert event.detail["sessions_ended"] == (1 if ends else 0)


def test_a_huge_passkey_id_is_404_never_500(client):
    sign_in(client)
    assert post(client, "/account/passkeys/99999999999999999999/remove").status_code == 404
    assert post(client, "/account/passkeys/99999999999999999999/rename", name="x").status_code == 404
