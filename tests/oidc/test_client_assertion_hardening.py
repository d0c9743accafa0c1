"""private_key_jwt client assertions (RFC 7523 §3, draft-ietf-oauth-rfc7523bis): a bounded
lifetime, a jti that stays spent for all of it, the issuer alone as `aud`, only the signing
algorithms discovery advertises, and no attacker-chosen header value in an error."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from httpx import Response
from joserfc import jwt
from joserfc.jwk import OctKey
from sqlalchemy import select, update
from starlette.testclient import TestClient

from idp.app import create_app
from idp.clients_file import ClientsFileError, parse_clients_toml
from idp.clients_sync import sync_clients, sync_clients_file
from idp.db.models import Client
from idp.state.memory import MemoryStore
from tests.support.seed import RP_KEY, _toml_with_inline_jwks, seed

ISSUER = "http://localhost:8000"
TOKEN_ENDPOINT = f"{ISSUER}/token"
TEN_YEARS = 10 * 365 * 86400
Claims = Callable[[int], dict[str, Any]]  # from the wall clock's now: the claims to change


def toml_with_compat_flag() -> str:
    """The seeded clients, "backend" (private_key_jwt) with token_endpoint_audience_compat = true."""
    method = 'token_endpoint_auth_method = "private_key_jwt"\n'
    return _toml_with_inline_jwks().replace(method, method + "token_endpoint_audience_compat = true\n")


def assertion(*, key: Any = RP_KEY, header: dict[str, Any] | None = None, **claims: Any) -> str:
    """The seeded private_key_jwt client's assertion, good for 60 s; a claim set to None is left out."""
    now = int(time.time())  # joserfc checks an assertion against the wall clock, not the app's
    payload = {"iss": "backend", "sub": "backend", "aud": ISSUER, "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(
        header or {"alg": "RS256", "kid": RP_KEY.kid}, payload, key, algorithms=["RS256", "PS256", "HS256"]
    )


def authenticate(client: TestClient, client_assertion: str, path: str = "/token") -> Response:
    data = {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": client_assertion,
    }
    data.update({"grant_type": "client_credentials", "scope": "profile"} if path == "/token" else {"token": "t" * 43})
    return client.post(path, data=data)


def assert_refused(response: Response) -> None:
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] == "invalid_client"


def with_compat_flag(client: TestClient) -> None:
    """What `idp clients sync` of toml_with_compat_flag() does, then the registry's reload."""
    services = client.app.state.services  # type: ignore[attr-defined]
    configs = parse_clients_toml(toml_with_compat_flag())
    with services.sessions.begin() as db:
        sync_clients(db, services.keyring, configs)
    services.oidc.clients.reload()


# ---- lifetime ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param(lambda now: {"exp": now + TEN_YEARS}, id="exp ten years out"),
        pytest.param(lambda now: {"iat": None, "exp": now + 400}, id="no iat, exp 400 s after receipt"),
        pytest.param(lambda now: {"exp": now + 301}, id="exp 301 s after iat"),
        pytest.param(lambda now: {"exp": float(10**300)}, id="exp far beyond any clock"),
        pytest.param(lambda now: {"exp": 10**400}, id="exp an integer too large for a float"),
    ],
)
def test_a_long_lived_assertion_is_refused_so_it_cannot_outlive_its_replay_marker(client, claims: Claims):
    """Attack: an assertion with exp years ahead (leaked from a log or a proxy) was accepted, and
    replayable once its jti marker expired after an hour."""
    assert_refused(authenticate(client, assertion(**claims(int(time.time())))))


