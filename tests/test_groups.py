"""`idp group …`, `idp user show`, `idp explain` and the clients file's allowed_groups, run as
the admin runs them (a real subprocess against a scratch SQLite database): each change is
audited, bad input is one line and changes nothing, a group clients still name cannot be
removed, and a clients file naming an unknown group is refused with file:line, client and
field."""

# ruff: noqa: F811 (the fixtures idp and migrated_template come from tests/test_cli.py)
from __future__ import annotations

import json

from tests.test_cli import GOOD_PASSWORD, SHOP_SECRET, Idp, idp, migrated_template  # noqa: F401

RESTRICTED = f"""\
default_allowed_groups = ["Staff"]

[[clients]]
client_id = "shop"
client_name = "Shop"
client_secret = "{SHOP_SECRET}"
redirect_uris = ["https://shop.example/callback"]
grant_types = ["authorization_code", "refresh_token"]
token_endpoint_auth_method = "client_secret_basic"
scope = "openid profile email offline_access"

[[clients]]
client_id = "ops-console"
client_secret = "{SHOP_SECRET}-ops"
redirect_uris = ["https://ops.example/callback"]
token_endpoint_auth_method = "client_secret_basic"
allowed_groups = ["ops"]
"""


def users(idp: Idp, *names: str) -> None:
    for name in names:
        idp.ok("user", "add", name, "--password-stdin", stdin=GOOD_PASSWORD + "\n")


def audit(idp: Idp, prefix: str) -> list[dict[str, object]]:
    lines = idp.ok("audit", "tail", "-n", "1000", "--kind", prefix).splitlines()
    return [json.loads(line) for line in lines]


def test_groups_are_added_listed_shown_changed_and_removed_each_audited(idp: Idp) -> None:
    users(idp, "alice", "bob")
    assert idp.ok("group", "add", "Staff", "--display-name", "All staff") == "added group staff\n"
    assert "already exists" in idp("group", "add", "STAFF").stderr  # names are case-insensitive
    assert idp.ok("group", "add-member", "staff", "alice", "BOB") == "added to staff: alice, bob\n"
    assert "nobody (already members)" in idp.ok("group", "add-member", "staff", "alice")
    changed = idp.ok("group", "set", "staff", "--min-acr", "mfa")
    assert "minimum none -> mfa" in changed
    shown = idp.ok("group", "show", "staff")
    assert "All staff" in shown and "alice, bob" in shown and "mfa" in shown
    assert idp.ok("group", "list").startswith("staff\tAll staff\tmin_acr=mfa\t2 member(s)")
    user = idp.ok("user", "show", "alice")
    assert "groups:" in user and "staff (min mfa)" in user
    assert idp.ok("group", "remove", "staff") == "removed group staff\n"
    assert idp.ok("group", "list") == ""
    kinds = [event["kind"] for event in audit(idp, "group.")]
    assert kinds == [
        "group.added",
        "group.member_added",
        "group.member_added",
        "group.changed",
        "group.removed",
    ]


def test_bad_group_input_is_one_line_and_changes_nothing(idp: Idp) -> None:
    users(idp, "alice")
    idp.ok("group", "add", "staff")
    for args, words in (
        (("group", "add", "no spaces"), "not a group name"),
        (("group", "add", "x" * 65), "not a group name"),
        (("group", "add", "_underscore"), "not a group name"),
        (("group", "set", "staff", "--min-acr", "pwd"), "invalid choice"),
        (("group", "set", "staff"), "nothing to change"),
        (("group", "show", "nobody"), "no group named"),
        (("group", "add-member", "staff", "alice", "mallory"), "no user named 'mallory'"),
        (("group", "add-member", "ghosts", "alice"), "no group named"),
        (("group", "add", "staff2", "--display-name", "a\x07b"), "printable"),
    ):
        result = idp(*args)
        assert result.returncode == 2, args
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    # the unknown user made the whole add-member change nothing: alice is not a member either
    assert "members:      -" in idp.ok("group", "show", "staff")


def test_clients_file_naming_an_unknown_group_is_refused_with_file_line_client_and_field(idp: Idp) -> None:
    path = idp.write("clients.toml", RESTRICTED)
    idp.ok("group", "add", "staff")
    result = idp("clients", "sync", path)
    assert result.returncode == 2
    assert f"{path}:17: " in result.stderr and 'client "ops-console": allowed_groups[0]: no group named "ops"' in (
        result.stderr
    ), result.stderr
    assert idp.query("SELECT count(*) FROM clients") == [(0,)]


def test_default_allowed_groups_apply_and_a_group_clients_name_cannot_be_removed(idp: Idp) -> None:
    path = idp.write("clients.toml", RESTRICTED)
    idp.ok("group", "add", "staff")
    idp.ok("group", "add", "ops")
    result = idp("clients", "sync", path)
    assert result.returncode == 0, result.stderr
    assert "open to every user" not in result.stderr  # the default covers every client
    stored = dict(idp.query("SELECT client_id, json_extract(config, '$.allowed_groups') FROM clients"))
    assert json.loads(stored["shop"]) == ["staff"] and json.loads(stored["ops-console"]) == ["ops"]
    refused = idp("group", "remove", "staff")
    assert refused.returncode == 2 and "shop" in refused.stderr and "ops-console" not in refused.stderr
    assert "required by:  shop" in idp.ok("group", "show", "staff")


def test_clients_sync_warns_for_a_client_open_to_everyone(idp: Idp) -> None:
    path = idp.write("clients.toml", RESTRICTED.replace('default_allowed_groups = ["Staff"]\n', ""))
    idp.ok("group", "add", "ops")
    result = idp("clients", "sync", path)
    assert result.returncode == 0, result.stderr
    assert "warning: client(s) shop: open to every user" in result.stderr


def test_removing_a_member_withdraws_the_apps_that_required_the_group(idp: Idp) -> None:
    users(idp, "alice")
    idp.ok("group", "add", "staff")
    idp.ok("group", "add", "ops")
    idp.ok("group", "add-member", "staff", "alice")
    idp.ok("group", "add-member", "ops", "alice")
    idp.ok("clients", "sync", idp.write("clients.toml", RESTRICTED))
    out = idp.ok("group", "remove-member", "ops", "alice")
    assert "removed from ops: alice" in out and "alice may no longer use ops-console" in out
    assert "shop" not in out  # staff still lets alice into shop
    (withdrawn,) = audit(idp, "access.withdrawn")
    assert withdrawn["client_id"] == "ops-console"


def test_explain_says_why_for_an_allowed_and_a_refused_user(idp: Idp) -> None:
    users(idp, "alice", "bob")
    idp.ok("group", "add", "staff", "--min-acr", "mfa")
    idp.ok("group", "add", "ops")
    idp.ok("group", "add-member", "staff", "alice")
    idp.ok("clients", "sync", idp.write("clients.toml", RESTRICTED))
    allowed = idp.ok("explain", "shop", "alice")
    assert allowed.startswith("alice signing in to shop: ALLOWED")
    assert "member of staff" in allowed and "group staff requires at least mfa" in allowed
    assert "set up TOTP" in allowed
    assert "scopes: openid profile email offline_access" in allowed and "preferred_username = 'alice'" in allowed
    refused = idp.ok("explain", "shop", "bob")
    assert refused.startswith("bob signing in to shop: REFUSED: the app gets access_denied")
    assert "not a member of any of staff" in refused
    assert "no client 'nope'" in idp("explain", "nope", "bob").stderr
