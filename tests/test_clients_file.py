"""The clients file: RFC 7591 metadata names, every rule refused with file:line, client and field."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, RSAKey

from idp.clients_file import (
    ClientConfig,
    ClientsFileError,
    parse_clients_file,
    parse_clients_toml,
)

SECRET = "f3a9c1d27b8e4605a1c9e2b7d4f80c36-shop"
EC_KEY = ECKey.generate_key("P-256")
PUBLIC_JWK = EC_KEY.as_dict(private=False)
FIELD_NAMES = [f.name for f in fields(ClientConfig)]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON escapes are TOML basic-string escapes, except that TOML wants DEL escaped too
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_client(table: dict[str, Any]) -> str:
    return "[[clients]]\n" + "".join(f"{toml_value(k)} = {toml_value(v)}\n" for k, v in table.items())


def shop(**changes: Any) -> dict[str, Any]:
    """A valid confidential client; a change to None removes that key."""
    table = {"client_id": "shop", "client_secret": SECRET, "redirect_uris": ["https://shop.example/callback"]}
    table.update(changes)
    return {key: value for key, value in table.items() if value is not None}


def app(**changes: Any) -> dict[str, Any]:
    """A valid public client (a native app)."""
    return shop(client_id="app", client_secret=None, **changes)


def keyed(**changes: Any) -> dict[str, Any]:
    """A client that authenticates with private_key_jwt; valid once given jwks or jwks_uri."""
    return shop(client_secret=None, token_endpoint_auth_method="private_key_jwt", **changes)


def case(id: str, *values: Any) -> Any:
    return pytest.param(*values, id=id)


def refusal(text: str) -> str:
    with pytest.raises(ClientsFileError) as raised:
        parse_clients_toml(text, source="clients.toml")
    message = str(raised.value)
    assert "\n" not in message and message.startswith("clients.toml:")
    return message


def only_client(table: dict[str, Any]) -> ClientConfig:
    [client] = parse_clients_toml(toml_client(table), source="clients.toml")
    return client


# --- the design's example ----------------------------------------------------------------------

DESIGN_EXAMPLE = f"""\
[[clients]]
client_id = "shop"
client_name = "Shop"
client_secret = "{SECRET}"            # absent → public client (PKCE required)
redirect_uris = ["https://shop.example/callback"]
post_logout_redirect_uris = ["https://shop.example/"]
grant_types = ["authorization_code", "refresh_token"]
response_types = ["code"]
token_endpoint_auth_method = "client_secret_basic"  # client_secret_post | private_key_jwt | none
scope = "openid profile email offline_access"
default_acr_values = ["mfa"]    # optional minimum assurance for this client
backchannel_logout_uri = "https://shop.example/backchannel-logout"   # optional
"""


def test_the_design_example_parses_to_the_described_client() -> None:
    # DESIGN.md writes the secret as "…"; a real file needs a real one (see the weak-secret cases)
    assert parse_clients_toml(DESIGN_EXAMPLE) == [
        ClientConfig(
            client_id="shop",
            client_name="Shop",
            client_secret=SECRET,
            redirect_uris=("https://shop.example/callback",),
            post_logout_redirect_uris=("https://shop.example/",),
            grant_types=("authorization_code", "refresh_token"),
            response_types=("code",),
            token_endpoint_auth_method="client_secret_basic",
            scope="openid profile email offline_access",
            default_acr_values=("mfa",),
            backchannel_logout_uri="https://shop.example/backchannel-logout",
            backchannel_logout_session_required=True,
            jwks=None,
            jwks_uri=None,
            first_party=False,
            client_uri=None,
            logo_uri=None,
        )
    ]


def test_the_repr_of_a_client_never_shows_its_secret() -> None:
    [client] = parse_clients_toml(DESIGN_EXAMPLE)
    assert SECRET not in repr(client) and SECRET not in str(client)
    assert "'shop'" in repr(client)


def test_every_client_config_field_is_an_allowed_key() -> None:
    table = shop(
        client_name="Shop",
        post_logout_redirect_uris=[],
        grant_types=["authorization_code"],
        response_types=["code"],
        token_endpoint_auth_method="client_secret_post",
        scope="openid groups",
        default_acr_values=[],
        backchannel_logout_uri="https://shop.example/bc",
        backchannel_logout_session_required=False,
        first_party=True,
        client_uri="https://shop.example/",
        logo_uri="https://shop.example/logo.png",
        require_pkce=False,
        token_endpoint_audience_compat=False,  # true only with private_key_jwt
        allowed_cors_origins=["https://app.example"],
        policy_uri="https://shop.example/privacy",
        tos_uri="https://shop.example/terms",
        application_type="web",
        subject_type="public",
        id_token_signed_response_alg="ES256",
        default_max_age=3600,
        require_auth_time=True,
        contacts=["admin@shop.example"],
        allowed_groups=["staff"],
        groups_claim="allowed",
        id_token_claims="minimal",
        access_token_format="jwt",
        access_token_signing_alg="Ed25519",
        access_token_lifetime=120,
        access_token_audience=["https://api.shop.example"],
    )
    # jwks and jwks_uri belong to private_key_jwt; declared_scopes is derived from [[scopes]]
    assert set(table) == set(FIELD_NAMES) - {"jwks", "jwks_uri", "declared_scopes"}
    assert only_client(table).first_party is True


# --- defaults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        case(
            "a client with a secret defaults to client_secret_basic and the code flow",
            shop(),
            {
                "client_name": "shop",
                "grant_types": ("authorization_code",),
                "response_types": ("code",),
                "token_endpoint_auth_method": "client_secret_basic",
                "is_public": False,
                "scope": "openid profile email",
                "default_acr_values": (),
                "post_logout_redirect_uris": (),
                "backchannel_logout_session_required": True,
                "first_party": False,
                "jwks": None,
                "require_pkce": True,
                "allowed_cors_origins": (),
            },
        ),
        case(
            "a client without a secret defaults to a public client",
            app(),
            {
                "client_secret": None,
                "token_endpoint_auth_method": "none",
                "is_public": True,
            },
        ),
        case(
            "a client_credentials-only client needs no redirect_uris and has no response type",
            shop(grant_types=["client_credentials"], redirect_uris=None),
            {"response_types": (), "redirect_uris": ()},
        ),
        case(
            "scope is normalised to single spaces without repeats",
            shop(scope="openid  email openid"),
            {"scope": "openid email"},
        ),
    ],
)
def test_defaults(table: dict[str, Any], expected: dict[str, Any]) -> None:
    client = only_client(table)
    assert {name: getattr(client, name) for name in expected} == expected


def test_an_empty_file_or_an_empty_clients_list_means_no_clients() -> None:
    assert parse_clients_toml("") == []
    assert parse_clients_toml("# nothing yet\nclients = []\n") == []


def test_client_configs_are_hashable_even_with_a_jwks() -> None:
    first, second = (only_client(keyed(jwks={"keys": [PUBLIC_JWK]})) for _ in range(2))
    assert first == second and hash(first) == hash(second)


# --- accepted values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table",
    [
        case("accepts http on localhost", shop(redirect_uris=["http://localhost:8080/cb"])),
        case("accepts http on 127.0.0.1", shop(redirect_uris=["http://127.0.0.1/cb"])),
        case("accepts http on [::1]", shop(redirect_uris=["http://[::1]:9000/cb"])),
        case("accepts a query in a redirect", shop(redirect_uris=["https://shop.example/cb?tenant=1"])),
        case("accepts a private-use scheme for a public client", app(redirect_uris=["com.example.app:/cb"])),
        case("accepts a 128-character client_id", shop(client_id="a.b_c~d-9" + "x" * 119)),
        case("accepts a 2000-character uri", shop(redirect_uris=["https://shop.example/" + "a" * 1979])),
        case(
            "accepts client_credentials for a confidential client",
            shop(grant_types=["authorization_code", "client_credentials"]),
        ),
        case("accepts every acr of the ladder", shop(default_acr_values=["pwd", "mfa", "phr"])),
        case(
            "accepts private_key_jwt with public EC and RSA keys",
            keyed(jwks={"keys": [PUBLIC_JWK, RSAKey.generate_key(2048).as_dict(private=False)]}),
        ),
        case("accepts private_key_jwt with a jwks_uri", keyed(jwks_uri="https://shop.example/jwks.json")),
        case("accepts a jwks_uri on localhost", keyed(jwks_uri="http://localhost:8001/jwks")),
        case("accepts require_pkce = false for a confidential client", shop(require_pkce=False)),
        case(
            "accepts a native app with a private-use scheme, said or inferred",
            app(application_type="native", redirect_uris=["com.example.app:/cb"]),
        ),
        case("accepts every ID token algorithm", shop(id_token_signed_response_alg="Ed25519")),
        case("accepts the older EdDSA name", shop(id_token_signed_response_alg="EdDSA")),
        case("accepts default_max_age = 0", shop(default_max_age=0)),
        case(
            "accepts CORS origins as browsers send them",
            shop(allowed_cors_origins=["https://app.example", "https://app.example:8443", "http://localhost:5173"]),
        ),
    ],
)
def test_accepted(table: dict[str, Any]) -> None:
    assert only_client(table).client_id == table["client_id"]


# --- refused values ----------------------------------------------------------------------------

REFUSED = [
    # keys and types
    case(
        "refuses an unknown key and suggests the right one",
        shop(redirect_uri="https://x"),
        'client "shop": redirect_uri: unknown key (did you mean redirect_uris?)',
    ),
    case("refuses a client without client_id", shop(client_id=None), "clients[0]: client_id: required"),
    case("refuses an empty client_id", shop(client_id=""), "clients[0]: client_id: must be 1-128 characters"),
    case("refuses a 129-character client_id", shop(client_id="x" * 129), "clients[0]: client_id: must be 1-128"),
    case("refuses a client_id with a space", shop(client_id="shop app"), "clients[0]: client_id: must be 1-128"),
    case("refuses a client_id with a slash", shop(client_id="shop/1"), "clients[0]: client_id: must be 1-128"),
    case("refuses a numeric client_id", shop(client_id=7), "clients[0]: client_id: must be a string, not integer"),
    case("refuses a blank client_name", shop(client_name=""), 'client "shop": client_name: must not be blank'),
    case("refuses a list as name", shop(client_name=["Shop"]), "client_name: must be a string, not array"),
    case(
        "refuses a single string for redirect_uris",
        shop(redirect_uris="https://shop.example/cb"),
        "redirect_uris: must be an array of strings, not string",
    ),
    case(
        "refuses a number inside redirect_uris",
        shop(redirect_uris=["https://shop.example/cb", 3]),
        "redirect_uris[1]: must be a string, not integer",
    ),
    case("refuses a string for first_party", shop(first_party="yes"), "first_party: must be true or false, not string"),
    case(
        "refuses a number for backchannel_logout_session_required",
        shop(backchannel_logout_session_required=1),
        "backchannel_logout_session_required: must be true or false",
    ),
    # redirect_uris (RFC 6749 §3.1.2, RFC 8252)
    case(
        "refuses the code flow without redirect_uris",
        shop(redirect_uris=None),
        'client "shop": redirect_uris: required',
    ),
    case("refuses an empty redirect_uris", shop(redirect_uris=[]), "redirect_uris: required"),
    case(
        "refuses http redirect for a non-localhost host",
        shop(redirect_uris=["http://shop.example/cb"]),
        "redirect_uris[0]: http is allowed only for localhost",
    ),
    case(
        "refuses http on a host that merely starts with localhost",
        shop(redirect_uris=["http://localhost.evil.example/cb"]),
        "http is allowed only for localhost",
    ),
    case("refuses a relative redirect", shop(redirect_uris=["/callback"]), "redirect_uris[0]: must be an absolute URI"),
    case(
        "refuses a fragment",
        shop(redirect_uris=["https://shop.example/cb#top"]),
        "redirect_uris[0]: must not have a fragment",
    ),
    case("refuses an empty fragment", shop(redirect_uris=["https://shop.example/cb#"]), "must not have a fragment"),
    case(
        "refuses userinfo",
        shop(redirect_uris=["https://user:pw@shop.example/cb"]),
        "redirect_uris[0]: must not contain userinfo",
    ),
    case(
        "refuses a backslash that browsers would read as a slash",
        shop(redirect_uris=["https://shop.example\\@evil.example/cb"]),
        "backslashes",
    ),
    case("refuses whitespace in a uri", shop(redirect_uris=["https://shop.example/c b"]), "whitespace"),
    case(
        "refuses a uri over 2000 characters",
        shop(redirect_uris=["https://shop.example/" + "a" * 1980]),
        "redirect_uris[0]: longer than 2000",
    ),
    case("refuses https without host", shop(redirect_uris=["https:///cb"]), "redirect_uris[0]: must name a host"),
    case("refuses a non-numeric port", shop(redirect_uris=["https://shop.example:http/cb"]), "not a valid URI"),
    case("refuses a broken IPv6 literal", shop(redirect_uris=["https://[::1/cb"]), "not a valid URI"),
    case(
        "refuses javascript:",
        shop(redirect_uris=["javascript:alert(1)"]),
        'redirect_uris[0]: scheme "javascript" is not allowed',
    ),
    case("refuses data:", app(redirect_uris=["data:text/html,hi"]), 'scheme "data" is not allowed'),
    case(
        "refuses a private-use scheme without a dot", app(redirect_uris=["myapp:/cb"]), 'scheme "myapp" is not allowed'
    ),
    case(
        "refuses a private-use scheme for a confidential client",
        shop(redirect_uris=["com.example.app:/cb"]),
        "redirect_uris[0]: a private-use scheme is for native apps",
    ),
    # the other URIs: https, or http on localhost
    case(
        "refuses http post-logout redirect for a non-localhost host",
        shop(post_logout_redirect_uris=["http://shop.example/"]),
        "post_logout_redirect_uris[0]: http is allowed",
    ),
    case(
        "refuses a private-use scheme after logout",
        app(post_logout_redirect_uris=["com.example.app:/bye"]),
        "post_logout_redirect_uris[0]: scheme",
    ),
    case(
        "refuses an http back-channel logout uri",
        shop(backchannel_logout_uri="http://shop.example/bc"),
        "backchannel_logout_uri: http is allowed only",
    ),
    case(
        "refuses a fragment in the back-channel logout uri",
        shop(backchannel_logout_uri="https://shop.example/bc#x"),
        "backchannel_logout_uri: must not have a fragment",
    ),
    case(
        "refuses front-channel logout, which idp does not offer, by name",
        shop(frontchannel_logout_uri="https://shop.example/fc"),
        "frontchannel_logout_uri: not supported: front-channel logout is not offered; use backchannel_logout_uri",
    ),
    case("refuses a javascript client_uri", shop(client_uri="javascript:alert(1)"), "client_uri: scheme"),
    case("refuses a data: logo_uri", shop(logo_uri="data:image/png;base64,AAAA"), "logo_uri: scheme"),
    case("refuses a jwks_uri over http", keyed(jwks_uri="http://keys.example/jwks"), "jwks_uri: http is allowed only"),
    # grant and response types
    case(
        "refuses the implicit grant",
        shop(grant_types=["implicit"]),
        'grant_types[0]: unsupported grant type "implicit"',
    ),
    case(
        "refuses the password grant",
        shop(grant_types=["authorization_code", "password"]),
        'grant_types[1]: unsupported grant type "password"',
    ),
    case("refuses empty grant_types", shop(grant_types=[]), "grant_types: must not be empty"),
    case(
        "refuses refresh_token without the code flow",
        shop(grant_types=["refresh_token", "client_credentials"]),
        "refresh_token needs authorization_code",
    ),
    case(
        "refuses response type token",
        shop(response_types=["token"]),
        'response_types[0]: unsupported response type "token"',
    ),
    case(
        "refuses a hybrid response type",
        shop(response_types=["code id_token"]),
        'unsupported response type "code id_token"',
    ),
    case(
        "refuses the code flow without response type code",
        shop(response_types=[]),
        'response_types: must include "code"',
    ),
    case(
        "refuses response type code without the grant",
        shop(grant_types=["client_credentials"], redirect_uris=None, response_types=["code"]),
        'response_types: "code" needs authorization_code',
    ),
    # client authentication
    case(
        "refuses client_secret_jwt",
        shop(token_endpoint_auth_method="client_secret_jwt"),
        'unsupported method "client_secret_jwt"',
    ),
    case(
        "refuses client_secret_basic without a secret",
        shop(client_secret=None, token_endpoint_auth_method="client_secret_basic"),
        'client "shop": client_secret: required',
    ),
    case(
        "refuses client_secret_post without a secret",
        shop(client_secret=None, token_endpoint_auth_method="client_secret_post"),
        "client_secret: required",
    ),
    case("refuses the design's placeholder", shop(client_secret="…"), "client_secret: too short: at least 32"),
    case("refuses a 31-character secret", shop(client_secret="s" * 31), "client_secret: too short"),
    case("refuses a secret of one repeated character", shop(client_secret="x" * 40), "client_secret: too weak"),
    case("refuses a repeated placeholder", shop(client_secret="changeme" * 5), "client_secret: too weak"),
    case("refuses a non-ASCII secret", shop(client_secret="é" + SECRET), "client_secret: must be printable ASCII"),
    case("refuses a numeric secret", shop(client_secret=12345), "client_secret: must be a string, not integer"),
    case(
        "refuses a secret on a public client",
        shop(token_endpoint_auth_method="none"),
        'client_secret: not used with token_endpoint_auth_method = "none"',
    ),
    case(
        "refuses client_credentials for a public client",
        app(grant_types=["authorization_code", "client_credentials"]),
        "grant_types: client_credentials needs an authenticated client",
    ),
    case(
        "refuses a secret with private_key_jwt",
        shop(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [PUBLIC_JWK]}),
        'client_secret: not used with token_endpoint_auth_method = "private_key_jwt"',
    ),
    case(
        "refuses private_key_jwt without keys",
        keyed(),
        "token_endpoint_auth_method: private_key_jwt needs jwks or jwks_uri",
    ),
    case(
        "refuses private_key_jwt with both jwks and jwks_uri",
        keyed(jwks={"keys": [PUBLIC_JWK]}, jwks_uri="https://shop.example/jwks"),
        "jwks: give jwks or jwks_uri, not both",
    ),
    case(
        "refuses jwks with a secret-based method",
        shop(jwks={"keys": [PUBLIC_JWK]}),
        'jwks: used only with token_endpoint_auth_method = "private_key_jwt"',
    ),
    case("refuses jwks_uri on a public client", app(jwks_uri="https://shop.example/jwks"), "jwks_uri: used only with"),
    case(
        "refuses a private key in jwks",
        keyed(jwks={"keys": [EC_KEY.as_dict(private=True)]}),
        'jwks: keys[0]: holds private key material ("d")',
    ),
    case(
        "refuses a symmetric key in jwks",
        keyed(jwks={"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
        'holds private key material ("k")',
    ),
    case(
        "refuses a key type joserfc would silently skip",
        keyed(jwks={"keys": [PUBLIC_JWK, {"kty": "XX"}]}),
        "jwks: keys[1]: not a valid JWK",
    ),
    case(
        "refuses a malformed EC key",
        keyed(jwks={"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}),
        "jwks: keys[0]: not a valid JWK",
    ),
    case(
        "refuses an empty JWK Set",
        keyed(jwks={"keys": []}),
        'jwks: must be a JWK Set: a table with a non-empty "keys" array',
    ),
    case("refuses jwks written as a string", keyed(jwks="{}"), "jwks: must be a JWK Set"),
    case("refuses a JWK that is not a table", keyed(jwks={"keys": ["k"]}), "jwks: keys[0]: must be a table"),
    case(
        "refuses a jwks that is not JSON",
        keyed(jwks={"keys": [PUBLIC_JWK], "n": float("nan")}),
        "jwks: must hold only strings",
    ),
    # scope and acr
    case("refuses an unsupported scope", shop(scope="openid address"), 'scope: unsupported scope "address"'),
    case("refuses the code flow without openid", shop(scope="profile email"), 'scope: must include "openid"'),
    case("refuses scope written as a list", shop(scope=["openid"]), "scope: must be a string, not array"),
    case(
        "refuses an acr outside the ladder",
        shop(default_acr_values=["mfa", "gold"]),
        'default_acr_values[1]: unknown acr "gold"',
    ),
    case(
        "refuses default_acr_values written as a string",
        shop(default_acr_values="mfa"),
        "default_acr_values: must be an array of strings",
    ),
    # registration metadata idp does not honour, or values it does not
    case(
        "refuses a signed userinfo",
        shop(userinfo_signed_response_alg="RS256"),
        "userinfo_signed_response_alg: not supported: userinfo answers are plain JSON",
    ),
    case(
        "refuses unsigned ID tokens",
        shop(id_token_signed_response_alg="none"),
        'id_token_signed_response_alg: "none" is not supported (use "RS256" or "ES256" or "Ed25519" or "EdDSA"); '
        "ID tokens are always signed",
    ),
    case(
        "refuses HS256 ID tokens", shop(id_token_signed_response_alg="HS256"), 'id_token_signed_response_alg: "HS256"'
    ),
    case("refuses pairwise subjects", shop(subject_type="pairwise"), 'subject_type: "pairwise" is not supported'),
    case("refuses an unknown application_type", shop(application_type="desktop"), 'application_type: "desktop"'),
    case(
        "refuses a web client with a private-use redirect",
        app(application_type="web", redirect_uris=["com.example.app:/cb"]),
        'application_type: "web" clients redirect to https or localhost',
    ),
    case("refuses a negative default_max_age", shop(default_max_age=-1), "default_max_age: must be between 0 and"),
    case("refuses default_max_age as a string", shop(default_max_age="3600"), "default_max_age: must be an integer"),
    case(
        "refuses a logo over plain http even on localhost",
        shop(logo_uri="http://localhost/logo.png"),
        "logo_uri: must be an https URI",
    ),
    case(
        "refuses request_uris",
        shop(request_uris=["https://shop.example/r"]),
        "request_uris: not supported: request objects are not accepted",
    ),
    # PKCE and CORS
    case(
        "refuses require_pkce = false for a public client",
        app(require_pkce=False),
        'client "app": require_pkce: a public client always uses PKCE',
    ),
    case("refuses require_pkce written as a string", shop(require_pkce="no"), "require_pkce: must be true or false"),
    case(
        "refuses a wildcard CORS origin",
        shop(allowed_cors_origins=["*"]),
        'allowed_cors_origins[0]: "*" is not an origin',
    ),
    case(
        "refuses a CORS origin with a path",
        shop(allowed_cors_origins=["https://app.example/"]),
        'allowed_cors_origins[0]: "https://app.example/" is not an origin as browsers send it: write "https://app.example"',
    ),
    case(
        "refuses a CORS origin with the default port",
        shop(allowed_cors_origins=["https://app.example:443"]),
        'write "https://app.example"',
    ),
    case(
        "refuses a CORS origin in capitals",
        shop(allowed_cors_origins=["https://App.example"]),
        'write "https://app.example"',
    ),
    case(
        "refuses a plain-http CORS origin off localhost",
        shop(allowed_cors_origins=["http://app.example"]),
        "allowed_cors_origins[0]: http is allowed only for localhost",
    ),
    case(
        "refuses a private-use scheme as a CORS origin",
        app(allowed_cors_origins=["com.example.app:"]),
        "is not an origin",
    ),
]


@pytest.mark.parametrize(("table", "expected"), REFUSED)
def test_refused(table: dict[str, Any], expected: str) -> None:
    message = refusal(toml_client(table))
    assert expected in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        case(
            "refuses an unknown top-level key",
            'issuer = "x"\n[[clients]]\nclient_id = "a"\n',
            'clients.toml:1: unknown top-level key "issuer"',
        ),
        case(
            "refuses a top-level table after the clients",
            toml_client(app()) + "[settings]\ndebug = true\n",
            'clients.toml:4: unknown top-level key "settings"',
        ),
        case(
            "refuses [clients] written as a single table",
            '[clients]\nclient_id = "a"\n',
            "clients.toml:1: clients: must be an array of tables",
        ),
        case(
            "refuses clients as a list of strings",
            'clients = ["a"]\n',
            "clients.toml:1: clients: must be an array of tables",
        ),
        case(
            "refuses a repeated client_id",
            toml_client(shop()) + toml_client(shop()),
            'clients.toml:6: client "shop": client_id: already used by clients[0]',
        ),
    ],
)
def test_refused_files(text: str, expected: str) -> None:
    assert expected in refusal(text)


# --- line numbers ------------------------------------------------------------------------------

TWO_CLIENTS = f"""\
# our relying parties

