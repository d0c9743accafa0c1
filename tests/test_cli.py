"""The `idp` command (DESIGN.md §3), run as the admin runs it: a real subprocess against a
real SQLite file. Errors are one line on stderr and a non-zero exit; nothing is half-written."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from idp.oidc.signing_keys import PUBLISH_LEAD_SECONDS
from tests.support.processes import IdpProcess, free_port, shared_redis

GOOD_PASSWORD = "violet-harbor-tram-42"
SHOP_SECRET = "Zq8rT1vX4bN7mK2pL9sD3fG6hJ0wE5yU8iO1aC4e"  # 40 characters
VALID_CLIENTS = f"""\
[[clients]]
client_id = "shop"
client_name = "Shop"
client_secret = "{SHOP_SECRET}"
redirect_uris = ["https://shop.example/callback"]
post_logout_redirect_uris = ["https://shop.example/"]
grant_types = ["authorization_code", "refresh_token"]
response_types = ["code"]
token_endpoint_auth_method = "client_secret_basic"
scope = "openid profile email offline_access"

[[clients]]
client_id = "app"
client_name = "Native app"
redirect_uris = ["http://127.0.0.1:8765/callback"]
token_endpoint_auth_method = "none"
"""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Idp:
    """The `idp` command bound to one scratch directory: its database and its data dir."""

    home: Path

    @property
    def db_path(self) -> Path:
        return self.home / "idp.db"

    def env(self, **extra: str) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith("IDP_")}
        env.update(
            IDP_DATABASE_URL=f"sqlite:///{self.db_path}",
            IDP_DATA_DIR=str(self.home / "var"),
            IDP_ARGON2_TIME_COST="1",
            IDP_ARGON2_MEMORY_KIB="8192",
        )
        env.update(extra)
        return env

    def __call__(self, *args: str, stdin: str | None = None, **extra_env: str) -> Result:
        done = subprocess.run(
            [sys.executable, "-m", "idp", *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            cwd=self.home,
            env=self.env(**extra_env),
            timeout=60,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, stdin: str | None = None, **extra_env: str) -> str:
        result = self(*args, stdin=stdin, **extra_env)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result.stdout

    def users(self) -> dict[str, list[str]]:
        """`idp user list` as {username: [email, state, subject]}."""
        rows = [line.split("\t") for line in self.ok("user", "list").splitlines()]
        return {row[0]: row[1:] for row in rows}

    def query(self, sql: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db_path) as connection:
            return connection.execute(sql).fetchall()

    def database_bytes(self) -> bytes:
        """The database file and any WAL/journal beside it: everything SQLite wrote."""
        return b"".join(path.read_bytes() for path in sorted(self.home.glob("idp.db*")))

    def write(self, name: str, text: str) -> str:
        path = self.home / name
        path.write_text(text, encoding="utf-8")
        return str(path)


def assert_fails_in_one_line(result: Result, *fragments: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    idp = Idp(tmp_path_factory.mktemp("template"))
    idp.ok("db", "upgrade")
    return idp.home


@pytest.fixture
def fresh(tmp_path: Path) -> Idp:
    """No database yet."""
    return Idp(tmp_path)


@pytest.fixture
def idp(tmp_path: Path, migrated_template: Path) -> Idp:
    """A migrated, empty database (a copy of one `idp db upgrade`, to keep the suite quick)."""
    for path in migrated_template.glob("idp.db*"):
        shutil.copy(path, tmp_path / path.name)
    return Idp(tmp_path)


# db upgrade


def test_db_upgrade_migrates_a_fresh_sqlite_file_and_is_idempotent(fresh: Idp) -> None:
    first = fresh.ok("db", "upgrade")
    tables = {row[0] for row in fresh.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"users", "clients", "signing_keys", "alembic_version"} <= tables
    version = fresh.query("SELECT version_num FROM alembic_version")

    assert fresh.ok("db", "upgrade") == first
    assert fresh.query("SELECT version_num FROM alembic_version") == version
    assert fresh.users() == {}


NEEDS_MIGRATED_DATABASE = [
    pytest.param(["user", "list"], None, id="user list"),
    pytest.param(["user", "add", "alice", "--password-stdin"], GOOD_PASSWORD + "\n", id="user add"),
    pytest.param(["user", "disable", "alice"], None, id="user disable"),
    pytest.param(["clients", "sync", "clients.toml"], None, id="clients sync"),
    pytest.param(["keys", "rotate"], None, id="keys rotate"),
    pytest.param(["keys", "list"], None, id="keys list"),
    pytest.param(["serve", "--port", "8299"], None, id="serve"),
]


@pytest.mark.parametrize(("args", "stdin"), NEEDS_MIGRATED_DATABASE)
def test_commands_on_a_database_that_is_not_migrated_say_to_run_db_upgrade(
    fresh: Idp, args: list[str], stdin: str | None
) -> None:
    fresh.write("clients.toml", VALID_CLIENTS)
    assert_fails_in_one_line(fresh(*args, stdin=stdin), "idp db upgrade")


# user add / list


def test_user_add_creates_an_active_user_with_an_opaque_subject(idp: Idp) -> None:
    out = idp.ok(
        "user",
        "add",
        "alice",
        "--email",
        "alice@example.com",
        "--name",
        "Alice",
        "--password-stdin",
        stdin=GOOD_PASSWORD + "\n",
    )
    assert "alice" in out

    users = idp.users()
    assert list(users) == ["alice"]
    email, state, subject = users["alice"]
    assert (email, state) == ("alice@example.com", "active")
    assert "alice" not in subject.lower()
    assert len(subject) >= 16
    [(stored_hash, name)] = idp.query("SELECT password_hash, name FROM users")
    assert name == "Alice"
    assert isinstance(stored_hash, str) and stored_hash.startswith("$argon2id$")
    assert GOOD_PASSWORD.encode() not in idp.database_bytes()


def test_two_users_get_different_subjects(idp: Idp) -> None:
    idp.ok("user", "add", "alice", "--password-stdin", stdin=GOOD_PASSWORD + "\n")
    idp.ok("user", "add", "bob.smith", "--password-stdin", stdin=GOOD_PASSWORD + "\n")
    users = idp.users()
    assert users["alice"][2] != users["bob.smith"][2]


@pytest.mark.parametrize(
    "again",
    [
        pytest.param("alice", id="same name"),
        pytest.param("ALICE", id="same name in capitals"),
        pytest.param(" alice ", id="same name with spaces around"),
    ],
)
def test_adding_an_existing_user_again_fails_and_changes_nothing(idp: Idp, again: str) -> None:
    idp.ok("user", "add", "alice", "--email", "alice@example.com", "--password-stdin", stdin=GOOD_PASSWORD + "\n")
    before = idp.users()

    result = idp("user", "add", again, "--email", "other@example.com", "--password-stdin", stdin=GOOD_PASSWORD + "x\n")

    assert_fails_in_one_line(result, "alice", "already exists")
    assert result.stdout == ""
    assert idp.users() == before


WEAK_PASSWORDS = [
    pytest.param("violet-harbor7", "at least 15", id="refuses 14 characters"),
    pytest.param("1qaz2wsx3edc4rfv", "common", id="refuses a common 16-character password"),
    pytest.param("a" * 20, "repeated", id="refuses one repeated character"),
    pytest.param("abcdefghijklmnopq", "sequence", id="refuses a letter sequence"),
    pytest.param("alice-walks-the-long-road", "username", id="refuses a password containing the username"),
]


@pytest.mark.parametrize(("password", "reason"), WEAK_PASSWORDS)
def test_a_weak_password_is_refused_and_no_user_is_created(idp: Idp, password: str, reason: str) -> None:
    result = idp("user", "add", "alice", "--email", "alice@example.com", "--password-stdin", stdin=password + "\n")

    line = assert_fails_in_one_line(result, "password", reason)
    assert password not in line
    assert result.stdout == ""
    assert idp.users() == {}
    assert idp.query("SELECT count(*) FROM users") == [(0,)]


BAD_NEW_USERS = [
    pytest.param(["alice", "--email", "not-an-email"], "--email", id="refuses an email without @"),
    pytest.param(["alice", "--email", "alice @example.com"], "--email", id="refuses an email with a space"),
    pytest.param(["alice", "--email", "alice@"], "--email", id="refuses an email without a domain"),
    pytest.param(["al ice"], "username", id="refuses a username with a space"),
    pytest.param([""], "username", id="refuses an empty username"),
    pytest.param(["   "], "username", id="refuses a blank username"),
    pytest.param(["alice/bob"], "username", id="refuses a username with a slash"),
    pytest.param(["a" * 129], "username", id="refuses a 129-character username"),
]


@pytest.mark.parametrize(("args", "named"), BAD_NEW_USERS)
def test_a_bad_username_or_email_is_refused_and_no_user_is_created(idp: Idp, args: list[str], named: str) -> None:
    result = idp("user", "add", *args, "--password-stdin", stdin=GOOD_PASSWORD + "\n")

    assert_fails_in_one_line(result, named)
    assert idp.users() == {}


@pytest.mark.parametrize(
    "stdin",
    [
        pytest.param("", id="empty standard input"),
        pytest.param("\n", id="an empty line"),
    ],
)
def test_password_stdin_without_a_password_is_refused(idp: Idp, stdin: str) -> None:
    result = idp("user", "add", "alice", "--password-stdin", stdin=stdin)

    assert_fails_in_one_line(result, "--password-stdin")
    assert idp.users() == {}


# user disable


def test_user_disable_marks_the_user_disabled(idp: Idp) -> None:
    idp.ok("user", "add", "alice", "--email", "alice@example.com", "--password-stdin", stdin=GOOD_PASSWORD + "\n")
    idp.ok("user", "add", "bob.smith", "--password-stdin", stdin=GOOD_PASSWORD + "\n")
    subject = idp.users()["alice"][2]

    assert "alice" in idp.ok("user", "disable", "alice")

    users = idp.users()
    assert users["alice"] == ["alice@example.com", "disabled", subject]
    assert users["bob.smith"][1] == "active"


def test_disabling_an_unknown_user_fails_cleanly(idp: Idp) -> None:
    idp.ok("user", "add", "alice", "--password-stdin", stdin=GOOD_PASSWORD + "\n")

    result = idp("user", "disable", "mallory")

    assert_fails_in_one_line(result, "mallory")
    assert result.stdout == ""
    assert idp.users()["alice"][1] == "active"


def test_require_mfa_flags_the_user_and_reset_mfa_removes_every_second_factor(idp: Idp) -> None:
    idp.ok("user", "add", "alice", "--password-stdin", stdin=GOOD_PASSWORD + "\n")
    assert "alice" in idp.ok("user", "require-mfa", "alice")
    assert idp.users()["alice"][1] == "active,mfa-required"
    [(user_id,)] = idp.query("SELECT id FROM users WHERE username = 'alice'")
    with sqlite3.connect(idp.db_path) as connection:  # as /account would leave them
        connection.execute(
            "INSERT INTO totp_credentials (user_id, secret_encrypted, created_at, confirmed_at) "
            "VALUES (?, x'01', '2026-01-01', '2026-01-01')",
            (user_id,),
        )
        connection.execute(
            "INSERT INTO backup_codes (user_id, lookup, code_hash, created_at) VALUES (?, 'l', 'h', '2026-01-01')",
            (user_id,),
        )

    assert "alice" in idp.ok("user", "reset-mfa", "alice")

    assert idp.query("SELECT count(*) FROM totp_credentials") == [(0,)]
    assert idp.query("SELECT count(*) FROM backup_codes") == [(0,)]
    kinds = [kind for (kind,) in idp.query("SELECT kind FROM audit_events ORDER BY id")]
    assert kinds[-2:] == ["user.mfa_required", "user.mfa_reset"]


@pytest.mark.parametrize("command", ["require-mfa", "reset-mfa"])
def test_mfa_commands_on_an_unknown_user_fail_cleanly(idp: Idp, command: str) -> None:
    assert_fails_in_one_line(idp("user", command, "mallory"), "mallory")


# email_verified: user add --email-verified, user set


def user_rows(idp: Idp) -> list[tuple[object, ...]]:
    """Everything `user set` may change, and the audit trail, to show nothing changed."""
    return idp.query("SELECT username, email, email_verified, name FROM users ORDER BY username") + idp.query(
        "SELECT count(*) FROM audit_events"
    )


def email_and_verified(idp: Idp, username: str) -> tuple[object, bool]:
    [(email, verified)] = idp.query(f"SELECT email, email_verified FROM users WHERE username = '{username}'")
    return email, bool(verified)


def last_audit_event(idp: Idp) -> tuple[str, dict[str, object]]:
    [(kind, detail)] = idp.query("SELECT kind, detail FROM audit_events ORDER BY id DESC LIMIT 1")
    return str(kind), json.loads(str(detail))


def test_user_add_with_email_verified_marks_the_address_verified(idp: Idp) -> None:
    idp.ok("user", "add", "alice", "--email", "alice@example.com", "--email-verified")
    idp.ok("user", "add", "bob", "--email", "bob@example.com")

    assert email_and_verified(idp, "alice") == ("alice@example.com", True)
    assert email_and_verified(idp, "bob") == ("bob@example.com", False)
    assert idp.query("SELECT kind, detail FROM audit_events ORDER BY id") == [
        ("user.added", '{"email_verified": true}'),
        ("user.added", '{"email_verified": false}'),
    ]


BAD_VERIFIED_NEW_USERS = [
    pytest.param(
        ["carol", "--email-verified"], ["--email-verified", "--email"], id="refuses --email-verified without --email"
    ),
    pytest.param(
        ["carol", "--email", "ALICE@example.com", "--email-verified"],
        ["ALICE@example.com", "already verified for another user"],
        id="refuses an address another user verified, in other capitals",
    ),
    pytest.param(
        ["carol", "--email", "carol@example.com", "--name", "x" * 201],
        ["--name", "200"],
        id="refuses a 201-character name",
    ),
    pytest.param(
        ["carol", "--email", "carol@example.com", "--name", "Carol\x1b[2J"],
        ["--name", "control"],
        id="refuses a name with a control character",
    ),
]


@pytest.mark.parametrize(("args", "fragments"), BAD_VERIFIED_NEW_USERS)
def test_user_add_refuses_a_bad_verification_and_adds_nobody(idp: Idp, args: list[str], fragments: list[str]) -> None:
    idp.ok("user", "add", "alice", "--email", "alice@example.com", "--email-verified")
    before = user_rows(idp)

    result = idp("user", "add", *args, "--password-stdin", stdin=GOOD_PASSWORD + "\n")

    line = assert_fails_in_one_line(result, *fragments)
    assert result.returncode == 2 and result.stdout == ""
    assert "alice" not in line.lower().replace("alice@example.com", "")  # the other user is not named
    assert user_rows(idp) == before


def test_user_add_may_reuse_an_address_another_user_has_unverified(idp: Idp) -> None:
    idp.ok("user", "add", "alice", "--email", "alice@example.com")
    idp.ok("user", "add", "bob", "--email", "Alice@Example.com", "--email-verified")
    assert email_and_verified(idp, "bob") == ("Alice@Example.com", True)


def test_user_set_email_verified_yes_and_no(idp: Idp) -> None:
    idp.ok("user", "add", "alice", "--email", "alice@example.com")

    assert "email_verified" in idp.ok("user", "set", "alice", "--email-verified", "yes")
    assert email_and_verified(idp, "alice") == ("alice@example.com", True)
    assert last_audit_event(idp) == (
        "user.updated",
        {"by": "cli", "changed": ["email_verified"], "email_verified": True},
    )

    idp.ok("user", "set", "alice", "--email-verified", "no")
    assert email_and_verified(idp, "alice") == ("alice@example.com", False)
    assert last_audit_event(idp)[1]["email_verified"] is False


def test_user_set_a_new_address_clears_the_verification(idp: Idp) -> None:
    idp.ok("user", "add", "alice", "--email", "alice@example.com", "--email-verified")

    idp.ok("user", "set", "alice", "--email", "alice@new.example")

    assert email_and_verified(idp, "alice") == ("alice@new.example", False)
    assert last_audit_event(idp) == (
        "user.updated",
        {"by": "cli", "changed": ["email", "email_verified"], "email_verified": False},
    )


def test_user_set_a_new_address_and_its_verification_in_one_command(idp: Idp) -> None:
    idp.ok("user", "add", "alice", "--email", "alice@example.com")

    idp.ok("user", "set", "alice", "--email", "alice@new.example", "--email-verified", "yes")

    assert email_and_verified(idp, "alice") == ("alice@new.example", True)
    assert last_audit_event(idp)[1]["changed"] == ["email", "email_verified"]


def test_user_set_the_same_address_again_keeps_it_verified_and_changes_nothing(idp: Idp) -> None:
    idp.ok("user", "add", "alice", "--email", "alice@example.com", "--email-verified")
    events = idp.query("SELECT count(*) FROM audit_events")

    assert "unchanged" in idp.ok("user", "set", "alice", "--email", "alice@example.com")

    assert email_and_verified(idp, "alice") == ("alice@example.com", True)
    assert idp.query("SELECT count(*) FROM audit_events") == events  # nothing changed: nothing audited


def test_user_set_name_leaves_the_address_and_its_verification_alone(idp: Idp) -> None:
    idp.ok("user", "add", "alice", "--email", "alice@example.com", "--email-verified", "--name", "Alice")

    idp.ok("user", "set", "ALICE", "--name", "Alice Liddell")

    assert idp.query("SELECT email, email_verified, name FROM users") == [("alice@example.com", 1, "Alice Liddell")]
    assert last_audit_event(idp)[1]["changed"] == ["name"]


def test_user_set_an_empty_address_or_name_removes_it(idp: Idp) -> None:
    idp.ok("user", "add", "alice", "--email", "alice@example.com", "--email-verified", "--name", "Alice")

    idp.ok("user", "set", "alice", "--email", "", "--name", "")

    assert idp.query("SELECT email, email_verified, name FROM users") == [(None, 0, None)]


BAD_USER_SETS = [
    pytest.param(["alice"], ["nothing to change"], id="refuses no option at all"),
    pytest.param(
        ["alice", "--email-verified", "maybe"],
        ["--email-verified", "yes", "no"],
        id="refuses --email-verified other than yes or no",
    ),
    pytest.param(["alice", "--email-verified"], ["--email-verified"], id="refuses --email-verified without a value"),
    pytest.param(
        ["alice", "--email", "not-an-email"], ["--email", "not an email address"], id="refuses an email without @"
    ),
    pytest.param(
        ["alice", "--email", "alice @example.com", "--email-verified", "yes"],
        ["--email"],
        id="refuses an email with a space, even with its verification",
    ),
    pytest.param(["alice", "--name", "x" * 201], ["--name", "200"], id="refuses a 201-character name"),
    pytest.param(["alice", "--name", "Alice\nLiddell"], ["--name", "control"], id="refuses a name with a newline"),
    pytest.param(["nobody", "--email-verified", "yes"], ["nobody"], id="refuses an unknown user"),
    pytest.param(
        ["carol", "--email-verified", "yes"],
        ["--email-verified", "no address", "--email"],
        id="refuses to verify a user without an address",
    ),
    pytest.param(
        ["alice", "--email", "", "--email-verified", "yes"],
        ["--email-verified", "no address"],
        id="refuses to verify an address removed in the same command",
    ),
    pytest.param(
        ["bob", "--email-verified", "yes"],
        ["BOB@example.com", "already verified for another user"],
        id="refuses to verify an address another user verified",
    ),
    pytest.param(
        ["alice", "--email", "Bob@Example.com", "--email-verified", "yes"],
        ["Bob@Example.com", "already verified for another user"],
        id="refuses a new address another user verified, in other capitals",
    ),
]


@pytest.mark.parametrize(("args", "fragments"), BAD_USER_SETS)
def test_user_set_refuses_bad_input_and_changes_nothing(idp: Idp, args: list[str], fragments: list[str]) -> None:
    idp.ok("user", "add", "alice", "--email", "alice@example.com", "--name", "Alice")
    idp.ok("user", "add", "bob.smith", "--email", "bob@example.com", "--email-verified")
    idp.ok("user", "add", "bob", "--email", "BOB@example.com")  # the same address, unverified
    idp.ok("user", "add", "carol")
    before = user_rows(idp)

    result = idp("user", "set", *args)

    line = assert_fails_in_one_line(result, *fragments)
    assert result.returncode == 2 and result.stdout == ""
    assert "bob.smith" not in line  # whose address it is stays unsaid
    assert user_rows(idp) == before


def test_a_verified_address_is_free_again_once_its_user_no_longer_has_it_verified(idp: Idp) -> None:
    idp.ok("user", "add", "alice", "--email", "shared@example.com", "--email-verified")
    idp.ok("user", "add", "bob", "--email", "Shared@Example.com")
    assert_fails_in_one_line(idp("user", "set", "bob", "--email-verified", "yes"), "already verified")

    idp.ok("user", "set", "alice", "--email-verified", "no")
    idp.ok("user", "set", "bob", "--email-verified", "yes")

    assert email_and_verified(idp, "alice") == ("shared@example.com", False)
    assert email_and_verified(idp, "bob") == ("Shared@Example.com", True)
    assert_fails_in_one_line(idp("user", "set", "alice", "--email-verified", "yes"), "already verified")


# clients sync


def sync_counts(output: str) -> tuple[int, int, int]:
    found = re.search(r"(\d+) added, (\d+) updated, (\d+) removed", output)
    assert found, output
    return int(found[1]), int(found[2]), int(found[3])


def stored_clients(idp: Idp) -> list[tuple[object, ...]]:
    return idp.query("SELECT client_id, secret_digest, config FROM clients ORDER BY client_id")


def test_clients_sync_adds_the_file_s_clients_and_a_second_run_adds_none(idp: Idp) -> None:
    path = idp.write("clients.toml", VALID_CLIENTS)

    assert sync_counts(idp.ok("clients", "sync", path)) == (2, 0, 0)
    assert [row[0] for row in stored_clients(idp)] == ["app", "shop"]
    assert sync_counts(idp.ok("clients", "sync", path)) == (0, 0, 0)


def test_clients_sync_stores_a_secret_digest_and_never_the_secret(idp: Idp) -> None:
    idp.ok("clients", "sync", idp.write("clients.toml", VALID_CLIENTS))

    digests = dict(row[:2] for row in stored_clients(idp))
    assert digests["app"] is None  # public client: nothing to store
    assert isinstance(digests["shop"], str) and digests["shop"] and digests["shop"] != SHOP_SECRET
    assert SHOP_SECRET.encode() not in idp.database_bytes()
    assert SHOP_SECRET[:20].encode() not in idp.database_bytes()


def test_clients_sync_reports_removed_and_updated_clients(idp: Idp) -> None:
    idp.ok("clients", "sync", idp.write("clients.toml", VALID_CLIENTS))
    only_shop = VALID_CLIENTS.split('[[clients]]\nclient_id = "app"')[0].replace('"Shop"', '"The Shop"')

    assert sync_counts(idp.ok("clients", "sync", idp.write("shop-only.toml", only_shop))) == (0, 1, 1)
    assert [row[0] for row in stored_clients(idp)] == ["shop"]


INVALID_CLIENTS = [
    pytest.param(VALID_CLIENTS.replace('scope = "openid', 'scop = "openid'), "scop", id="refuses an unknown key"),
    pytest.param(
        VALID_CLIENTS.replace("https://shop.example/callback", "http://shop.example/callback"),
        "redirect_uris",
        id="refuses an http redirect for a host other than localhost",
    ),
    pytest.param(
        VALID_CLIENTS.replace('["authorization_code", "refresh_token"]', '["implicit"]'),
        "grant_types",
        id="refuses the implicit grant type",
    ),
]


@pytest.mark.parametrize(("text", "field"), INVALID_CLIENTS)
def test_an_invalid_clients_file_is_refused_whole_and_leaves_the_synced_clients_alone(
    idp: Idp, text: str, field: str
) -> None:
    good = idp.write("clients.toml", VALID_CLIENTS)
    idp.ok("clients", "sync", good)
    before = stored_clients(idp)

    result = idp("clients", "sync", idp.write("bad.toml", text))

    line = assert_fails_in_one_line(result, "bad.toml", '"shop"', field)
    assert SHOP_SECRET not in line
    assert stored_clients(idp) == before
    assert sync_counts(idp.ok("clients", "sync", good)) == (0, 0, 0)


OUTSIDE_THE_ALLOWED_NETWORKS = """\
[[clients]]
client_id = "keys"
client_name = "Keys"
redirect_uris = ["https://keys.example/cb"]
grant_types = ["client_credentials"]
token_endpoint_auth_method = "private_key_jwt"
jwks_uri = "https://169.254.169.254/jwks"
backchannel_logout_uri = "https://203.0.113.7/logout"
"""


def test_clients_sync_warns_for_uris_that_resolve_outside_the_allowed_networks(idp: Idp) -> None:
    """A jwks_uri at the cloud metadata address, or any URI idp would refuse to call, is
    synced (the file is valid) but named on stderr, so the admin learns it before an RP fails."""
    result = idp("clients", "sync", idp.write("clients.toml", OUTSIDE_THE_ALLOWED_NETWORKS))

    assert result.returncode == 0, result.stderr
    assert sync_counts(result.stdout) == (1, 0, 0)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ") and "resolves" in line]
    assert len(warnings) == 2
    assert 'client "keys": jwks_uri https://169.254.169.254/jwks: resolves to 169.254.169.254' in warnings[0]
    assert "backchannel_logout_uri https://203.0.113.7/logout: resolves to 203.0.113.7" in warnings[1]
    assert all("IDP_OUTBOUND_ALLOWED_NETWORKS" in line for line in warnings)
    listed = idp(
        "clients",
        "sync",
        idp.write("clients.toml", OUTSIDE_THE_ALLOWED_NETWORKS),
        IDP_OUTBOUND_ALLOWED_NETWORKS="169.254.169.254/32,203.0.113.0/24",
    )
    assert listed.returncode == 0 and "resolves" not in listed.stderr


def test_an_invalid_clients_file_on_an_empty_database_adds_nothing(idp: Idp) -> None:
    # the good client comes first in the file: it must not be added on its own
    text = VALID_CLIENTS + '\n[[clients]]\nclient_id = "bad"\nredirect_uris = ["ftp://x"]\n'
    result = idp("clients", "sync", idp.write("bad.toml", text))

    assert_fails_in_one_line(result, '"bad"', "redirect_uris")
    assert stored_clients(idp) == []


def test_syncing_a_missing_clients_file_fails_cleanly(idp: Idp) -> None:
    assert_fails_in_one_line(idp("clients", "sync", "no-such-file.toml"), "no-such-file.toml")


# keys


def parse_keys(output: str) -> list[list[str]]:
    return [line.split("\t") for line in output.splitlines()]


KEY_ALGS = ("RS256", "ES256", "Ed25519")  # `idp keys rotate` rotates one key of each


def rotated(output: str) -> dict[str, str]:
    """`idp keys rotate` output as {alg: new kid}."""
    return dict(re.findall(r"^new (\S+) signing key (\S+): published now, signs ", output, re.MULTILINE))


def test_keys_rotate_retires_the_old_key_and_keeps_it_published(idp: Idp) -> None:
    first = rotated(idp.ok("keys", "rotate"))  # no key yet: these sign at once
    second = rotated(idp.ok("keys", "rotate", "--signs-in", "0", IDP_ID_TOKEN_TTL_SECONDS="600"))
    rotated_at = datetime.now(UTC)
    assert first.keys() == second.keys() == set(KEY_ALGS)

    keys = parse_keys(idp.ok("keys", "list"))
    assert sorted(key[1] for key in keys) == sorted(KEY_ALGS * 2)
    for alg in KEY_ALGS:
        [active] = [key for key in keys if key[1] == alg and key[3] == "active"]
        [retired] = [key for key in keys if key[1] == alg and key[3] != "active"]
        assert active[0] == second[alg] and retired[0] == first[alg]

        found = re.fullmatch(r"retired, published until (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)Z", retired[3])
        assert found, retired[3]
        until = datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        # the ID token lifetime in force at rotation (600 s) plus a small clock-skew margin
        assert rotated_at + timedelta(seconds=600) - timedelta(seconds=5) <= until
        assert until <= rotated_at + timedelta(seconds=600 + 900)


def test_keys_rotate_publishes_the_new_key_before_it_signs(idp: Idp) -> None:
    first = idp.ok("keys", "rotate")
    assert first.count("signs now") == len(KEY_ALGS)
    second = idp.ok("keys", "rotate")  # the default lead: PUBLISH_LEAD_SECONDS
    rotated_at = datetime.now(UTC)
    found = re.search(r"signs from (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)Z \((\d+) s\)", second)
    assert found, second
    assert int(found[2]) == PUBLISH_LEAD_SECONDS
    switch = datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    assert (
        rotated_at + timedelta(seconds=PUBLISH_LEAD_SECONDS - 5)
        <= switch
        <= rotated_at + timedelta(seconds=PUBLISH_LEAD_SECONDS)
    )

    keys = {key[0]: key[3] for key in parse_keys(idp.ok("keys", "list"))}
    for alg in KEY_ALGS:  # every algorithm's new key waits for the same moment
        assert keys[rotated(second)[alg]] == f"next, published, signs from {found[1]}Z"
        assert keys[rotated(first)[alg]] == f"active until {found[1]}Z"


@pytest.mark.parametrize(
    ("option", "family"),
    [("ES256", "ES256"), ("Ed25519", "Ed25519"), ("EdDSA", "Ed25519")],
    ids=["ES256", "Ed25519", "EdDSA names Ed25519"],
)
def test_keys_rotate_alg_rotates_that_algorithms_key_only(idp: Idp, option: str, family: str) -> None:
    first = rotated(idp.ok("keys", "rotate"))
    only = rotated(idp.ok("keys", "rotate", "--alg", option, "--signs-in", "0"))
    assert list(only) == [family]
    states = {key[0]: key[3] for key in parse_keys(idp.ok("keys", "list"))}
    assert states[only[family]] == "active" and states[first[family]].startswith("retired, published until ")
    assert all(states[first[alg]] == "active" for alg in KEY_ALGS if alg != family)


def test_keys_rotate_is_audited_per_new_key(idp: Idp) -> None:
    """Every change is audited: a rotation by the admin too (the scheduled one already was)."""
    only = rotated(idp.ok("keys", "rotate", "--alg", "ES256", "--signs-in", "0"))
    events = [json.loads(line) for line in idp.ok("audit", "tail", "--kind", "key.rotated").splitlines()]
    assert [(e["detail"]["kid"], e["detail"]["alg"], e["detail"]["by"]) for e in events] == [
        (only["ES256"], "ES256", "cli")
    ]


@pytest.mark.parametrize("value", ["HS256", "none", "PS256", "ed25519"])
def test_keys_rotate_refuses_an_unknown_alg_and_changes_nothing(idp: Idp, value: str) -> None:
    idp.ok("keys", "rotate")
    before = idp.ok("keys", "list")
    assert_fails_in_one_line(idp("keys", "rotate", "--alg", "RS256", "--alg", value), "--alg", value)
    assert idp.ok("keys", "list") == before


@pytest.mark.parametrize("value", ["-1", "86401", "soon"])
def test_keys_rotate_refuses_a_bad_lead_and_changes_nothing(idp: Idp, value: str) -> None:
    idp.ok("keys", "rotate")
    before = idp.ok("keys", "list")
    result = idp("keys", "rotate", "--signs-in", value)
    assert result.returncode == 2 and "--signs-in" in result.stderr
    assert idp.ok("keys", "list") == before


def test_a_third_rotation_keeps_every_unexpired_key_published(idp: Idp) -> None:
    for _ in range(3):
        idp.ok("keys", "rotate", "--signs-in", "0")

    keys = parse_keys(idp.ok("keys", "list"))
    for alg in KEY_ALGS:
        states = [key[3] for key in keys if key[1] == alg]
        assert states[0] == "active"  # newest first
        assert len(states) == 3 and all(state.startswith("retired, published until ") for state in states[1:])


def test_signing_keys_are_not_stored_in_plain_text(idp: Idp) -> None:
    idp.ok("keys", "rotate")
    idp.ok("keys", "rotate")

    stored = idp.database_bytes()
    assert b"PRIVATE KEY" not in stored
    assert b"BEGIN" not in stored
    blobs = idp.query("SELECT alg, private_key_encrypted FROM signing_keys")
    assert {alg for alg, _ in blobs} == set(KEY_ALGS)
    for _, blob in blobs:  # the start of a base64 DER key: RSA, EC P-256, Ed25519 (PKCS #8)
        assert b"MII" not in blob and b"MIG" not in blob and b"MC4" not in blob


def test_keys_list_on_a_migrated_database_without_keys_prints_nothing(idp: Idp) -> None:
    assert idp.ok("keys", "list") == ""


# serve: the issuer follows the port


@contextmanager
def serving(idp: Idp, port: int, *, workers: int = 1, **extra_env: str) -> Iterator[IdpProcess]:
    """`idp serve --port PORT` with this scratch directory's settings, ready when discovery answers."""
    server = IdpProcess(env=idp.env(**extra_env), port=port, log_path=idp.home / "serve.log", workers=workers)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def advertised_issuer(port: int) -> str:
    response = httpx.get(f"http://127.0.0.1:{port}/.well-known/openid-configuration", timeout=5)
    assert response.status_code == 200
    return str(response.json()["issuer"])


