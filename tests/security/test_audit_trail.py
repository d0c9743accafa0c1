"""The audit trail (idp/audit/trail.py): sign-ins, failures, token issuance and revocation
write rows with who, from where and with what outcome; every event is also one JSON line
on the `idp.audit` logger; and the admin reads and acts on it with `idp audit tail` and
`idp user unlock` (run as the admin runs them: a subprocess on a SQLite file)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from idp.audit.trail import record_audit
from idp.clock import SystemClock, clock_of
from idp.db.engine import make_engine, make_sessionmaker
from idp.db.migrate import upgrade
from idp.db.models import AuditEvent, User
from idp.lockout import Lockout
from idp.state.memory import MemoryStore
from idp.users import add_user
from tests.conftest import ISSUER
from tests.support.rp import SHOP, AuthRequest, start, submit_login, tokens_for
from tests.support.seed import PASSWORD

AGENT = "AuditTrailTest/1.0 (+https://example.test)"


@pytest.fixture
def browser(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, base_url=ISSUER, headers={"User-Agent": AGENT}) as client:
        yield client


def events(client: TestClient, kind: str) -> list[AuditEvent]:
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        rows = list(db.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))
        db.expunge_all()
        return rows


def user_id_of(client: TestClient, username: str) -> int:
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        user_id = db.scalar(select(User.id).where(User.username == username))
        assert user_id is not None
        return user_id


def assert_from_the_browser(row: AuditEvent) -> None:
    assert row.ip == "testclient"
    assert row.user_agent == AGENT


# ---- rows written by the HTTP flows -------------------------------------------------------


def test_a_successful_login_writes_a_row_with_user_ip_and_user_agent(browser):
    response = submit_login(browser, start(browser, AuthRequest()).headers["location"])
    assert response.status_code == 303

    [row] = events(browser, "login.password.succeeded")
    assert row.user_id == user_id_of(browser, "alice")
    assert row.outcome == "success"
    assert_from_the_browser(row)
    assert events(browser, "login.password.failed") == []


def test_a_failed_login_writes_a_row_for_a_known_and_for_an_unknown_name(browser):
    url = start(browser, AuthRequest()).headers["location"]
    assert submit_login(browser, url, password=PASSWORD + "x").status_code == 401
    assert submit_login(browser, url, username="nobody").status_code == 401

    known, unknown = events(browser, "login.password.failed")
    assert known.user_id == user_id_of(browser, "alice")
    assert known.outcome == "failure"
    assert known.detail["known_user"] is True
    assert_from_the_browser(known)
    assert unknown.user_id is None
    assert unknown.outcome == "failure"
    assert unknown.detail["known_user"] is False
    assert_from_the_browser(unknown)
    assert events(browser, "login.password.succeeded") == []
    for row in (known, unknown):
        assert PASSWORD not in json.dumps(row.detail)


def test_token_issuance_and_revocation_write_rows_with_client_and_user(browser):
    tokens = tokens_for(browser)
    alice = user_id_of(browser, "alice")

    [issued] = events(browser, "token.issued")
    assert (issued.client_id, issued.user_id, issued.outcome) == ("shop", alice, "success")
    assert issued.detail["grant_type"] == "authorization_code"
    assert_from_the_browser(issued)

    revoked = browser.post(
        "/revoke", data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"}, auth=SHOP
    )
    assert revoked.status_code == 200, revoked.text

    [row] = events(browser, "token.revoked")
    assert (row.client_id, row.user_id, row.outcome) == ("shop", alice, "success")
    assert row.detail["token_type"] == "refresh"
    assert_from_the_browser(row)
    for event in (issued, row):  # never a token in the trail
        assert tokens["refresh_token"] not in json.dumps(event.detail)
        assert tokens["access_token"] not in json.dumps(event.detail)


def test_a_refresh_is_audited_with_its_grant_type(browser):
    tokens = tokens_for(browser)
    refreshed = browser.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, auth=SHOP
    )
    assert refreshed.status_code == 200, refreshed.text

    assert [r.detail["grant_type"] for r in events(browser, "token.issued")] == ["authorization_code", "refresh_token"]


# ---- the log line -------------------------------------------------------------------------


def test_record_audit_logs_exactly_one_json_line_per_event(app, caplog):
    sessions = app.state.services.sessions
    with caplog.at_level(logging.INFO, logger="idp.audit"), sessions.begin() as db:
        record_audit(
            db, "login.password.failed", ip="192.0.2.10", user_agent="agent/1", outcome="failure", known_user=False
        )
        record_audit(db, "rate_limit.exceeded", ip="192.0.2.11", outcome="refused", scope="login_ip")

    lines = [r for r in caplog.records if r.name == "idp.audit"]
    assert len(lines) == 2
    first, second = (json.loads(r.getMessage()) for r in lines)
    assert (first["kind"], first["outcome"], first["ip"]) == ("login.password.failed", "failure", "192.0.2.10")
    assert first["user_agent"] == "agent/1"
    assert first["detail"] == {"known_user": False}
    assert (second["kind"], second["outcome"], second["ip"]) == ("rate_limit.exceeded", "refused", "192.0.2.11")
    assert all("\n" not in r.getMessage() for r in lines)


def test_a_login_through_http_logs_the_same_events_it_stores(browser, caplog):
    with caplog.at_level(logging.INFO, logger="idp.audit"):
        url = start(browser, AuthRequest()).headers["location"]
        assert submit_login(browser, url, password=PASSWORD + "x").status_code == 401

    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "idp.audit"]
    assert [e["kind"] for e in logged] == ["login.password.failed"]
    assert (logged[0]["ip"], logged[0]["user_agent"], logged[0]["outcome"]) == ("testclient", AGENT, "failure")


# ---- the CLI ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Idp:
    """`idp` against one scratch SQLite database (as tests/test_cli.py runs it)."""

    home: Path

    @property
    def url(self) -> str:
        return f"sqlite:///{self.home / 'idp.db'}"

    def __call__(self, *args: str) -> Result:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
        env.update(
            IDP_DATABASE_URL=self.url,
            IDP_DATA_DIR=str(self.home / "var"),
            IDP_ARGON2_TIME_COST="1",
            IDP_ARGON2_MEMORY_KIB="8192",
        )
        done = subprocess.run(
            [sys.executable, "-m", "idp", *args],
            input="",
            capture_output=True,
            text=True,
            cwd=self.home,
            env=env,
            timeout=60,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result.stdout


def assert_fails_in_one_line(result: Result, *fragments: str) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[tuple[Idp, Any]]:
    """A migrated database with alice and bob and a short history:
    user.added alice, user.added bob, login.password.failed alice, account.locked alice,
    login.password.succeeded bob, token.issued bob."""
    idp = Idp(tmp_path)
    engine = make_engine(idp.url)
    upgrade(engine)
    sessions = make_sessionmaker(engine, SystemClock())  # as the `idp` commands run against it
    with sessions.begin() as db:
        alice = add_user(db, username="alice", email="alice@example.com", name="Alice", password_hash=None).id
        bob = add_user(db, username="bob", email=None, name=None, password_hash=None).id
    with sessions.begin() as db:
        record_audit(db, "login.password.failed", user_id=alice, ip="192.0.2.1", outcome="failure", known_user=True)
    with sessions.begin() as db:
        record_audit(db, "account.locked", user_id=alice, ip="192.0.2.1", outcome="success", seconds=1800)
    with sessions.begin() as db:
        record_audit(db, "login.password.succeeded", user_id=bob, ip="192.0.2.2", outcome="success")
    with sessions.begin() as db:
        record_audit(
            db,
            "token.issued",
            user_id=bob,
            client_id="shop",
            ip="192.0.2.2",
            outcome="success",
            grant_type="authorization_code",
        )
    yield idp, sessions
    engine.dispose()


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


def test_audit_tail_prints_the_newest_events_oldest_first_as_json_lines(admin):
    idp, _ = admin
    printed = json_lines(idp.ok("audit", "tail", "-n", "2"))

    assert [e["kind"] for e in printed] == ["login.password.succeeded", "token.issued"]
    assert printed[0]["username"] == "bob"
    assert printed[1]["client_id"] == "shop"
    assert printed[1]["detail"] == {"grant_type": "authorization_code"}
    assert printed[1]["ip"] == "192.0.2.2"


def test_audit_tail_filters_by_kind_prefix_and_by_user(admin):
    idp, _ = admin
    assert [e["kind"] for e in json_lines(idp.ok("audit", "tail", "--kind", "account."))] == ["account.locked"]
    assert [e["kind"] for e in json_lines(idp.ok("audit", "tail", "--kind", "login."))] == [
        "login.password.failed",
        "login.password.succeeded",
    ]

    for typed in ("alice", " ALICE "):
        by_alice = json_lines(idp.ok("audit", "tail", "--user", typed))
        assert [e["kind"] for e in by_alice] == ["user.added", "login.password.failed", "account.locked"]
        assert {e["username"] for e in by_alice} == {"alice"}
    assert idp.ok("audit", "tail", "--user", "nobody") == ""


@pytest.mark.parametrize("lines", ["0", "-1", "10001"])
def test_audit_tail_refuses_a_line_count_out_of_range(admin, lines):
    idp, _ = admin
    result = idp("audit", "tail", "-n", lines)

    assert_fails_in_one_line(result, "--lines")
    assert result.stdout == ""


def lock(sessions, username: str) -> None:  # type: ignore[no-untyped-def]
    with sessions.begin() as db:
        now = clock_of(db).now()
        db.execute(
            update(User)
            .where(User.username == username)
            .values(failed_logins=5, failures_since=now, locked_until=now + timedelta(minutes=30))
        )


def user_list(idp: Idp) -> dict[str, str]:
    return {row[0]: row[2] for row in (line.split("\t") for line in idp.ok("user", "list").splitlines())}


def test_user_unlock_clears_the_lock_and_audits_it(admin):
    idp, sessions = admin
    lock(sessions, "alice")
    assert user_list(idp)["alice"].startswith("locked until ")
    assert user_list(idp)["bob"] == "active"

    assert idp.ok("user", "unlock", "alice").strip() == "unlocked user alice"

    with sessions() as db:
        alice = db.scalar(select(User).where(User.username == "alice"))
        assert (alice.failed_logins, alice.failures_since, alice.locked_until) == (0, None, None)
        [event] = db.scalars(select(AuditEvent).where(AuditEvent.kind == "account.unlocked")).all()
        assert event.user_id == alice.id
        assert event.outcome == "success"
        assert event.detail["was_locked"] is True
    assert user_list(idp)["alice"] == "active"
    assert [e["kind"] for e in json_lines(idp.ok("audit", "tail", "-n", "1"))] == ["account.unlocked"]


def test_user_unlock_after_failures_counted_by_the_lockout(admin):
    idp, sessions = admin
    lockout = Lockout(MemoryStore(), attempts=5, seconds=1800)
    with sessions.begin() as db:
        alice = db.scalar(select(User.id).where(User.username == "alice"))
        records = [lockout.record_failure(db, alice) for _ in range(5)]
    assert records[-1].locked_now

    assert "locked until" in user_list(idp)["alice"]
    idp.ok("user", "unlock", "ALICE")

    with sessions() as db:
        user = db.scalar(select(User).where(User.username == "alice"))
        assert (user.failed_logins, user.locked_until) == (0, None)
    assert user_list(idp)["alice"] == "active"


def test_unlocking_an_unknown_user_fails_in_one_line_and_changes_nothing(admin):
    idp, sessions = admin
    lock(sessions, "alice")

    result = idp("user", "unlock", "nobody")

    assert_fails_in_one_line(result, "nobody")
    assert result.stdout == ""
    with sessions() as db:
        assert db.scalars(select(AuditEvent).where(AuditEvent.kind == "account.unlocked")).all() == []
    assert user_list(idp)["alice"].startswith("locked until ")
