"""The account-lifecycle commands (issue 18): `idp user show|enable|delete|set-password` and
`idp clients list|show`, run as the admin runs them (a real subprocess on a real SQLite file),
and, against the in-process app, the sign-ins they end (back-channel logouts, revoked tokens).
Each command is one transaction, audited when it changes something; bad input is one line on
stderr and changes nothing."""

# ruff: noqa: F811
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from typing import Any
from urllib.parse import parse_qs

import jwt as pyjwt
import pytest
from starlette.testclient import TestClient

from tests.conftest import ISSUER
from tests.oidc.test_logout import audit_events, configure, receiver, sign_in
from tests.support.rp import refresh
from tests.test_cli import (
    GOOD_PASSWORD,
    VALID_CLIENTS,
    Idp,
    assert_fails_in_one_line,
    idp,  # noqa: F401 - a fixture
    migrated_template,  # noqa: F401 - a fixture
)

# Distinctive, so that a byte search of the database file finds nothing else.
USERNAME = "zelda.quartz"
EMAIL = "Zelda.Quartz@example.org"
NAME = "Zelda Quartermaine"
NICKNAME = "zq-nickname-4711"
USER_AGENT = "ZeldaBrowser/9.1"
IP = "198.51.100.77"
PASSKEY_NAME = "zelda-phone-key"
NEW_PASSWORD = "amber-fjord-quiet-lantern"
FUTURE = "2099-01-01 00:00:00.000000"
PAST = "2026-01-01 00:00:00.000000"


def user_id(idp: Idp, username: str = USERNAME) -> int:
    [(found,)] = idp.query(f"SELECT id FROM users WHERE username = '{username}'")
    return int(str(found))


def audit_rows(idp: Idp) -> list[tuple[str, dict[str, Any]]]:
    return [
        (str(kind), json.loads(str(detail)))
        for kind, detail in idp.query("SELECT kind, detail FROM audit_events ORDER BY id")
    ]


def everything(idp: Idp) -> list[tuple[object, ...]]:
    """Every row a lifecycle command may change, to show that nothing did."""
    tables = ("users", "idp_sessions", "refresh_tokens", "access_tokens", "passkeys", "group_members", "retired_names")
    return [row for table in tables for row in idp.query(f"SELECT * FROM {table} ORDER BY 1")] + idp.query(
        "SELECT count(*) FROM audit_events"
    )


