"""Notices of credential changes made on /account (issue 18): a passkey added or removed,
the authenticator app turned on or off, new backup codes, a new password. Each reaches a
real SMTP server (tests/support/smtp.py) once the change has committed, names no secret
(no password, TOTP key or backup code), and a refused change sends nothing. With the mail
server unreachable the page answers at once (it never waits on SMTP) and the failure is
audited after the retries."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.app import create_app
from idp.db.models import AuditEvent, Passkey
from idp.settings import Settings
from idp.state.memory import MemoryStore
from tests.account.support import sign_in_with_code
from tests.conftest import ISSUER
from tests.support.authenticator import SoftAuthenticator
from tests.support.clock import ManualClock
from tests.support.loopback_http import loopback_server
from tests.support.rp import form_value
from tests.support.seed import PASSWORD, seed
from tests.support.smtp import Received, SmtpServer, smtp_server

NEW_PASSWORD = "plum tractor velvet orbit"
FAST_RETRIES = (0.01, 0.02)


def mail_app(settings: Settings, clock: ManualClock, smtp_url: str) -> Starlette:
    configured = dataclasses.replace(settings, smtp_url=smtp_url, mail_from="id@example.com")
    app = create_app(configured, store=MemoryStore(), clock=clock, mail_retry_delays_seconds=FAST_RETRIES)
    seed(app.state.services)
    return app


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with smtp_server("plain") as server:
        yield server


@pytest.fixture
def browser(settings: Settings, clock: ManualClock, smtp: SmtpServer) -> Iterator[TestClient]:
    app = mail_app(settings, clock, smtp.url(starttls=False))
    with TestClient(app, base_url=ISSUER) as client:
        yield client


def sign_in(client: TestClient) -> None:
    csrf = form_value(client.get("/login").text, "csrf_token")
    response = client.post(
        "/login", data={"csrf_token": csrf, "username": "alice", "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/account", response.text


def post(client: TestClient, path: str, **fields: str) -> Any:
    csrf = form_value(client.get("/account").text, "csrf_token")
    return client.post(path, data={"csrf_token": csrf, **fields}, follow_redirects=False)


def sent_mail(client: TestClient, smtp: SmtpServer, count: int) -> list[Received]:
    assert client.app.state.services.mail.wait_idle(10.0)  # type: ignore[attr-defined]
    received = smtp.wait_for(count)
    assert len(received) == count, [r.message["Subject"] for r in received]
    return received


def everything_in(received: Received) -> str:
    return received.raw.decode("ascii", "replace") + received.part("text/plain") + received.part("text/html")


def mail_audits(client: TestClient) -> list[AuditEvent]:
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        rows = list(db.scalars(select(AuditEvent).where(AuditEvent.kind.startswith("mail.")).order_by(AuditEvent.id)))
        for row in rows:
            db.expunge(row)
        return rows


# ---- each change, its notice --------------------------------------------------------------------------


def test_a_new_password_sends_a_notice_without_either_password(browser, smtp):
    sign_in(browser)

    response = post(
        browser,
        "/account/password",
        current_password=PASSWORD,
        new_password=NEW_PASSWORD,
        confirm_password=NEW_PASSWORD,
    )

    assert response.status_code == 303, response.text
    (notice,) = sent_mail(browser, smtp, 1)
    assert notice.message["Subject"] == "Your password was changed"
    assert notice.rcpt_tos == ("alice@example.com",)
    body = everything_in(notice)
    assert PASSWORD not in body and NEW_PASSWORD not in body
    assert [(a.kind, a.detail["mail"]) for a in mail_audits(browser)] == [("mail.sent", "password_changed")]


def test_the_authenticator_app_on_new_backup_codes_and_off_each_send_a_notice_without_a_secret(browser, smtp, clock):
    sign_in(browser)
    setup = post(browser, "/account/totp/setup")
    secret = re.search(r'data-totp-secret="([A-Z2-7]+)"', setup.text).group(1)  # type: ignore[union-attr]
    confirmed = post(browser, "/account/totp/confirm", code=pyotp.TOTP(secret).at(clock.time()))
    first_codes = re.findall(r"\b[0-9A-Z]{4}-[0-9A-Z]{4}\b", confirmed.text)
    assert confirmed.status_code == 200 and first_codes, confirmed.text
    clock.advance(30)
    sign_in_with_code(browser, secret, clock.time())  # new codes add a credential: an mfa sign-in
    clock.advance(30)
    regenerated = post(browser, "/account/backup-codes", password=PASSWORD, code=pyotp.TOTP(secret).at(clock.time()))
    new_codes = re.findall(r"\b[0-9A-Z]{4}-[0-9A-Z]{4}\b", regenerated.text)
    assert regenerated.status_code == 200 and new_codes, regenerated.text
    clock.advance(30)
    disabled = post(browser, "/account/totp/disable", password=PASSWORD, code=pyotp.TOTP(secret).at(clock.time()))
    assert disabled.status_code == 303, disabled.text

    received = sent_mail(browser, smtp, 3)

    assert [r.message["Subject"] for r in received] == [
        "An authenticator app was turned on for your account",
        "New backup codes were made for your account",
        "The authenticator app was turned off for your account",
    ]
    for notice in received:
        body = everything_in(notice)
        assert secret not in body and PASSWORD not in body
        assert not any(code in body for code in first_codes + new_codes)


def test_a_passkey_added_and_removed_each_send_a_notice(browser, smtp):
    sign_in(browser)
    csrf = form_value(browser.get("/account").text, "csrf_token")
    options = browser.post("/account/passkeys/options", json={"csrf_token": csrf}).json()
    credential = SoftAuthenticator().create(options["publicKey"])
    added = browser.post(
        "/account/passkeys",
        json={"csrf_token": csrf, "challenge_id": options["challenge_id"], "credential": credential, "name": "Evil"},
    )
    assert added.status_code == 200, added.text
    with browser.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        passkey = db.scalar(select(Passkey.id))
    assert post(browser, f"/account/passkeys/{passkey}/remove").status_code == 303

    received = sent_mail(browser, smtp, 2)

    assert [r.message["Subject"] for r in received] == [
        "A passkey was added to your account",
        "A passkey was removed from your account",
    ]
    assert "Evil" not in everything_in(received[0]), "nothing the user typed goes into a notice"


def test_a_refused_change_sends_nothing(browser, smtp):
    sign_in(browser)

    response = post(
        browser,
        "/account/password",
        current_password="not it",
        new_password=NEW_PASSWORD,
        confirm_password=NEW_PASSWORD,
    )

    assert response.status_code == 401
    assert browser.app.state.services.mail.wait_idle(5.0)  # type: ignore[attr-defined]
    assert smtp.received == [] and mail_audits(browser) == []


# ---- the mail server down ---------------------------------------------------------------------------------


def test_with_the_mail_server_hanging_the_page_answers_at_once_and_the_failure_is_audited(settings, clock):
    """A server that accepts and never greets: smtplib would wait its 10 s timeout on it."""
    with loopback_server(lambda server, conn: server.stop.wait(30)) as silent:
        app = mail_app(settings, clock, f"smtp://127.0.0.1:{silent.port}?starttls=off")
        client = TestClient(app, base_url=ISSUER)
        sign_in(client)
        started = time.monotonic()
        response = post(
            client,
            "/account/password",
            current_password=PASSWORD,
            new_password=NEW_PASSWORD,
            confirm_password=NEW_PASSWORD,
        )
        elapsed = time.monotonic() - started
        assert response.status_code == 303 and response.headers["location"] == "/account?done=password"
        assert elapsed < 5.0, f"the page waited {elapsed:.1f} s on SMTP"
        assert client.get("/account").status_code == 200
        assert mail_audits(client) == [], "still trying"
    # it hangs up and stops listening: the next attempts find nobody there
    mail = app.state.services.mail
    assert mail.wait_idle(10.0)
    mail.close(5.0)
    (failed,) = mail_audits(client)
    assert (failed.kind, failed.outcome) == ("mail.failed", "failure")
    assert failed.detail == {"mail": "password_changed", "attempts": 3, "reason": "connection_failed"}
