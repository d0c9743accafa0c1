"""One-time links from the command line (issue 18): `idp user invite|recover|verify-email|links|
revoke-link`, and the verification mail of `idp user add|set --email`, run as the admin runs
them (a subprocess) on SQLite and PostgreSQL, with mail through a real SMTP server
(tests/support/smtp.py). A link's secret is shown once (the output or the mail) and stored
only as a digest; bad input is one line on stderr and changes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from idp.clock import SystemClock
from idp.db.engine import make_engine, make_sessionmaker
from idp.db.models import AuditEvent, OneTimeLink
from idp.links.delivery import SUBJECTS
from idp.links.records import LIFETIMES
from idp.settings import Settings
from idp.users import add_user
from tests.conftest import ISSUER
from tests.support.smtp import Received, SmtpServer, smtp_server

ADDRESS = "alice.quill@example.com"
NEW_ADDRESS = "nova.quill@example.org"
LINK_URL = re.compile(re.escape(f"{ISSUER}/link?t=") + r"([A-Za-z0-9_-]+)")


class Cli:
    """`idp …` on the test's database and master key; `mail_url` turns mail on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mail_url = ""

    def __call__(self, *args: str, input_text: str = "") -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
        env.update(
            IDP_ISSUER=ISSUER,
            IDP_DATABASE_URL=self.settings.database_url,
            IDP_SECRET_KEY=self.settings.secret_key,
            IDP_DATA_DIR=self.settings.data_dir,
        )
        if self.mail_url:
            env.update(IDP_SMTP_URL=self.mail_url, IDP_MAIL_FROM="id@example.com")
        return subprocess.run(
            [sys.executable, "-m", "idp", *args], env=env, input=input_text, capture_output=True, text=True, timeout=120
        )

    def ok(self, *args: str) -> str:
        done = self(*args)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return done.stdout

    def fails(self, *args: str) -> str:
        """The one line on stderr."""
        done = self(*args)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stdout
        (line,) = done.stderr.splitlines()
        return line


@pytest.fixture
def db(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine: Engine = make_engine(settings.database_url)
    yield make_sessionmaker(engine, SystemClock())
    engine.dispose()


@pytest.fixture
def idp(settings: Settings) -> Cli:
    return Cli(settings)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with smtp_server("plain") as server:
        yield server


@pytest.fixture
def mailing(idp: Cli, smtp: SmtpServer) -> Cli:
    idp.mail_url = smtp.url(starttls=False)
    return idp


def add(
    db: sessionmaker[Session],
    username: str = "alice",
    email: str | None = ADDRESS,
    *,
    verified: bool = False,
    disabled: bool = False,
) -> None:
    with db.begin() as session:
        user = add_user(session, username=username, email=email, name="Alice", password_hash=None)
        user.email_verified, user.disabled = verified, disabled


def links(db: sessionmaker[Session]) -> list[OneTimeLink]:
    with db() as session:
        rows = list(session.scalars(select(OneTimeLink).order_by(OneTimeLink.id)))
        session.expunge_all()
        return rows


def audits(db: sessionmaker[Session], prefix: str) -> list[tuple[str, dict[str, object]]]:
    with db() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.kind.startswith(prefix)).order_by(AuditEvent.id))
        return [(row.kind, dict(row.detail)) for row in rows]


def everything(db: sessionmaker[Session]) -> list[object]:
    """The rows a link command may change, to show that nothing did."""
    with db() as session:
        return [
            *session.execute(text("SELECT * FROM one_time_links ORDER BY id")).all(),
            *session.execute(text("SELECT id, email, email_verified, disabled FROM users ORDER BY id")).all(),
            session.scalar(text("SELECT count(*) FROM audit_events")),
        ]


def secret_in(output: str) -> str:
    found = LINK_URL.search(output)
    assert found is not None, output
    return found[1]


def near(moment: datetime, expected: datetime) -> bool:
    return abs(moment - expected) < timedelta(minutes=2)