def give_belongings(idp: Idp, uid: int) -> None:
    """What a user who has been signing in has, as the app would leave it: an authenticator,
    backup codes, a passkey, a consent, a live session that signed into shop, an unredeemed
    code, and a grant (a refresh and an access token)."""
    with sqlite3.connect(idp.db_path) as db:
        db.execute(
            "INSERT INTO totp_credentials (user_id, secret_encrypted, created_at, confirmed_at) VALUES (?, x'01', ?, ?)",
            (uid, PAST, PAST),
        )
        db.execute(
            "INSERT INTO backup_codes (user_id, lookup, code_hash, created_at) VALUES (?, 'l1', 'h1', ?)", (uid, PAST)
        )
        db.execute(
            "INSERT INTO passkeys (user_id, credential_id, public_key, sign_count, transports, name, backed_up, "
            "created_at) VALUES (?, x'0102', x'0304', 0, '[]', ?, 0, ?)",
            (uid, PASSKEY_NAME, PAST),
        )
        db.execute("UPDATE users SET webauthn_handle = x'a1b2c3d4e5f6' WHERE id = ?", (uid,))
        db.execute(
            "INSERT INTO consents (user_id, client_id, scope, granted_at) VALUES (?, 'shop', 'openid', ?)", (uid, PAST)
        )
        session = db.execute(
            "INSERT INTO idp_sessions (cookie_digest, sid, user_id, auth_time, acr, amr, created_at, last_seen_at, "
            "expires_at, user_agent, ip) VALUES ('cookie-1', 'sid-1', ?, ?, 'pwd', '[\"pwd\"]', ?, ?, ?, ?, ?)",
            (uid, PAST, PAST, PAST, FUTURE, USER_AGENT, IP),
        ).lastrowid
        db.execute(
            "INSERT INTO session_clients (session_id, client_id, created_at) VALUES (?, 'shop', ?)", (session, PAST)
        )
        db.execute(
            "INSERT INTO authorization_codes (code_digest, client_id, user_id, redirect_uri, scope, sid, auth_time, "
            "acr, amr, family_id, created_at, expires_at) VALUES ('code-1', 'shop', ?, 'https://shop.example/cb', "
            "'openid', 'sid-1', ?, 'pwd', '[\"pwd\"]', 'family-1', ?, ?)",
            (uid, PAST, PAST, FUTURE),
        )
        db.execute(
            "INSERT INTO refresh_tokens (token_digest, family_id, client_id, user_id, scope, sid, auth_time, acr, amr, "
            "issued_at, expires_at, family_expires_at, successor_handed_out) VALUES ('refresh-1', 'family-1', 'shop', "
            "?, 'openid offline_access', 'sid-1', ?, 'pwd', '[\"pwd\"]', ?, ?, ?, 0)",
            (uid, PAST, PAST, FUTURE, FUTURE),
        )
        db.execute(
            "INSERT INTO access_tokens (token_digest, client_id, user_id, scope, family_id, issued_at, expires_at) "
            "VALUES ('access-1', 'shop', ?, 'openid', 'family-1', ?, ?)",
            (uid, PAST, FUTURE),
        )


def add_zelda(idp: Idp) -> int:
    idp.ok(
        "user",
        "add",
        USERNAME,
        "--email",
        EMAIL,
        "--email-verified",
        "--name",
        NAME,
        "--password-stdin",
        stdin=GOOD_PASSWORD + "\n",
    )
    return user_id(idp)


# ---- user show ---------------------------------------------------------------------------------


def test_user_show_names_state_password_factors_passkeys_groups_sessions_and_last_sign_in(idp: Idp) -> None:
    uid = add_zelda(idp)
    idp.ok("group", "add", "staff")
    idp.ok("group", "add-member", "staff", USERNAME)
    give_belongings(idp, uid)
    with sqlite3.connect(idp.db_path) as db:
        db.execute(
            "UPDATE users SET password_must_change = 1, failed_logins = 2, failures_since = ? WHERE id = ?", (PAST, uid)
        )

    shown = dict(line.split(":", 1) for line in idp.ok("user", "show", USERNAME).splitlines())
    shown = {label: value.strip() for label, value in shown.items()}

    assert shown["state"] == "active, 2 failed attempt(s) since 2026-01-01 00:00:00Z"
    assert shown["password"] == "set, must be changed at the next sign-in"
    assert shown["totp"] == "yes" and shown["backup codes"] == "1 unused" and shown["passkeys"] == PASSKEY_NAME
    assert shown["groups"] == "staff" and shown["sessions"] == "1"
    assert shown["last sign-in"] == "2026-01-01 00:00:00Z"
    assert shown["email"] == f"{EMAIL} (verified)"


# ---- user enable -------------------------------------------------------------------------------


def test_user_enable_reverses_disable_is_audited_and_an_enabled_user_stays_unchanged(idp: Idp) -> None:
    add_zelda(idp)
    idp.ok("user", "disable", USERNAME)

    assert f"enabled user {USERNAME}" in idp.ok("user", "enable", USERNAME)
    assert idp.users()[USERNAME][1] == "active"
    assert audit_rows(idp)[-1] == ("user.enabled", {"by": "cli"})
    before = everything(idp)
    assert "was not disabled; unchanged" in idp.ok("user", "enable", USERNAME)
    assert everything(idp) == before  # nothing written, not even an audit row