def test_a_lifetime_anchored_at_an_old_iat_is_refused(client):
    """Attack: an assertion minted long ago with a long life (a stockpile made while a key was
    stolen) counts from its iat, not from when it is finally used."""
    now = int(time.time())
    assert_refused(authenticate(client, assertion(iat=now - 600, exp=now + 60)))


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param(lambda now: {"exp": now + 300}, id="exp 300 s after iat"),
        pytest.param(lambda now: {"iat": None, "exp": now + 300}, id="no iat, exp 300 s after receipt"),
    ],
)
def test_an_assertion_within_the_bound_is_accepted(client, claims: Claims):
    """Guard against over-refusal: the bound (IDP_CLIENT_ASSERTION_MAX_SECONDS, 300 s) itself is fine."""
    assert authenticate(client, assertion(**claims(int(time.time())))).status_code == 200


def test_a_replayed_assertion_is_refused_for_its_whole_life_even_after_an_hour(settings, clock):
    """Attack: replaying a captured assertion after 3,601 s, when the jti marker (kept at most an
    hour) was gone but exp (an hour plus leeway away) still let joserfc accept it."""
    store_time = [0.0]
    app = create_app(
        replace(settings, client_assertion_max_seconds=3600),
        store=MemoryStore(clock=lambda: store_time[0]),
        clock=clock,
    )
    seed(app.state.services)
    captured = assertion(exp=int(time.time()) + 3600)
    with TestClient(app, base_url=ISSUER) as client:
        assert authenticate(client, captured).status_code == 200
        store_time[0] += 3601  # the state store's TTLs run on its own clock
        assert_refused(authenticate(client, captured))


# ---- audience ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aud",
    [
        pytest.param([TOKEN_ENDPOINT, "https://attacker.example/token"], id="array holding the token endpoint"),
        pytest.param([ISSUER, "https://attacker.example"], id="array holding the issuer"),
        pytest.param([ISSUER], id="the issuer alone, in an array"),
        pytest.param(TOKEN_ENDPOINT, id="the token endpoint, by default"),
        pytest.param(f"{ISSUER}/introspect", id="another endpoint of this server"),
    ],
)
def test_an_audience_other_than_the_issuer_string_is_refused(client, aud):
    """Attack: audience injection (CVE-2025-27370/27371): a server the RP also trusts names our
    token endpoint as its own, collects the assertion the RP signs for it, replays it here."""
    assert_refused(authenticate(client, assertion(aud=aud)))


def test_the_issuer_as_a_single_string_is_the_audience(client):
    """Guard: what the fix asks every RP to send is accepted, at the token endpoint and at
    revocation and introspection alike."""
    assert authenticate(client, assertion()).status_code == 200
    assert authenticate(client, assertion(), path="/revoke").status_code == 200
    assert authenticate(client, assertion(), path="/introspect").json() == {"active": False}


def test_the_token_endpoint_audience_is_accepted_only_for_a_client_with_the_compat_flag(client):
    """Attack: audience injection stays refused for everyone else: the compat flag lets one
    client's RP send OIDC Core §9's token endpoint URL, as a string, and nothing more."""
    assert_refused(authenticate(client, assertion(aud=TOKEN_ENDPOINT)))
    with_compat_flag(client)
    assert authenticate(client, assertion(aud=TOKEN_ENDPOINT)).status_code == 200
    assert authenticate(client, assertion(aud=ISSUER)).status_code == 200
    assert_refused(authenticate(client, assertion(aud=[TOKEN_ENDPOINT])))
    assert_refused(authenticate(client, assertion(aud=f"{ISSUER}/revoke")))


# ---- error descriptions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, planted",
    [
        pytest.param({"alg": "RS256", "kid": "../../etc/passwd"}, "../../etc/passwd", id="kid path traversal"),
        pytest.param({"alg": "RS256", "kid": "<script>alert(1)</script>"}, "<script>", id="kid markup"),
        pytest.param({"alg": "../../etc/shadow", "kid": RP_KEY.kid}, "etc/shadow", id="unknown alg"),
        pytest.param({"alg": "RS512", "kid": RP_KEY.kid}, "RS512", id="alg not offered"),
    ],
)
def test_an_error_description_never_echoes_a_header_value(client, header, planted):
    """Attack: reflecting attacker-chosen text (`No key for kid: '../../etc/passwd'`) into
    responses and the logs that keep them: a probe oracle and a log-injection channel."""
    token = assertion(header={"alg": "RS256", "kid": RP_KEY.kid})
    forged = _b64_json(header) + token[token.index(".") :]
    response = authenticate(client, forged)
    assert_refused(response)
    assert planted not in response.text