def only_mail(smtp: SmtpServer) -> Received:
    (received,) = smtp.wait_for(1)
    return received


# ---- printed links --------------------------------------------------------------------------------


def test_a_printed_invitation_shows_its_secret_once_and_the_database_keeps_only_its_digest(idp, db):
    add(db)

    out = idp.ok("user", "invite", "alice")

    secret = secret_in(out)
    assert len(secret) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", secret)
    assert out.splitlines()[-1] == f"{ISSUER}/link?t={secret}"  # on a line of its own, to copy
    assert "mail is off" in out and "privately" in out
    (link,) = links(db)
    assert (link.kind, link.issued_by, link.email) == ("invite", "cli", None)
    assert link.link_id in out
    assert near(link.expires_at, datetime.now(UTC) + LIFETIMES["invite"])
    with db() as session:
        for row in session.execute(text("SELECT * FROM one_time_links")).all():
            assert not any(secret in str(value) for value in row)
    [(_, detail)] = audits(db, "link.")
    assert detail["by"] == "cli" and detail["link_kind"] == "invite" and detail["link_id"] == link.link_id
    assert secret not in str(audits(db, ""))


def test_a_second_invitation_supersedes_the_first(idp, db):
    add(db)
    idp.ok("user", "invite", "alice")

    second = idp.ok("user", "invite", "alice", "--expires", "30m")

    assert "replaces 1 open one" in second
    first, newer = links(db)
    assert near(newer.expires_at, datetime.now(UTC) + timedelta(minutes=30))
    listed = [line.split("\t") for line in idp.ok("user", "links", "alice").splitlines()]
    assert [(row[0], row[1], row[2], row[5]) for row in listed] == [
        (first.link_id, "invite", "revoked (superseded)", "cli"),
        (newer.link_id, "invite", "pending", "cli"),
    ]
    assert listed[1][3] == f"{newer.created_at:%Y-%m-%d %H:%M} UTC"
    assert listed[1][4] == f"{newer.expires_at:%Y-%m-%d %H:%M} UTC"
    assert [d["superseded"] for _, d in audits(db, "link.issued")] == [0, 1]


def test_links_lists_every_kind_and_never_a_secret(idp, db):
    add(db, verified=True)
    invite = idp.ok("user", "invite", "alice")
    recover = idp.ok("user", "recover", "alice", "--print")

    listing = idp.ok("user", "links", "alice")

    assert [line.split("\t")[1:3] for line in listing.splitlines()] == [["invite", "pending"], ["recover", "pending"]]
    assert secret_in(invite) not in listing and secret_in(recover) not in listing
    assert "--print was given" in recover
    add(db, "bob", None)
    assert idp.ok("user", "links", "bob") == ""


def test_revoke_link_revokes_an_open_link_once_and_is_audited(idp, db):
    add(db)
    idp.ok("user", "invite", "alice")
    (link,) = links(db)

    out = idp.ok("user", "revoke-link", "alice", link.link_id)

    assert link.link_id in out
    assert idp.ok("user", "links", "alice").split("\t")[2] == "revoked (admin)"
    [(_, detail)] = audits(db, "link.revoked")
    assert (detail["link_id"], detail["link_kind"], detail["by"]) == (link.link_id, "invite", "cli")
    before = everything(db)
    assert "no open link" in idp.fails("user", "revoke-link", "alice", link.link_id)  # spent: not open
    assert everything(db) == before


@pytest.mark.parametrize(
    "username, link_id",
    [
        pytest.param("alice", "0123456789ab", id="an id that is nobody's"),
        pytest.param("bob", None, id="another user's link"),
    ],
)
def test_revoke_link_with_a_wrong_id_is_one_line_and_changes_nothing(idp, db, username, link_id):
    add(db)
    add(db, "bob", None)
    idp.ok("user", "invite", "alice")
    before = everything(db)

    line = idp.fails("user", "revoke-link", username, link_id or links(db)[0].link_id)

    assert "no open link" in line and f"idp user links {username}" in line
    assert everything(db) == before