# ---- user set-password -------------------------------------------------------------------------


def test_set_password_replaces_the_hash_ends_sessions_revokes_every_grant_and_is_audited(idp: Idp) -> None:
    uid = add_zelda(idp)
    give_belongings(idp, uid)
    [(old_hash,)] = idp.query(f"SELECT password_hash FROM users WHERE id = {uid}")

    out = idp.ok("user", "set-password", USERNAME, "--password-stdin", "--must-change", stdin=NEW_PASSWORD + "\n")

    assert "it must be changed at the next sign-in" in out
    assert "1 session(s) ended" in out  # shop has no backchannel_logout_uri here: nothing to deliver
    [(new_hash, flag)] = idp.query(f"SELECT password_hash, password_must_change FROM users WHERE id = {uid}")
    assert new_hash != old_hash and str(new_hash).startswith("$argon2id$") and flag == 1
    assert idp.query("SELECT count(*) FROM idp_sessions WHERE ended_at IS NULL") == [(0,)]
    assert idp.query("SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL") == [(0,)]  # offline_access too
    assert idp.query("SELECT count(*) FROM access_tokens WHERE revoked_at IS NULL") == [(0,)]
    assert audit_rows(idp)[-1] == ("user.password_set", {"by": "cli", "must_change": True, "sessions_ended": 1})
    assert NEW_PASSWORD.encode() not in idp.database_bytes()

    idp.ok("user", "set-password", USERNAME, "--password-stdin", stdin=NEW_PASSWORD + "-2\n")
    assert idp.query(f"SELECT password_must_change FROM users WHERE id = {uid}") == [(0,)]  # without the flag: cleared


# ---- user delete -------------------------------------------------------------------------------


def test_delete_keeps_a_tombstone_and_erases_the_personal_data_from_the_database_file(idp: Idp) -> None:
    uid = add_zelda(idp)
    idp.ok("user", "set", USERNAME, "--attr", f"nickname={NICKNAME}")
    idp.ok("group", "add", "staff")
    idp.ok("group", "add-member", "staff", USERNAME)
    give_belongings(idp, uid)
    [(subject,)] = idp.query(f"SELECT subject FROM users WHERE id = {uid}")
    audited_before = idp.query(f"SELECT count(*) FROM audit_events WHERE user_id = {uid}")

    out = idp.ok("user", "delete", USERNAME, "--yes")

    [(pseudonym, email, name, attributes, password, handle, disabled, kept_subject)] = idp.query(
        "SELECT username, email, name, attributes, password_hash, webauthn_handle, disabled, subject "
        f"FROM users WHERE id = {uid}"
    )
    assert str(pseudonym).startswith("deleted-") and str(pseudonym) in out
    assert (email, name, password, handle, disabled) == (None, None, None, None, 1)
    assert attributes in (None, "null")  # the JSON column's "no attributes"
    assert kept_subject == subject  # the sub stays taken
    for table in ("totp_credentials", "backup_codes", "passkeys", "consents", "group_members", "idp_sessions",
                  "session_clients", "authorization_codes"):  # fmt: skip
        assert idp.query(f"SELECT count(*) FROM {table}") == [(0,)], table
    assert idp.query("SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL") == [(0,)]
    assert idp.query("SELECT count(*) FROM access_tokens WHERE revoked_at IS NULL") == [(0,)]
    # the trail keeps its rows, under the tombstone's id; the deletion's row names the pseudonym only
    assert idp.query(f"SELECT count(*) FROM audit_events WHERE user_id = {uid}")[0][0] == audited_before[0][0] + 1
    kind, detail = audit_rows(idp)[-1]
    assert kind == "user.deleted" and detail["pseudonym"] == pseudonym and detail["sessions_ended"] == 1
    assert detail["names_retired"] == ["username", "email"]
    raw = idp.database_bytes()
    for personal in (USERNAME, EMAIL, EMAIL.lower(), NAME, NICKNAME, USER_AGENT, IP, PASSKEY_NAME):
        assert personal.encode() not in raw, personal
    assert bytes.fromhex("a1b2c3d4e5f6") not in raw  # the WebAuthn user handle
    listed = idp.users()[str(pseudonym)]
    assert listed == ["-", "deleted", subject]