def _b64_json(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


# ---- signing algorithms -----------------------------------------------------------------------


def test_a_ps256_assertion_is_accepted_as_discovery_advertises(client):
    """A broken promise rather than an attack: discovery advertised PS256 for client
    authentication and /token refused it, so an RP signing PS256 (as FAPI profiles require)
    failed. Discovery lists exactly what is accepted, at each endpoint that takes assertions."""
    response = authenticate(client, assertion(header={"alg": "PS256", "kid": RP_KEY.kid}))
    assert response.status_code == 200, response.text
    meta = client.get("/.well-known/openid-configuration").json()
    for endpoint in ("token", "revocation", "introspection"):
        assert meta[f"{endpoint}_endpoint_auth_signing_alg_values_supported"] == ["RS256", "ES256", "PS256"]


def test_an_hmac_assertion_keyed_with_a_published_jwk_is_refused(client):
    """Attack: algorithm confusion: a jwks (a jwks_uri is public) holding a symmetric key lets
    anyone who reads it make an HS256 "signature"; only asymmetric algorithms are accepted."""
    published = OctKey.generate_key(256, parameters={"kid": "published"})
    services = client.app.state.services
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "backend"))
        jwks = {"keys": [*row.config["jwks"]["keys"], published.as_dict(private=True)]}
        db.execute(update(Client).where(Client.id == row.id).values(config={**row.config, "jwks": jwks}))
    services.oidc.clients.reload()
    assert_refused(authenticate(client, assertion(key=published, header={"alg": "HS256", "kid": "published"})))
    assert authenticate(client, assertion()).status_code == 200  # the RSA key still works


# ---- the clients file and `idp clients sync` ---------------------------------------------------


def test_the_compat_flag_is_read_from_the_clients_file():
    flags = {c.client_id: c.token_endpoint_audience_compat for c in parse_clients_toml(toml_with_compat_flag())}
    assert {client_id for client_id, on in flags.items() if on} == {"backend"}


@pytest.mark.parametrize(
    "replacement, problem",
    [
        pytest.param(
            'token_endpoint_auth_method = "client_secret_basic"\ntoken_endpoint_audience_compat = true\n',
            'client "shop": token_endpoint_audience_compat: used only with token_endpoint_auth_method = "private_key_jwt"',
            id="refuses the flag on a client_secret client",
        ),
        pytest.param(
            'token_endpoint_auth_method = "client_secret_basic"\ntoken_endpoint_audience_compat = "yes"\n',
            'client "shop": token_endpoint_audience_compat: must be true or false, not string',
            id="refuses a flag that is not a boolean",
        ),
    ],
)
def test_the_clients_file_refuses_a_meaningless_compat_flag(replacement, problem):
    """Attack: an admin believing a client is covered by a flag that does nothing for it."""
    toml = _toml_with_inline_jwks().replace('token_endpoint_auth_method = "client_secret_basic"\n', replacement)
    with pytest.raises(ClientsFileError, match=problem):
        parse_clients_toml(toml)


def test_sync_warns_for_each_client_accepting_the_token_endpoint_audience(client, tmp_path: Path):
    """Attack: audience injection re-opened by a compat flag nobody remembers setting."""
    services = client.app.state.services
    path = tmp_path / "clients.toml"
    path.write_text(toml_with_compat_flag())
    report = sync_clients_file(services.sessions, services.keyring, str(path))
    [warning] = [w for w in report.warnings if "token_endpoint_audience_compat" in w]
    assert warning.startswith('client "backend": token_endpoint_audience_compat = true') and "CVE-2025-27370" in warning