def test_serve_without_idp_issuer_advertises_localhost_on_the_port_it_serves(idp: Idp) -> None:
    port = free_port()
    with serving(idp, port) as server:
        assert advertised_issuer(port) == f"http://localhost:{port}"
        log = server.log()
    assert f"idp: issuer http://localhost:{port}" in log.splitlines()
    assert "warning" not in log


def test_serve_with_a_localhost_issuer_on_another_port_uses_it_and_warns(idp: Idp) -> None:
    port, proxy_port = free_port(), free_port()
    with serving(idp, port, IDP_ISSUER=f"http://localhost:{proxy_port}") as server:
        assert advertised_issuer(port) == f"http://localhost:{proxy_port}"
        log = server.log().splitlines()
    assert f"idp: issuer http://localhost:{proxy_port}" in log
    [warning] = [line for line in log if "warning" in line]
    assert warning.startswith(
        f"idp: warning: IDP_ISSUER is http://localhost:{proxy_port} but idp serves on port {port}"
    )


@pytest.mark.multiprocess
def test_every_worker_advertises_the_issuer_worked_out_from_the_port(idp: Idp) -> None:
    port = free_port()
    with serving(idp, port, workers=2, IDP_REDIS_URL=shared_redis()):
        # a new connection each time: the kernel spreads them over both workers
        assert {advertised_issuer(port) for _ in range(20)} == {f"http://localhost:{port}"}