# ---- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["soon", "0m", "4m", "15d", "337h", "-1h", "1w", "7 d", "99999999999d"],
)
def test_a_bad_expires_is_one_line_naming_the_bounds_and_changes_nothing(idp, db, value):
    add(db)
    before = everything(db)

    line = idp.fails("user", "invite", "alice", f"--expires={value}")

    assert "--expires" in line and "5 minutes and 14 days" in line
    assert everything(db) == before


@pytest.mark.parametrize("value, expected", [("5m", timedelta(minutes=5)), ("14d", timedelta(days=14))])
def test_expires_takes_its_bounds(idp, db, value, expected):
    add(db, verified=True)
    idp.ok("user", "recover", "alice", "--expires", value)
    (link,) = links(db)
    assert near(link.expires_at, datetime.now(UTC) + expected)


@pytest.mark.parametrize("command", ["invite", "recover", "verify-email"])
@pytest.mark.parametrize(
    "username, problem, refused",
    [
        pytest.param("nobody", None, "no user 'nobody'", id="unknown"),
        pytest.param("alice", "disabled", "is disabled", id="disabled"),
        pytest.param("alice", "deleted", "was deleted", id="deleted"),
    ],
)
def test_no_link_for_an_unknown_disabled_or_deleted_user(idp, db, command, username, problem, refused):
    add(db, disabled=problem == "disabled")
    if problem == "deleted":
        with db.begin() as session:
            session.execute(text("UPDATE users SET deleted_at = :now"), {"now": datetime.now(UTC)})
    before = everything(db)

    assert refused in idp.fails("user", command, username)

    assert everything(db) == before


@pytest.mark.parametrize(
    "email, verified, refused",
    [
        pytest.param(None, False, "has no address to verify", id="no address"),
        pytest.param(ADDRESS, True, "verified already", id="verified already"),
    ],
)
def test_verify_email_needs_an_unverified_address(idp, db, email, verified, refused):
    add(db, email=email, verified=verified)
    before = everything(db)

    assert refused in idp.fails("user", "verify-email", "alice")

    assert everything(db) == before


def test_a_printed_verification_link_still_names_the_address_it_verifies(idp, db):
    add(db)

    out = idp.ok("user", "verify-email", "alice")

    assert "mail is off" in out and secret_in(out)
    (link,) = links(db)
    assert (link.kind, link.email) == ("verify", ADDRESS)


def test_each_issuing_commands_default_lifetime_in_its_help_is_the_real_one(idp):
    for command, kind in (("invite", "invite"), ("recover", "recover")):
        hours = int(LIFETIMES[kind] / timedelta(hours=1))
        assert f"default {hours}h" in " ".join(idp.ok("user", command, "--help").split())


# ---- mailed links -----------------------------------------------------------------------------------


def test_an_invitation_is_mailed_to_the_address_on_file_and_its_use_would_verify_it(mailing, db, smtp):
    add(db)

    out = mailing.ok("user", "invite", "alice")

    mail = only_mail(smtp)
    assert mail.rcpt_tos == (ADDRESS,) and mail.message["Subject"] == SUBJECTS["invite"]
    secret = secret_in(mail.part("text/plain"))
    assert f'href="{ISSUER}/link?t={secret}"' in mail.part("text/html")
    (link,) = links(db)
    assert link.email == ADDRESS
    assert out.strip() == (
        f"invitation for alice sent to a…@example.com (link {link.link_id}, "
        f"expires {link.expires_at:%Y-%m-%d %H:%M} UTC)"
    )
    assert secret not in out and ADDRESS not in out
    assert [(kind, d.get("mail")) for kind, d in audits(db, "mail.")] == [("mail.sent", "link_invite")]
    assert [d["by"] for _, d in audits(db, "link.issued")] == ["cli"]