def test_delete_without_yes_says_what_would_be_deleted_and_changes_nothing(idp: Idp) -> None:
    give_belongings(idp, add_zelda(idp))
    before = everything(idp)

    line = assert_fails_in_one_line(idp("user", "delete", USERNAME), "would end and remove", "--yes")

    assert "1 live session(s)" in line and "1 passkey(s)" in line and "retired" in line
    assert everything(idp) == before


def test_a_deleted_users_username_and_verified_address_are_refused_for_a_new_user(idp: Idp) -> None:
    add_zelda(idp)
    idp.ok("user", "delete", USERNAME, "--yes")

    assert_fails_in_one_line(idp("user", "add", USERNAME.upper()), "retired")
    assert_fails_in_one_line(idp("user", "add", "yara", "--email", EMAIL.lower(), "--email-verified"), "retired")
    idp.ok("user", "add", "yara", "--email", EMAIL)  # unverified, the address is anyone's to type
    assert_fails_in_one_line(idp("user", "set", "yara", "--email-verified", "yes"), "retired")
    assert idp.query("SELECT email_verified FROM users WHERE username = 'yara'") == [(0,)]


def test_delete_with_allow_reuse_retires_nothing_and_a_new_user_gets_a_new_sub(idp: Idp) -> None:
    uid = add_zelda(idp)
    [(old_subject,)] = idp.query(f"SELECT subject FROM users WHERE id = {uid}")

    assert "nothing retired" in idp.ok("user", "delete", USERNAME, "--yes", "--allow-reuse")
    add_zelda(idp)

    [(new_subject,)] = idp.query(f"SELECT subject FROM users WHERE username = '{USERNAME}'")
    assert new_subject != old_subject and idp.query("SELECT count(*) FROM retired_names") == [(0,)]