[[clients]]
client_id = "app"
redirect_uris = ["com.example.app:/cb"]

[[clients]]
client_id = "shop"
client_secret = "{SECRET}"
redirect_uris = [
  "https://shop.example/callback",
  "http://shop.example/callback",
]
scope = "openid profile"
"""


def edit(text: str, *changes: tuple[str, str]) -> str:
    for old, new in changes:
        assert old in text
        text = text.replace(old, new, 1)
    return text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        case(
            "names the line of the key in the second client",
            TWO_CLIENTS,
            'clients.toml:10: client "shop": redirect_uris[1]: http is allowed only for localhost',
        ),
        case(
            "names the first problem of the client, not the last",
            edit(TWO_CLIENTS, ('"openid profile"', '"profile"')),
            "clients.toml:10:",
        ),
        case(
            "names the line of a later key",
            edit(TWO_CLIENTS, ('  "http://shop.example/callback",\n', ""), ('"openid profile"', '"profile"')),
            'clients.toml:13: client "shop": scope:',
        ),
        case(
            "falls back to the table header when the key is missing",
            edit(TWO_CLIENTS, ('redirect_uris = ["com.example.app:/cb"]\n', "")),
            'clients.toml:3: client "app": redirect_uris: required',
        ),
        case(
            "names the client by position when its client_id is unusable",
            edit(TWO_CLIENTS, ('client_id = "app"', 'client_id = "bad id"')),
            "clients.toml:4: clients[0]: client_id:",
        ),
        case(
            "names the line of an unknown key",
            edit(TWO_CLIENTS, ('client_id = "app"', 'client_id = "app"\nclient_secrte = "x"')),
            'clients.toml:5: client "app": client_secrte: unknown key',
        ),
        case(
            "names the line and column of a TOML syntax error",
            edit(TWO_CLIENTS, ('client_id = "shop"', "client_id = shop")),
            "clients.toml:8:13: invalid TOML",
        ),
        case(
            "finds a field written as a sub-table by its header",
            toml_client(keyed()) + '[clients.jwks]\nkeys = [{kty = "oct", k = "c2VjcmV0"}]\n',
            'clients.toml:5: client "shop": jwks: keys[0]: holds private key material',
        ),
        case(
            "names the clients line for an inline array of tables",
            '\nclients = [{client_id = "shop", redirect_uris = ["http://shop.example/"]}]\n',
            'clients.toml:2: client "shop": redirect_uris[0]: http',
        ),
        case(
            "names the last line for a TOML error the decoder places at the end",
            '[[clients]]\nclient_id = "a"\nscope = "openid',
            "clients.toml:3: invalid TOML: Unterminated string",
        ),
    ],
)
def test_messages_name_the_line(text: str, expected: str) -> None:
    assert refusal(text).startswith(expected)


# --- reading the file --------------------------------------------------------------------------


def test_reads_a_file_and_names_it_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "clients.toml"
    path.write_text(DESIGN_EXAMPLE, encoding="utf-8")
    assert [client.client_id for client in parse_clients_file(path)] == ["shop"]
    path.write_text(DESIGN_EXAMPLE.replace("https://shop.example/callback", "http://shop.example/cb"))
    with pytest.raises(ClientsFileError, match=rf'^{re.escape(str(path))}:5: client "shop": redirect_uris\[0\]: http'):
        parse_clients_file(str(path))


def latin1_file(directory: Path) -> Path:
    path = directory / "latin1.toml"
    path.write_bytes(b"\n# caf\xe9\n")
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        case(
            "refuses a missing file", lambda directory: directory / "missing.toml", "missing.toml: no such clients file"
        ),
        case("refuses a directory", lambda directory: directory, "cannot read the clients file"),
        case("refuses a file that is not UTF-8", latin1_file, "latin1.toml:2: not UTF-8"),
    ],
)
def test_unreadable_files_are_one_line_errors(tmp_path: Path, make: Any, expected: str) -> None:
    with pytest.raises(ClientsFileError) as raised:
        parse_clients_file(make(tmp_path))
    assert expected in str(raised.value) and "\n" not in str(raised.value)


# --- robustness: nothing but ClientsFileError, always one line ---------------------------------


def parses_or_refuses(text: str) -> None:
    try:
        clients = parse_clients_toml(text, source="clients.toml")
    except ClientsFileError as exc:
        assert len(str(exc).splitlines()) == 1
    else:
        assert all(isinstance(client, ClientConfig) for client in clients)


TOML_LINES = st.sampled_from(
    [
        "[[clients]]",
        "[clients]",
        "[clients.jwks]",
        "clients = []",
        'client_id = "a"',
        'client_secret = "0123456789abcdefghijklmnopqrstuv"',
        'redirect_uris = ["https://a.example/cb"]',
        'redirect_uris = ["com.a.b:/cb"]',
        'token_endpoint_auth_method = "none"',
        'grant_types = ["client_credentials"]',
        "keys = [{kty = 'oct', k = 'AA'}]",
        "first_party = 1979-05-27",
        'scope = "openid"',
        "x = [[[[1]]]]",
        "=",
        "a = " + "[" * 2000,  # deeper than the decoder's recursion limit
    ]
)

TOML_VALUES = st.recursive(
    st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["https://a.example/cb", "http://localhost/cb", "openid", "authorization_code", "none", SECRET])
    | st.sampled_from([["https://a.example/cb"], ["client_credentials"], ["mfa"], "openid email", "private_key_jwt"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(deadline=None)
@given(st.text())
def test_arbitrary_text_is_parsed_or_refused_with_clients_file_error(text: str) -> None:
    parses_or_refuses(text)


@settings(deadline=None)
@given(st.lists(TOML_LINES | st.text(max_size=20), max_size=12))
def test_toml_like_lines_are_parsed_or_refused_with_clients_file_error(lines: list[str]) -> None:
    parses_or_refuses("\n".join(lines))


# a valid client with a few fields overwritten, so that cases get past the first checks
CLIENT_TABLES = st.builds(
    lambda base, changes: {**base, **changes},
    st.sampled_from([shop(), app(), keyed(jwks={"keys": [PUBLIC_JWK]}), keyed(jwks_uri="https://a.example/k")]),
    st.dictionaries(st.sampled_from([*FIELD_NAMES, "extra"]), TOML_VALUES, max_size=3),
)


@settings(deadline=None)
@given(st.lists(CLIENT_TABLES, max_size=3))
def test_arbitrary_client_tables_are_parsed_or_refused_with_clients_file_error(tables: list[dict[str, Any]]) -> None:
    parses_or_refuses("".join(toml_client(table) for table in tables))
