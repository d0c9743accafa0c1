"""The clients file's claims settings (issue 17): top-level [[scopes]] declaring custom
scopes and the attributes they release, and per client `groups_claim` and
`id_token_claims`; every refusal names file:line, the client or scope, and the field."""

from __future__ import annotations

import pytest

from idp.clients_file import ClientsFileError, parse_clients_toml
from idp.clients_sync import _stored_config
from idp.scopes import ScopeDeclaration

SECRET = "f3a9c1d27b8e4605a1c9e2b7d4f80c36-shop"

SCOPES = """
[[scopes]]
name = "department"
claims = ["department", "cost_centre"]
description = "Your department and cost centre"

[[scopes]]
name = "badge"
claims = ["badge_number"]
"""


def client(*lines: str, client_id: str = "shop") -> str:
    body = "\n".join(lines)
    return (
        f'[[clients]]\nclient_id = "{client_id}"\nclient_secret = "{SECRET}"\n'
        f'redirect_uris = ["https://{client_id}.example/cb"]\n{body}\n'
    )


def refusal(text: str) -> str:
    with pytest.raises(ClientsFileError) as raised:
        parse_clients_toml(text, source="clients.toml")
    message = str(raised.value)
    assert "\n" not in message and message.startswith("clients.toml:")
    return message


def case(id: str, *values: object) -> object:
    return pytest.param(*values, id=id)


# --- what a valid file gives -------------------------------------------------------------------


def test_a_client_carries_the_declared_scopes_its_scope_names_and_no_others() -> None:
    [shop] = parse_clients_toml(client('scope = "openid profile department"') + SCOPES)

    assert shop.scope == "openid profile department"
    assert shop.declared_scopes == (
        ScopeDeclaration("department", ("department", "cost_centre"), "Your department and cost centre"),
    )


def test_defaults_release_scope_claims_in_the_id_token_and_groups_of_allowed_groups() -> None:
    [shop] = parse_clients_toml(client())
    assert (shop.groups_claim, shop.id_token_claims, shop.declared_scopes) == ("allowed", "full", ())


@pytest.mark.parametrize(
    "lines",
    [
        case("allowed_groups", ('scope = "openid groups"', 'allowed_groups = ["staff"]')),
        case("groups_claim all", ('scope = "openid groups"', 'groups_claim = "all"')),
        case("phone and minimal", ('scope = "openid phone"', 'id_token_claims = "minimal"')),
    ],
)
def test_the_groups_and_phone_scopes_are_standard(lines: tuple[str, ...]) -> None:
    [shop] = parse_clients_toml(client(*lines))
    assert shop.scope.split()[1] in ("groups", "phone")


def test_the_default_allowed_groups_let_a_client_ask_for_the_groups_scope() -> None:
    text = 'default_allowed_groups = ["staff"]\n' + client('scope = "openid groups"')
    [shop] = parse_clients_toml(text)
    assert shop.allowed_groups == ("staff",)


def test_a_stored_client_with_declared_scopes_compares_equal_after_a_json_round_trip() -> None:
    import json

    [shop] = parse_clients_toml(client('scope = "openid department badge"') + SCOPES)
    stored = _stored_config(shop)
    # what the JSON column gives back: an unchanged file must not count as an update
    assert json.loads(json.dumps(stored)) == stored
    assert stored["declared_scopes"] == [
        {
            "name": "department",
            "claims": ["department", "cost_centre"],
            "description": "Your department and cost centre",
        },
        {"name": "badge", "claims": ["badge_number"], "description": None},
    ]


# --- refusals ----------------------------------------------------------------------------------