def test_serve_on_port_0_needs_idp_issuer(idp: Idp) -> None:
    assert_fails_in_one_line(idp("serve", "--port", "0"), "IDP_ISSUER", "--port 0")


@pytest.mark.parametrize("value", ["-1", "65536", "http"])
def test_serve_refuses_a_port_that_is_not_one(idp: Idp, value: str) -> None:
    assert_fails_in_one_line(idp("serve", "--port", value), "--port")


def test_make_run_serves_on_the_port_it_is_given() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parent.parent
    for args, port in (([], "8000"), (["PORT=8299"], "8299")):
        # run under `make test` too: the outer make's variables would make this one a sub-make
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        done = subprocess.run(
            ["make", "--no-print-directory", "-n", "run", *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
            env={**env, "PORT": "1234"},
        )  # an unrelated PORT in the environment
        assert done.returncode == 0, done.stderr
        serve = [line.split() for line in done.stdout.splitlines() if line.startswith(".venv/bin/idp serve")]
        assert serve == [[".venv/bin/idp", "serve", "--port", port]], done.stdout


# every error: one line on stderr, non-zero exit


def test_serve_with_several_workers_needs_redis(idp: Idp) -> None:
    assert_fails_in_one_line(idp("serve", "--workers", "2", "--port", "8299"), "IDP_REDIS_URL")


def test_serve_with_zero_workers_is_refused(idp: Idp) -> None:
    assert_fails_in_one_line(idp("serve", "--workers", "0", "--port", "0"), "--workers")


@pytest.mark.parametrize("value", ["-2", "257", "all", ""])
def test_serve_with_a_bad_worker_count_is_refused(idp: Idp, value: str) -> None:
    assert_fails_in_one_line(idp("serve", "--workers", value, "--port", "0"), "--workers")


def test_workers_auto_is_one_per_core_this_process_may_use() -> None:
    from idp.cli import _worker_count

    assert _worker_count("auto") == len(os.sched_getaffinity(0))
    assert _worker_count("3") == 3


@pytest.mark.parametrize(
    ("extra_env", "named"),
    [
        pytest.param({"IDP_CODE_TTL_SECONDS": "0"}, "IDP_CODE_TTL_SECONDS", id="an out-of-range lifetime"),
        pytest.param({"IDP_ISSUER": "http://id.example.com"}, "IDP_ISSUER", id="an http issuer"),
        pytest.param({"IDP_DATABASE_URL": "mysql://u:p@db/idp"}, "IDP_DATABASE_URL", id="a MySQL database"),
        pytest.param({"IDP_CONFIG": "/nonexistent/idp.toml"}, "IDP_CONFIG", id="a missing config file"),
    ],
)
def test_a_bad_setting_stops_every_command_with_one_line_naming_it(
    idp: Idp, extra_env: dict[str, str], named: str
) -> None:
    assert_fails_in_one_line(idp("user", "list", **extra_env), named)


def test_errors_go_to_stderr_and_successes_to_stdout(idp: Idp) -> None:
    ok = idp("db", "upgrade")
    assert ok.returncode == 0 and ok.stdout and ok.stderr == ""
    failed = idp("user", "disable", "nobody")
    assert failed.stdout == "" and failed.stderr.startswith("idp: error: ")


def test_an_unusable_database_path_fails_in_one_line(fresh: Idp) -> None:
    (fresh.home / "a-file").write_text("not a directory")
    result = fresh("db", "upgrade", IDP_DATABASE_URL=f"sqlite:///{fresh.home}/a-file/idp.db")
    assert_fails_in_one_line(result)


def test_a_file_that_is_not_a_database_fails_in_one_line(fresh: Idp) -> None:
    fresh.db_path.write_text("this is not SQLite\n" * 100)
    assert_fails_in_one_line(fresh("user", "list"))


def test_an_unwritable_data_dir_for_the_development_key_fails_in_one_line(idp: Idp) -> None:
    (idp.home / "a-file").write_text("not a directory")
    result = idp("keys", "rotate", IDP_DATA_DIR=str(idp.home / "a-file" / "var"))
    assert_fails_in_one_line(result)
    assert idp.query("SELECT count(*) FROM signing_keys") == [(0,)]


# user set --attr (issue 17: profile and custom claims)


def attributes_of(idp: Idp, username: str) -> dict[str, object] | None:
    [(attributes,)] = idp.query(f"SELECT attributes FROM users WHERE username = '{username}'")
    return json.loads(str(attributes)) if attributes is not None else None


def test_user_set_attr_sets_and_removes_attributes_in_one_command(idp: Idp) -> None:
    idp.ok("user", "add", "alice")

    out = idp.ok("user", "set", "alice", "--attr", "given_name=Alice", "--attr", "department=R&D")

    assert out.strip() == "updated user alice: attr:department, attr:given_name"
    assert attributes_of(idp, "alice") == {"given_name": "Alice", "department": "R&D"}
    kind, detail = last_audit_event(idp)
    assert (kind, detail["attributes_changed"]) == ("user.updated", ["department", "given_name"])
    assert "R&D" not in json.dumps(detail)

    idp.ok("user", "set", "alice", "--attr", "department=")
    assert attributes_of(idp, "alice") == {"given_name": "Alice"}


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        pytest.param(["--attr", "department"], ["--attr 'department'", "NAME=VALUE"], id="no equals sign"),
        pytest.param(["--attr", "sub=x"], ["--attr 'sub'", "reserved"], id="a reserved name"),
        pytest.param(["--attr", "picture=http://cdn.example/a.png"], ["--attr picture", "https"], id="an http picture"),
        pytest.param(
            ["--attr", "nickname=Z", "--attr", "zoneinfo=Mars/Base"], ["--attr zoneinfo"], id="one bad of two"
        ),
    ],
)
def test_user_set_attr_refuses_bad_input_in_one_line_and_changes_nothing(
    idp: Idp, args: list[str], fragments: list[str]
) -> None:
    idp.ok("user", "add", "alice")
    before = user_rows(idp) + idp.query("SELECT attributes FROM users")

    result = idp("user", "set", "alice", *args)

    assert_fails_in_one_line(result, *fragments)
    assert result.returncode == 2 and result.stdout == ""
    assert user_rows(idp) + idp.query("SELECT attributes FROM users") == before
