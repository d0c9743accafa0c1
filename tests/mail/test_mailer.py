"""E-mail (issue 18) against a real SMTP server (aiosmtpd on loopback, tests/support/smtp.py):
a notice arrives as plain text with an HTML alternative, from IDP_MAIL_FROM to the user's
address; smtp:// sends only after STARTTLS with a verified certificate (a server that does
not offer it, or whose certificate is not trusted, gets nothing); smtps:// and AUTH work;
a server that is down is tried again and then audited, never the address; no user's name
or address can add a header or a recipient; without IDP_SMTP_URL nothing is queued.

The notices are called as idp/account calls them (services.mail.notify); the /account pages
that queue them are tests/account/test_notices.py's."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select, update
from starlette.applications import Starlette

from idp.app import create_app
from idp.db.models import AuditEvent, User
from idp.mail import notices
from idp.mail.outbox import Job
from idp.settings import Settings
from idp.state.memory import MemoryStore
from tests.support.clock import ManualClock
from tests.support.processes import free_port
from tests.support.seed import seed
from tests.support.smtp import smtp_server

MAIL_FROM = "Example ID <id@example.com>"
FAST_RETRIES = (0.01, 0.02)  # the seam for RETRY_DELAYS_SECONDS: three attempts, no long sleep
IP = "203.0.113.7"

MakeApp = Callable[..., Starlette]


@pytest.fixture
def mail_app(settings: Settings, clock: ManualClock) -> Iterator[MakeApp]:
    apps: list[Starlette] = []

    def make(smtp_url: str, **more: Any) -> Starlette:
        configured = dataclasses.replace(settings, smtp_url=smtp_url, mail_from=MAIL_FROM, **more)
        app = create_app(configured, store=MemoryStore(), clock=clock, mail_retry_delays_seconds=FAST_RETRIES)
        seed(app.state.services)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.state.services.mail.close(5.0)


def user_id(app: Starlette, username: str = "alice") -> int:
    with app.state.services.sessions() as db:
        return int(db.scalar(select(User.id).where(User.username == username)))


def set_user(app: Starlette, username: str = "alice", **values: Any) -> None:
    with app.state.services.sessions.begin() as db:
        db.execute(update(User).where(User.username == username).values(**values))


def notify_and_wait(app: Starlette, notice: notices.Notice = notices.PASSKEY_ADDED, username: str = "alice") -> None:
    mail = app.state.services.mail
    mail.notify(notice, user_id(app, username), ip=IP)
    assert mail.wait_idle(10.0), "the outbox did not finish"


def mail_audits(app: Starlette) -> list[AuditEvent]:
    with app.state.services.sessions() as db:
        rows = list(db.scalars(select(AuditEvent).where(AuditEvent.kind.startswith("mail.")).order_by(AuditEvent.id)))
        for row in rows:
            db.expunge(row)
        return rows


# ---- delivered ------------------------------------------------------------------------------------


def test_a_notice_reaches_the_smtp_server_as_text_and_html_from_mail_from_to_the_user(mail_app):
    with smtp_server("plain") as server:
        app = mail_app(server.url(starttls=False))

        notify_and_wait(app, notices.PASSKEY_ADDED)

        (got,) = server.wait_for(1)
    assert got.mail_from == "id@example.com" and got.rcpt_tos == ("alice@example.com",)
    message = got.message
    assert message["From"] == MAIL_FROM
    assert message["To"] == "Alice <alice@example.com>"
    assert message["Subject"] == "A passkey was added to your account"
    assert message["Auto-Submitted"] == "auto-generated" and message["Message-ID"] and message["Date"]
    assert message.get_content_type() == "multipart/alternative"
    text, html = got.part("text/plain"), got.part("text/html")
    for body in (text, html):
        assert "Hello Alice" in body and "A passkey was added" in body
        assert IP in body and "2031-01-01 00:00 UTC" in body  # when (the app's clock) and from where
        assert "http://localhost:8000/account" in body
    assert html.lstrip().startswith("<!doctype html>")
    (sent,) = mail_audits(app)
    assert (sent.kind, sent.outcome, sent.user_id) == ("mail.sent", "success", user_id(app))
    assert sent.detail["mail"] == "passkey_added" and sent.detail["attempts"] == 1
    assert "alice@example.com" not in str(sent.detail), "the audit names the user, never the address"


def test_starttls_with_a_verified_certificate_and_auth_with_the_password_from_a_file(mail_app, tmp_path):
    password_file = tmp_path / "smtp-password"
    password_file.write_text("s3cret pass\n")
    with smtp_server("starttls", credentials=("idp", "s3cret pass")) as server:
        app = mail_app(server.url(user="idp"), smtp_ca_file=server.ca_file, smtp_password_file=str(password_file))

        notify_and_wait(app, notices.TOTP_ENABLED)

        (got,) = server.wait_for(1)
    assert got.over_tls and got.login == "idp"
    assert got.message["Subject"] == "An authenticator app was turned on for your account"
    assert [a.kind for a in mail_audits(app)] == ["mail.sent"]


def test_smtps_is_tls_from_the_first_byte(mail_app):
    with smtp_server("smtps", credentials=("idp", "pw")) as server:
        app = mail_app(server.url(user="idp", password="pw"), smtp_ca_file=server.ca_file)

        notify_and_wait(app, notices.PASSWORD_CHANGED)

        (got,) = server.wait_for(1)
    assert got.over_tls and got.login == "idp" and got.message["Subject"] == "Your password was changed"


# ---- refused: no STARTTLS, an untrusted certificate ---------------------------------------------------


def test_a_server_that_does_not_offer_starttls_gets_nothing_and_the_failure_is_audited(mail_app):
    """smtp:// without ?starttls=off: a server (or a man in the middle) that strips STARTTLS
    is not sent the message in clear text, and asking again will not change that."""
    with smtp_server("plain", credentials=None) as server:
        app = mail_app(server.url())  # STARTTLS required

        notify_and_wait(app)

        assert server.received == []
    (failed,) = mail_audits(app)
    assert (failed.kind, failed.outcome, failed.user_id) == ("mail.failed", "failure", user_id(app))
    assert failed.detail["reason"] == "starttls_unavailable" and failed.detail["mail"] == "passkey_added"
    assert failed.detail["attempts"] == 1, "permanent: not tried again"


def test_a_certificate_from_an_untrusted_ca_is_refused(mail_app):
    with smtp_server("starttls") as server:
        app = mail_app(server.url())  # the system's CAs, which did not sign the test server's certificate

        notify_and_wait(app)

        assert server.received == []
    (failed,) = mail_audits(app)
    assert failed.kind == "mail.failed" and failed.detail["reason"] == "tls_failed"


# ---- the server down --------------------------------------------------------------------------------


def test_a_server_that_is_down_is_tried_three_times_then_audited(mail_app):
    app = mail_app(f"smtp://127.0.0.1:{free_port()}?starttls=off")  # nothing listens there

    notify_and_wait(app)

    (failed,) = mail_audits(app)
    assert (failed.kind, failed.outcome) == ("mail.failed", "failure")
    assert failed.detail == {"mail": "passkey_added", "attempts": 3, "reason": "connection_failed"}


# ---- headers cannot be injected ---------------------------------------------------------------------


def test_a_name_with_line_breaks_adds_no_header_and_no_recipient(mail_app):
    with smtp_server("plain") as server:
        app = mail_app(server.url(starttls=False))
        set_user(app, name="Alice\r\nBcc: eve@evil.example\r\nSubject: Reset now")

        notify_and_wait(app)

        (got,) = server.wait_for(1)
    assert got.rcpt_tos == ("alice@example.com",)
    assert got.message["Bcc"] is None and got.message.get_all("Subject") == ["A passkey was added to your account"]
    assert got.message["To"].addresses[0].addr_spec == "alice@example.com"
    assert b"\r\nBcc:" not in got.raw and b"\r\nSubject: Reset now" not in got.raw


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("alice@example.com\r\nBcc: eve@evil.example", id="CRLF and a Bcc"),
        pytest.param("alice@example.com\nRCPT TO:<eve@evil.example>", id="LF and an SMTP command"),
        pytest.param("alice@example.com, eve@evil.example", id="two addresses"),
        pytest.param("Eve <eve@evil.example>", id="a display name"),
    ],
)
def test_an_address_that_is_not_one_plain_address_is_not_sent_to(mail_app, address):
    with smtp_server("plain") as server:
        app = mail_app(server.url(starttls=False))
        set_user(app, email=address)

        notify_and_wait(app)

        assert server.received == []
    (failed,) = mail_audits(app)
    assert failed.kind == "mail.failed" and failed.detail["reason"] == "invalid_address"
    assert "evil" not in str(failed.detail)


# ---- nothing to send ---------------------------------------------------------------------------------


def test_without_smtp_configured_nothing_is_queued_and_nothing_fails(app):
    mail = app.state.services.mail
    assert not mail.enabled

    mail.notify(notices.PASSWORD_CHANGED, user_id(app), ip=IP)

    assert mail.wait_idle(0.0)
    assert not any(thread.name == "idp-mail" for thread in threading.enumerate()), "no sending thread"
    assert mail_audits(app) == []


def test_a_user_without_an_address_gets_no_mail_and_no_failure(mail_app):
    with smtp_server("plain") as server:
        app = mail_app(server.url(starttls=False))
        set_user(app, email=None)

        notify_and_wait(app)

        assert server.received == []
    assert mail_audits(app) == []


def test_a_notice_goes_to_an_unverified_address_too(mail_app):
    """Notices go to any address on file (it is the owner's); one-time links will not."""
    with smtp_server("plain") as server:
        app = mail_app(server.url(starttls=False))
        set_user(app, email_verified=False)

        notify_and_wait(app)

        assert len(server.wait_for(1)) == 1


def test_a_job_for_nobody_is_queued_then_dropped_without_mail_or_audit(mail_app):
    """A reset asked for a name no link may reach still queues its job (the same work as any
    other request: idp/links/forgot.py); the outbox sends it nowhere and audits nothing."""
    with smtp_server("plain") as server:
        app = mail_app(server.url(starttls=False))
        mail = app.state.services.mail

        mail.submit(Job("link_reset", "Reset your password", None, {"link": "-", "expires": "-", "at": "-"}, True))

        assert mail.wait_idle(10.0)
        assert server.received == []
    assert mail_audits(app) == []