# ---- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, stdin, fragments",
    [
        pytest.param(["user", "enable", "mallory"], None, ["mallory"], id="enable an unknown user"),
        pytest.param(["user", "delete", "mallory", "--yes"], None, ["mallory"], id="delete an unknown user"),
        pytest.param(
            ["user", "set-password", "mallory", "--password-stdin"], NEW_PASSWORD, ["mallory"], id="unknown user"
        ),
        pytest.param(["user", "set-password", USERNAME, "--password-stdin"], "short", ["password"], id="weak password"),
        pytest.param(
            ["user", "set-password", USERNAME, "--password-stdin"], "", ["--password-stdin"], id="no password"
        ),
        pytest.param(["user", "set-password", USERNAME], None, ["--password-stdin"], id="no password, no terminal"),
        pytest.param(
            ["user", "set-password", USERNAME, "--password-stdin"],
            USERNAME + "-and-more",
            ["password"],
            id="the username",
        ),
        pytest.param(["clients", "show", "nosuch"], None, ["nosuch"], id="show an unknown client"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    idp: Idp, args: list[str], stdin: str | None, fragments: list[str]
) -> None:
    add_zelda(idp)
    before = everything(idp)

    result = idp(*args, stdin=None if stdin is None else stdin + "\n")

    assert_fails_in_one_line(result, *fragments)
    assert result.stdout == "" and everything(idp) == before


def test_no_command_changes_a_deleted_users_tombstone(idp: Idp) -> None:
    add_zelda(idp)
    idp.ok("group", "add", "staff")
    idp.ok("user", "delete", USERNAME, "--yes")
    [(pseudonym,)] = idp.query("SELECT username FROM users")
    before = everything(idp)

    for args in (
        ["user", "enable", str(pseudonym)],
        ["user", "delete", str(pseudonym), "--yes"],
        ["user", "set", str(pseudonym), "--name", "Back"],
        ["group", "add-member", "staff", str(pseudonym)],
    ):
        assert_fails_in_one_line(idp(*args), str(pseudonym))
    assert everything(idp) == before
    assert "state:" in idp.ok("user", "show", str(pseudonym))  # still shown, as deleted


# ---- clients list / show -----------------------------------------------------------------------


def test_clients_list_prints_one_line_per_client(idp: Idp) -> None:
    idp.ok("clients", "sync", idp.write("clients.toml", VALID_CLIENTS))

    lines = [line.split("\t") for line in idp.ok("clients", "list").splitlines()]

    assert lines == [
        ["app", "Native app", "none", "authorization_code", "everyone"],
        ["shop", "Shop", "client_secret_basic", "authorization_code,refresh_token", "everyone"],
    ]


def test_clients_show_prints_every_stored_field_and_never_the_secret(idp: Idp) -> None:
    idp.ok("clients", "sync", idp.write("clients.toml", VALID_CLIENTS))
    [(digest,)] = idp.query("SELECT secret_digest FROM clients WHERE client_id = 'shop'")

    shown = idp.ok("clients", "show", "shop")

    fields = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in shown.splitlines()}
    assert fields["client_id"] == "shop" and fields["client_secret"].startswith("set")
    assert fields["redirect_uris"] == '["https://shop.example/callback"]'
    assert fields["token_endpoint_auth_method"] == "client_secret_basic"
    [(config,)] = idp.query("SELECT config FROM clients WHERE client_id = 'shop'")
    assert set(json.loads(str(config))) - {"client_id"} <= set(fields)  # every stored field
    assert "Zq8rT1vX4bN7mK2pL9sD3fG6hJ0wE5yU8iO1aC4e" not in shown and str(digest) not in shown
    assert idp.ok("clients", "show", "app").splitlines()[1].split(":", 1)[1].strip() == "none"


# ---- against the in-process app: the sign-ins the commands end ------------------------------


def run_admin_command(settings: Any, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`idp …` on the same database and master key as the test app."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(
        IDP_ISSUER=ISSUER,
        IDP_DATABASE_URL=settings.database_url,
        IDP_SECRET_KEY=settings.secret_key,
        IDP_DATA_DIR=settings.data_dir,
        IDP_ARGON2_TIME_COST="1",
        IDP_ARGON2_MEMORY_KIB="8192",
    )
    return subprocess.run(
        [sys.executable, "-m", "idp", *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, stdin",
    [
        pytest.param(["user", "delete", "alice", "--yes"], "", id="delete"),
        pytest.param(["user", "set-password", "alice", "--password-stdin"], NEW_PASSWORD + "\n", id="set-password"),
    ],
)
def test_delete_and_set_password_send_backchannel_logouts_and_the_tokens_stop_working(
    client: TestClient, settings: Any, args: list[str], stdin: str
) -> None:
    with receiver(200) as rp:
        configure(client, "shop", backchannel_logout_uri=rp.url)
        tokens = sign_in(client, scope="openid profile email offline_access")

        done = run_admin_command(settings, *args, stdin=stdin)

        assert done.returncode == 0, done.stderr
        assert "1 session(s) ended; back-channel logouts: 1 delivered, 0 failed" in done.stdout
        [post] = rp.posts  # delivered before the command returned
        claims = pyjwt.decode(parse_qs(post["body"])["logout_token"][0], options={"verify_signature": False})
        assert claims["sid"] == tokens["claims"]["sid"] and claims["sub"] == tokens["claims"]["sub"]
    assert refresh(client, tokens["refresh_token"]).status_code == 400  # offline_access too
    assert client.get("/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"}).status_code == 401
    assert [event.outcome for event in audit_events(client, "logout.backchannel")] == ["success"]
