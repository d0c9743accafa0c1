"""Notices of an administrator's changes (idp/cli_notices.py): `idp user set-password` and
`idp user reset-mfa` tell the user by mail, as a change on /account would, through a real
SMTP server; the notice names no secret; without mail, or for a user without an address,
nothing is sent and the command's output is unchanged; an unknown user sends nothing."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from tests.support.smtp import SmtpServer
from tests.test_cli_links import ADDRESS, Cli, add, db, idp, mailing, smtp  # noqa: F401 - fixtures

PASSWORD = "a new admin given pass phrase"


def test_set_password_mails_the_user_a_notice(db: sessionmaker[Session], mailing: Cli, smtp: SmtpServer) -> None:  # noqa: F811
    add(db)
    done = mailing("user", "set-password", "alice", "--password-stdin", input_text=PASSWORD)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    [received] = smtp.wait_for(1)
    assert received.rcpt_tos == (ADDRESS,)
    assert received.message["Subject"] == "An administrator set a new password for your account"
    body = received.part("text/plain")
    assert "command line" in body and PASSWORD not in received.raw.decode("ascii", "replace")


def test_reset_mfa_mails_the_user_a_notice(db: sessionmaker[Session], mailing: Cli, smtp: SmtpServer) -> None:  # noqa: F811
    add(db)
    assert "second factors removed for user alice" in mailing.ok("user", "reset-mfa", "alice")
    [received] = smtp.wait_for(1)
    assert received.message["Subject"] == "An administrator removed your second factors"


def test_no_mail_without_an_address_or_for_an_unknown_user(
    db: sessionmaker[Session],  # noqa: F811
    mailing: Cli,  # noqa: F811
    smtp: SmtpServer,  # noqa: F811
) -> None:
    add(db, email=None)
    mailing.ok("user", "reset-mfa", "alice")
    assert mailing.fails("user", "reset-mfa", "nobody") == "idp: error: no user 'nobody'"
    assert smtp.wait_for(1, timeout=1.0) == []


def test_without_mail_the_output_is_the_same(db: sessionmaker[Session], idp: Cli) -> None:  # noqa: F811
    add(db)
    assert idp.ok("user", "reset-mfa", "alice") == "second factors removed for user alice\n"