REFUSALS = [
    # groups
    case(
        "the groups scope without allowed_groups or groups_claim",
        client('scope = "openid groups"'),
        'clients.toml:5: client "shop": scope: "groups" needs allowed_groups',
    ),
    case(
        'the groups scope with groups_claim = "allowed" but no allowed_groups',
        client('scope = "openid groups"', 'groups_claim = "allowed"'),
        'clients.toml:5: client "shop": scope: "groups" needs allowed_groups',
    ),
    case(
        "groups_claim without the groups scope",
        client('scope = "openid"', 'groups_claim = "all"'),
        'clients.toml:6: client "shop": groups_claim: used only with "groups" in scope',
    ),
    case(
        "an unknown groups_claim",
        client('scope = "openid groups"', 'groups_claim = "mine"'),
        'clients.toml:6: client "shop": groups_claim: "mine" is not supported (use "allowed" or "all")',
    ),
    case(
        "an unknown id_token_claims",
        client('id_token_claims = "none"'),
        'clients.toml:5: client "shop": id_token_claims: "none" is not supported (use "full" or "minimal")',
    ),
    # a client's scope
    case(
        "a scope that is neither standard nor declared",
        client('scope = "openid department"'),
        'clients.toml:5: client "shop": scope: unsupported scope "department"',
    ),
    case(
        "the address scope, which idp does not offer",
        client('scope = "openid address"'),
        'client "shop": scope: unsupported scope "address"',
    ),
    # [[scopes]]
    case(
        "a declared scope named like a standard one",
        client() + '[[scopes]]\nname = "profile"\nclaims = ["department"]\n',
        'clients.toml:7: scope "profile": name: "profile" is a standard scope',
    ),
    case(
        "a declared scope named address",
        client() + '[[scopes]]\nname = "address"\nclaims = ["street"]\n',
        'clients.toml:7: scope "address": name: "address" is a standard scope',
    ),
    case(
        "a scope declared twice",
        client() + SCOPES + '[[scopes]]\nname = "badge"\nclaims = ["badge_colour"]\n',
        'clients.toml:16: scope "badge": name: declared twice',
    ),
    case(
        "a scope name that is not a scope token",
        client() + '[[scopes]]\nname = "Dept Code"\nclaims = ["department"]\n',
        "clients.toml:7: scopes[0]: name: must be 1-64 characters of a-z 0-9 _ . : -",
    ),
    case(
        "a declared scope without a name",
        client() + '[[scopes]]\nclaims = ["department"]\n',
        "clients.toml:6: scopes[0]: name: required",
    ),
    case(
        "a declared scope without claims",
        client() + '[[scopes]]\nname = "department"\n',
        'clients.toml:6: scope "department": claims: required',
    ),
    case(
        "a declared scope releasing sub",
        client() + '[[scopes]]\nname = "department"\nclaims = ["department", "sub"]\n',
        'clients.toml:8: scope "department": claims[1]: "sub": reserved: a registered JWT/OpenID Connect claim',
    ),
    case(
        "a declared scope releasing exp",
        client() + '[[scopes]]\nname = "department"\nclaims = ["exp"]\n',
        'scope "department": claims[0]: "exp": reserved',
    ),
    case(
        "a declared scope releasing email",
        client() + '[[scopes]]\nname = "department"\nclaims = ["email"]\n',
        'scope "department": claims[0]: "email": reserved: set it with --email',
    ),
    case(
        "a declared scope releasing groups",
        client() + '[[scopes]]\nname = "department"\nclaims = ["groups"]\n',
        'scope "department": claims[0]: "groups": reserved',
    ),
    case(
        "a declared scope releasing preferred_username",
        client() + '[[scopes]]\nname = "department"\nclaims = ["preferred_username"]\n',
        'scope "department": claims[0]: "preferred_username": reserved',
    ),
    case(
        "a declared scope releasing a standard profile claim",
        client() + '[[scopes]]\nname = "department"\nclaims = ["given_name"]\n',
        'scope "department": claims[0]: "given_name": a standard claim, released by the profile scope',
    ),
    case(
        "a declared scope releasing the phone number",
        client() + '[[scopes]]\nname = "department"\nclaims = ["phone_number"]\n',
        'claims[0]: "phone_number": a standard claim, released by the phone scope',
    ),
    case(
        "a claim name that is not an attribute name",
        client() + '[[scopes]]\nname = "department"\nclaims = ["Department-Name"]\n',
        'claims[0]: "Department-Name": names are a-z 0-9 _, starting with a letter',
    ),
    case(
        "a claim name longer than 64 characters",
        client() + '[[scopes]]\nname = "department"\nclaims = ["' + "d" * 65 + '"]\n',
        "claims[0]: ",
    ),
    case(
        "an unknown key in a declared scope",
        client() + '[[scopes]]\nname = "department"\nclaims = ["department"]\nrelease = "always"\n',
        'clients.toml:9: scope "department": release: unknown key (a [[scopes]] table has name, claims, description)',
    ),
    case(
        "a description of more than one line",
        client() + '[[scopes]]\nname = "department"\nclaims = ["department"]\ndescription = "a\\nb"\n',
        'clients.toml:9: scope "department": description: must be one line',
    ),
    case(
        "a description too long for the consent page",
        client() + f'[[scopes]]\nname = "department"\nclaims = ["department"]\ndescription = "{"x" * 201}"\n',
        'scope "department": description: must be 1-200 characters',
    ),
    case(
        "scopes as a plain value",
        'scopes = "department"\n' + client(),
        "clients.toml:1: scopes: must be an array of tables, written [[scopes]]",
    ),
]


@pytest.mark.parametrize(("text", "expected"), REFUSALS)
def test_refusals_name_the_line_the_table_and_the_field(text: str, expected: str) -> None:
    message = refusal(text)
    assert message.startswith(expected) if expected.startswith("clients.toml:") else expected in message


# --- line numbers with [[scopes]] among the [[clients]] ---------------------------------------


def test_a_problem_in_a_client_before_a_scopes_table_names_the_clients_line() -> None:
    text = client('scope = "openid department"', 'groups_claim = "all"') + SCOPES  # lines 1-6, then scopes
    assert refusal(text).startswith('clients.toml:6: client "shop": groups_claim: used only with "groups"')


def test_a_problem_in_a_client_after_a_scopes_table_names_its_own_line() -> None:
    text = (
        SCOPES
        + client('scope = "openid badge"', client_id="a")
        + client('scope = "openid phone"', 'id_token_claims = "x"')
    )
    lines = text.split("\n")
    expected = lines.index('id_token_claims = "x"') + 1
    assert refusal(text).startswith(f'clients.toml:{expected}: client "shop": id_token_claims:')


def test_a_problem_in_a_scopes_table_between_clients_names_its_line() -> None:
    text = client(client_id="a") + '[[scopes]]\nname = "badge"\nclaims = ["iat"]\n' + client()
    assert refusal(text).startswith('clients.toml:8: scope "badge": claims[0]: "iat": reserved')
