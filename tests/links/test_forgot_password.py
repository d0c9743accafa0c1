"""Forgot password? (issue 18): /login/forgot mails a reset link to the verified address of
the account a typed name names, and every name costs the same work and gets the same page
(a verified address, an unverified one, a disabled or deleted account, no account at all):
the same SQL statements, no Argon2, one mail job, the same 200 page. Limited per client IP
and per name typed; the page never waits on SMTP; the link, once confirmed, sets a new
password, ends every session and still leaves the second factor to the sign-in."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyotp
import pytest
from sqlalchemy import event, select, update
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.app import create_app
from idp.db.models import AuditEvent, IdpSession, OneTimeLink, User
from idp.links import records
from idp.mail.outbox import Job
from idp.settings import Settings
from idp.state.memory import MemoryStore
from idp.web.forgot import SENT, UNAVAILABLE
from tests.conftest import ISSUER
from tests.support.argon2_calls import count_verifications
from tests.support.clock import ManualClock
from tests.support.processes import free_port
from tests.support.rp import form_value
from tests.support.seed import PASSWORD, seed
from tests.support.smtp import Received, SmtpServer, smtp_server

FAST_RETRIES = (0.01, 0.02)
NEW_PASSWORD = "plum tractor velvet orbit"
CASES = [
    pytest.param("alice", id="an account with a verified address"),
    pytest.param("bob", id="an account without a verified address"),
    pytest.param("carol", id="a disabled account"),
    pytest.param("dave", id="a deleted account"),
    pytest.param("nobody", id="no account by that name"),
]
NAMES = [case.values[0] for case in CASES]
_CSRF_VALUE = re.compile(r'(name="csrf_token" value=")[^"]*(")')
_REQUEST_ID = re.compile(r'(<code class="request-id-value">)[^<]*(</code>)')
_LINK = re.compile(re.escape(ISSUER) + r"/link\?t=([A-Za-z0-9_-]+)")
_FORM = re.compile(r"<form\b[^>]*>.*?</form>", re.DOTALL)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')


# ---- the app, its users, its mail ----------------------------------------------------------------


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with smtp_server("plain") as server:
        yield server


@pytest.fixture
def make_app(settings: Settings, clock: ManualClock) -> Iterator[Any]:
    apps: list[Starlette] = []

    def make(smtp_url: str, **limits: str) -> Starlette:
        limits = {"rate_limit_reset_ip": "off", "rate_limit_reset_account": "off", **limits}
        configured = dataclasses.replace(settings, smtp_url=smtp_url, mail_from="id@example.com", **limits)
        app = create_app(configured, store=MemoryStore(), clock=clock, mail_retry_delays_seconds=FAST_RETRIES)
        seed(app.state.services)  # alice and bob, neither address verified
        _add_the_other_accounts(app, clock)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.state.services.mail.close(5.0)


def _add_the_other_accounts(app: Starlette, clock: ManualClock) -> None:
    from idp.users import add_user

    with app.state.services.sessions.begin() as db:
        db.execute(update(User).where(User.username == "alice").values(email_verified=True))
        for username in ("carol", "dave"):
            add_user(
                db,
                username=username,
                email=f"{username}@example.com",
                name=username.title(),
                password_hash=None,
                email_verified=True,
            )
        db.execute(update(User).where(User.username == "carol").values(disabled=True))
        # a tombstone that kept its name: only the SQL's own condition keeps the link from it
        db.execute(update(User).where(User.username == "dave").values(deleted_at=clock.now()))


@pytest.fixture
def app(make_app: Any, smtp: SmtpServer) -> Starlette:
    app: Starlette = make_app(smtp.url(starttls=False))
    return app


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, base_url=ISSUER) as browser:
        yield browser


def ask(client: TestClient, username: str) -> Any:
    csrf = form_value(client.get("/login/forgot").text, "csrf_token")
    return client.post("/login/forgot", data={"csrf_token": csrf, "username": username}, follow_redirects=False)


def page_of(response: Any) -> tuple[int, str]:
    """The status and the page, less what differs for every request anyway."""
    return response.status_code, _REQUEST_ID.sub(r"\1…\2", _CSRF_VALUE.sub(r"\1…\2", response.text))


def delivered(app: Starlette, smtp: SmtpServer, count: int) -> list[Received]:
    assert app.state.services.mail.wait_idle(10.0), "the outbox did not finish"
    received = smtp.wait_for(count, timeout=2.0 if count else 0.2)
    assert len(received) == count, [r.message["Subject"] for r in received]
    return received


def audits(app: Starlette, prefix: str) -> list[AuditEvent]:
    with app.state.services.sessions() as db:
        rows = list(db.scalars(select(AuditEvent).where(AuditEvent.kind.startswith(prefix)).order_by(AuditEvent.id)))
        for row in rows:
            db.expunge(row)
        return rows


def user_id(app: Starlette, username: str) -> int:
    with app.state.services.sessions() as db:
        return int(db.scalar(select(User.id).where(User.username == username)))


# ---- the work each name costs ------------------------------------------------------------------------


@contextmanager
def work_counted(app: Starlette, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[Any]]]:
    """The request's SQL statements (not the mail thread's), Argon2 calls and mail jobs."""
    services = app.state.services
    work: dict[str, list[Any]] = {"sql": [], "argon2": [], "jobs": []}

    def statement(conn: Any, cursor: Any, text: str, parameters: Any, context: Any, executemany: bool) -> None:
        if threading.current_thread().name != "idp-mail":
            work["sql"].append(" ".join(text.split()))

    submit = services.mail.submit

    def counted_submit(job: Job) -> None:
        work["jobs"].append(job)
        submit(job)

    with monkeypatch.context() as patch:
        count_verifications(patch, services.hashing, work["argon2"])
        patch.setattr(services.hashing, "hash", _counted(services.hashing.hash, work["argon2"]))
        patch.setattr(services.mail, "submit", counted_submit)
        event.listen(services.engine, "before_cursor_execute", statement)
        try:
            yield work
        finally:
            event.remove(services.engine, "before_cursor_execute", statement)


def _counted(original: Any, calls: list[Any]) -> Any:
    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(original.__name__)
        return original(*args, **kwargs)

    return counted


def test_every_name_costs_the_same_work_and_gets_the_same_page(app, client, monkeypatch):
    ask(client, "warm-up")  # the first request of an app loads what it keeps
    assert app.state.services.mail.wait_idle(10.0)
    seen = {}
    for name in NAMES:
        csrf = form_value(client.get("/login/forgot").text, "csrf_token")
        with work_counted(app, monkeypatch) as work:
            response = client.post("/login/forgot", data={"csrf_token": csrf, "username": name})
        assert app.state.services.mail.wait_idle(10.0)
        assert response.headers["cache-control"] == "no-store"
        jobs = work.pop("jobs")
        seen[name] = (page_of(response), work, len(jobs))
        assert [job.user_id is not None for job in jobs] == [name == "alice"], "only alice's job names someone"

    reference = seen["alice"]
    assert reference[0][0] == 200 and SENT in reference[0][1]
    assert reference[1]["argon2"] == []
    assert [s.split()[0] for s in reference[1]["sql"]] == ["SELECT", "UPDATE", "INSERT", "INSERT"], reference[1]
    for name in NAMES:
        assert seen[name] == reference, name


def test_only_the_verified_address_gets_a_mail_and_the_database_keeps_only_the_digest(app, client, smtp):
    for name in NAMES:
        assert ask(client, name).status_code == 200

    (mail,) = delivered(app, smtp, 1)
    assert mail.rcpt_tos == ("alice@example.com",)
    assert mail.message["Subject"] == "Reset your password"
    secret = _LINK.search(mail.part("text/plain")).group(1)  # type: ignore[union-attr]
    assert f"/link?t={secret}" in mail.part("text/html")
    alice = user_id(app, "alice")
    with app.state.services.sessions() as db:
        (link,) = db.scalars(select(OneTimeLink))
        assert (link.user_id, link.kind, link.issued_by) == (alice, "reset", "self")
        assert link.secret_digest == records.secret_digest(app.state.services.keyring, secret)
        assert secret not in repr([getattr(link, c.key) for c in OneTimeLink.__table__.columns])
    requested = audits(app, "password.reset_requested")
    assert [(a.user_id is None, a.outcome) for a in requested] == [
        (False, "success"),
        (False, "failure"),
        (False, "failure"),
        (False, "failure"),
        (True, "failure"),
    ]
    assert [a.detail.get("reason") for a in requested] == [
        None,
        "no_verified_address",
        "disabled",
        "deleted",
        "unknown_name",
    ]
    assert not any("nobody" in repr(a.detail) for a in requested), "never the name typed"
    assert [(a.kind, a.user_id) for a in audits(app, "mail.")] == [("mail.sent", user_id(app, "alice"))]


def test_a_newer_request_supersedes_the_older_link(app, client, smtp):
    ask(client, "alice")
    ask(client, "alice")

    first, second = (_LINK.search(m.part("text/plain")).group(1) for m in delivered(app, smtp, 2))  # type: ignore[union-attr]
    assert client.get(f"/link?t={first}").status_code == 410
    assert client.get(f"/link?t={second}").status_code == 200


def test_the_login_page_offers_it_only_when_mail_is_on(settings, clock, app, client):
    assert 'href="/login/forgot"' in client.get("/login").text
    without_mail = create_app(settings, store=MemoryStore(), clock=clock)  # the same database, no IDP_SMTP_URL
    with TestClient(without_mail, base_url=ISSUER) as browser:
        assert "/login/forgot" not in browser.get("/login").text
        shown, answered = browser.get("/login/forgot"), ask_without_a_form(browser, "bob")
        assert UNAVAILABLE in shown.text and (answered.status_code, UNAVAILABLE in answered.text) == (200, True)
    assert audits(without_mail, "password.reset_requested") == [], "nothing to send it with: nothing done"


def ask_without_a_form(client: TestClient, username: str) -> Any:
    csrf = form_value(client.get("/login").text, "csrf_token")
    return client.post("/login/forgot", data={"csrf_token": csrf, "username": username})


# ---- rate limits ---------------------------------------------------------------------------------------


def test_a_fourth_request_for_one_name_within_the_hour_gets_the_too_many_page_known_or_not(make_app, smtp):
    app = make_app(smtp.url(starttls=False), rate_limit_reset_account="3/hour")
    with TestClient(app, base_url=ISSUER) as client:
        for name in ("alice", "nobody"):
            assert [ask(client, name).status_code for _ in range(3)] == [200, 200, 200]
        refused = {name: ask(client, name) for name in ("alice", "nobody")}
        assert len(delivered(app, smtp, 3)) == 3

    assert page_of(refused["alice"]) == page_of(refused["nobody"]), "the refusal says nothing about the name"
    assert refused["alice"].status_code == 429 and "Too many attempts" in refused["alice"].text
    assert refused["alice"].headers["retry-after"] == refused["nobody"].headers["retry-after"]
    assert len(audits(app, "password.reset_requested")) == 6, "a refused request does no work"
    assert {a.detail["scope"] for a in audits(app, "rate_limit.exceeded")} == {"reset_account"}


def test_too_many_requests_from_one_address_get_the_too_many_page(make_app, smtp):
    app = make_app(smtp.url(starttls=False), rate_limit_reset_ip="2/minute")
    with TestClient(app, base_url=ISSUER) as client:
        statuses = [ask(client, name).status_code for name in ("alice", "bob", "carol")]
        refused = ask(client, "dave")

    assert statuses == [200, 200, 429]
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert "Too many attempts" in refused.text
    assert {a.detail["scope"] for a in audits(app, "rate_limit.exceeded")} == {"reset_ip"}


# ---- the mail server down ---------------------------------------------------------------------------


def test_with_the_mail_server_down_the_page_answers_at_once_and_the_failure_is_audited(make_app):
    app = make_app(f"smtp://127.0.0.1:{free_port()}?starttls=off")  # nothing listens there
    with TestClient(app, base_url=ISSUER) as client:
        started = time.monotonic()
        answered = ask(client, "alice")
        elapsed = time.monotonic() - started
        unknown = ask(client, "nobody")
        assert app.state.services.mail.wait_idle(10.0)  # before the app's shutdown gives the retries up

    assert elapsed < 5.0, f"the page waited {elapsed:.1f} s on SMTP"
    assert page_of(answered) == page_of(unknown) and answered.status_code == 200
    (failed,) = audits(app, "mail.")
    assert (failed.kind, failed.outcome, failed.user_id) == ("mail.failed", "failure", user_id(app, "alice"))
    assert failed.detail == {"mail": "link_reset", "attempts": 3, "reason": "connection_failed"}


# ---- following the link ---------------------------------------------------------------------------------


def sign_in(client: TestClient, password: str = PASSWORD) -> Any:
    csrf = form_value(client.get("/login").text, "csrf_token")
    return client.post(
        "/login", data={"csrf_token": csrf, "username": "alice", "password": password}, follow_redirects=False
    )


def turn_on_totp(client: TestClient, clock: ManualClock) -> str:
    assert sign_in(client).headers["location"] == "/account"
    csrf = form_value(client.get("/account").text, "csrf_token")
    setup = client.post("/account/totp/setup", data={"csrf_token": csrf}, follow_redirects=False)
    secret = re.search(r'data-totp-secret="([A-Z2-7]+)"', setup.text).group(1)  # type: ignore[union-attr]
    code = pyotp.TOTP(secret).at(clock.time())
    confirmed = client.post("/account/totp/confirm", data={"csrf_token": csrf, "code": code}, follow_redirects=False)
    assert confirmed.status_code == 200, confirmed.text
    return secret


def enter_code(client: TestClient, location: str, code: str) -> Any:
    page = client.get(location)
    form = next((f for f in _FORM.findall(page.text) if 'name="code"' in f), None)
    assert form is not None, f"no code step at {location}: {page.text[:300]}"
    action = re.search(r'action="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    return client.post(action, data=dict(_HIDDEN.findall(form)) | {"code": code}, follow_redirects=False)


def test_the_mailed_link_sets_a_new_password_ends_every_session_and_still_asks_for_the_second_factor(app, smtp, clock):
    signed_in = TestClient(app, base_url=ISSUER)
    totp = turn_on_totp(signed_in, clock)
    clock.advance(30)
    browser = TestClient(app, base_url=ISSUER)
    assert ask(browser, "alice").status_code == 200
    reset_mail = [m for m in delivered(app, smtp, 2) if m.message["Subject"] == "Reset your password"]
    link = _LINK.search(reset_mail[0].part("text/plain")).group(0)  # type: ignore[union-attr]

    confirmation = browser.get(link)
    assert confirmation.status_code == 200 and "alice" in confirmation.text
    confirmed = browser.post(
        "/link",
        data={"csrf_token": form_value(confirmation.text, "csrf_token"), "t": form_value(confirmation.text, "t")},
        follow_redirects=False,
    )
    assert confirmed.status_code == 303 and confirmed.headers["location"].startswith("/link/password?l=")
    choose = browser.get(confirmed.headers["location"])
    chosen = browser.post(
        "/link/password",
        data={
            "csrf_token": form_value(choose.text, "csrf_token"),
            "l": form_value(choose.text, "l"),
            "new_password": NEW_PASSWORD,
            "confirm_password": NEW_PASSWORD,
        },
        follow_redirects=False,
    )

    assert chosen.status_code == 303 and chosen.headers["location"] != "/account", "the second factor is still asked"
    assert browser.get("/account", follow_redirects=False).status_code != 200
    finished = enter_code(browser, chosen.headers["location"], pyotp.TOTP(totp).at(clock.time()))
    assert finished.status_code == 303 and finished.headers["location"] == "/account", finished.text
    assert browser.get("/account").status_code == 200
    assert signed_in.get("/account", follow_redirects=False).status_code != 200, "the old session ended"
    alice = user_id(app, "alice")
    with app.state.services.sessions() as db:
        live = db.scalars(select(IdpSession).where(IdpSession.user_id == alice, IdpSession.ended_at.is_(None))).all()
        assert len(live) == 1, "only the session the reset's sign-in started"
    stranger = TestClient(app, base_url=ISSUER)
    assert sign_in(stranger).status_code == 401, "the old password no longer works"
    assert sign_in(stranger, NEW_PASSWORD).status_code == 303