def test_a_recovery_link_for_an_unverified_address_is_printed_not_mailed_and_says_why(mailing, db, smtp):
    add(db)

    out = mailing.ok("user", "recover", "alice")

    assert "not verified" in out and "goes only to a verified one" in out and secret_in(out)
    (link,) = links(db)
    assert (link.kind, link.email) == ("recover", None)
    assert smtp.wait_for(1, timeout=0.5) == [] and audits(db, "mail.") == []


def test_a_recovery_link_for_a_verified_address_is_mailed(mailing, db, smtp):
    add(db, verified=True)

    out = mailing.ok("user", "recover", "alice")

    mail = only_mail(smtp)
    assert mail.message["Subject"] == SUBJECTS["recover"] and LINK_URL.search(mail.part("text/plain"))
    assert "recovery link for alice sent to a…@example.com" in out
    (link,) = links(db)
    assert link.email == ADDRESS  # the address it went to: changing the address revokes it (it verifies nothing)


def test_print_shows_the_link_even_with_mail_on(mailing, db, smtp):
    add(db)

    out = mailing.ok("user", "invite", "alice", "--print")

    assert "--print was given" in out and secret_in(out)
    assert links(db)[0].email is None  # handed over in person: its use proves nothing about the address
    assert smtp.wait_for(1, timeout=0.5) == []


def test_a_mail_that_fails_is_one_line_that_says_to_use_print(idp, db, smtp):
    idp.mail_url = smtp.url(starttls=True)  # STARTTLS required; this server offers none: a permanent failure
    add(db)

    line = idp.fails("user", "invite", "alice")

    assert "not mailed to a…@example.com" in line and "starttls_unavailable" in line and "--print" in line
    assert [(kind, d.get("mail")) for kind, d in audits(db, "mail.")] == [("mail.failed", "link_invite")]


# ---- a new address's verification ---------------------------------------------------------------------


def test_user_set_email_with_mail_on_sends_a_verification_link_to_the_new_address(mailing, db, smtp):
    add(db, verified=True)

    out = mailing.ok("user", "set", "alice", "--email", NEW_ADDRESS)

    assert out.splitlines()[0] == "updated user alice: email, email_verified"
    assert "address verification link for alice sent to n…@example.org" in out
    mail = only_mail(smtp)
    assert mail.rcpt_tos == (NEW_ADDRESS,) and mail.message["Subject"] == SUBJECTS["verify"]
    assert LINK_URL.search(mail.part("text/plain"))
    (link,) = links(db)
    assert (link.kind, link.email, link.issued_by) == ("verify", NEW_ADDRESS, "cli")


def test_user_add_email_with_mail_on_sends_a_verification_link(mailing, db, smtp):
    out = mailing.ok("user", "add", "alice", "--email", ADDRESS)

    assert out.splitlines()[0] == "added user alice (no password yet: `idp user invite alice` lets them choose one)"
    assert "address verification link for alice sent to a…@example.com" in out
    assert only_mail(smtp).rcpt_tos == (ADDRESS,)
    assert [(link.kind, link.email) for link in links(db)] == [("verify", ADDRESS)]


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["set", "alice", "--email", NEW_ADDRESS, "--email-verified", "yes"], id="set a verified address"),
        pytest.param(["set", "alice", "--email", ADDRESS], id="set the same address"),
        pytest.param(["set", "alice", "--name", "Alice Q"], id="set no address"),
        pytest.param(["add", "bob", "--email", NEW_ADDRESS, "--email-verified"], id="add a verified address"),
    ],
)
def test_no_verification_link_when_the_address_is_verified_or_unchanged(mailing, db, smtp, args):
    add(db)

    out = mailing.ok("user", *args)

    assert "verification" not in out
    assert links(db) == [] and smtp.wait_for(1, timeout=0.3) == []


def test_without_mail_user_set_email_issues_no_link(idp, db):
    add(db, verified=True)

    assert idp.ok("user", "set", "alice", "--email", NEW_ADDRESS) == "updated user alice: email, email_verified\n"

    assert links(db) == []
