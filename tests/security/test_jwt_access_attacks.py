"""Attacks on JWT access tokens (RFC 9068, a client's access_token_format = "jwt";
idp/oidc/access_jwt.py, the revocation markers of idp/revocation.py).

For each piece of state (the JWT itself, its jti, its grant, the user's IdP session, the
revocation markers in the database, the revocation list each process holds in memory, the
signing keys) each test asks who else could present it, from which client, in which order,
or twice, and passes only if idp refuses. Every token that is not a live access token of
idp's is 401 at /userinfo and {"active": false} at /introspect, never a 500. The tests whose
docstrings say "Found by this review" failed when written (an access JWT passed for an ID
token at /logout; a JWT whose iat ran ahead of a revocation of its jti or grant survived it)
and pass since the fix; the others passed at once and stay as guards."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jwk import ECKey, OKPKey, RSAKey
from sqlalchemy import func, select
from starlette.testclient import TestClient

from idp.app import create_app
from idp.clients_file import parse_clients_toml
from idp.clients_sync import sync_clients
from idp.db.models import SigningKey, TokenRevocation, User
from idp.groups import add_group, add_members, remove_members
from idp.oidc.key_revocation import revoke_signing_key
from idp.oidc.signing_keys import _private_key, rotate_signing_key
from idp.revocation import revoke_all_grants, revoke_user_grants_at_client
from idp.settings import Settings
from idp.state.memory import MemoryStore
from idp.user_lifecycle import delete_user, enable_user, set_password
from idp.users import disable_user, reset_mfa
from tests.conftest import ISSUER
from tests.oidc.test_jwt_access_tokens import (
    introspect,
    reload_revocations,
    use_jwt,
    user_id_of,
    userinfo,
    verify_as_resource_server,
)
from tests.oidc.test_logout import configure, logout
from tests.support.rp import SHOP, AuthRequest, redeem, refresh, sign_in_and_get_code, tokens_for
from tests.support.seed import RP_KEY, SHOP_SECRET, _toml_with_inline_jwks

PORTAL_AUTH = {"client_id": "portal", "client_secret": SHOP_SECRET + "-portal"}  # client_secret_post
ONLINE = "openid profile email"
OFFLINE = "openid profile email offline_access"


# ---- helpers ---------------------------------------------------------------------------------


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    """A JOSE segment: bytes as they are, anything else as JSON."""
    return b64u(value if isinstance(value, bytes) else json.dumps(value).encode())


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def raw_jws(header: Any, payload: Any, key: Any, alg: str = "ES256") -> str:
    """A compact JWS signed by hand, so that no library refuses the header on the way out
    (crit, jku, a kid of another key type, HS256 keyed with public key material)."""
    signing_input = f"{segment(header)}.{segment(payload)}".encode()
    if alg == "HS256":
        signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    elif isinstance(key, ECKey):
        r, s = decode_dss_signature(key.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif isinstance(key, OKPKey):
        signature = key.private_key.sign(signing_input)
    else:
        signature = key.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64u(signature)}"


def idp_key(client: TestClient, alg: str = "ES256") -> Any:
    return client.app.state.services.oidc.keys.get().key_for(alg)


def signed_by_idp(client: TestClient, claims: dict[str, Any], alg: str = "ES256", **header: Any) -> str:
    """What only idp can make: its own current key signs; header entries of None are left out."""
    key = idp_key(client, alg)
    full = {"alg": alg, "kid": str(key.kid), "typ": "at+jwt", **header}
    return raw_jws({k: v for k, v in full.items() if v is not None}, claims, key, alg)


def is_live(client: TestClient, token: str, auth: tuple[str, str] = SHOP) -> bool:
    """Both of idp's own checks agree (a 500 at either fails the test)."""
    at_userinfo = userinfo(client, token).status_code
    seen = introspect(client, token, auth)
    assert at_userinfo in (200, 401), at_userinfo
    assert (at_userinfo == 200) == (seen.get("active") is True), (at_userinfo, seen)
    return at_userinfo == 200


def refused_everywhere(client: TestClient, token: str) -> None:
    """Not an access token of idp's: 401 at userinfo, inactive at introspection, and a /revoke
    of it is the 200 of RFC 7009 §2.2 that changes nothing."""
    response = userinfo(client, token)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_token"
    assert introspect(client, token) == {"active": False}
    revoked = client.post("/revoke", data={"token": token}, auth=SHOP)
    assert revoked.status_code == 200, revoked.text
    assert markers(client) == []


def never_believed(client: TestClient, token: str) -> None:
    """Input too long or malformed for a parameter may be a 400 invalid_request instead; it is
    never believed, never revokes anything, and never a 500."""
    at_userinfo = client.get("/userinfo", headers={"authorization": f"Bearer {token}".encode()})
    assert at_userinfo.status_code in (400, 401), at_userinfo.text
    for path in ("/introspect", "/revoke"):
        response = client.post(path, data={"token": token}, auth=SHOP)
        assert response.status_code in (200, 400), response.text
        if response.status_code == 400:
            assert response.json()["error"] == "invalid_request"
        elif path == "/introspect":
            assert response.json() == {"active": False}
    assert markers(client) == []


def markers(client: TestClient) -> list[tuple[str, str]]:
    with client.app.state.services.sessions() as db:
        return [(m.scope, m.subject) for m in db.scalars(select(TokenRevocation).order_by(TokenRevocation.id))]


def admin(client: TestClient, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """An admin command's unit of work (what the CLI runs), then the markers' reload that
    every process does within seconds."""
    with client.app.state.services.sessions.begin() as db:
        done = operation(db, *args, **kwargs)
    reload_revocations(client)
    return done


def fresh_process(client: TestClient) -> Any:
    """Another idp process on the same database that never heard of anything this one did."""
    settings: Settings = client.app.state.services.settings
    other = create_app(settings, store=MemoryStore(), clock=client.app.state.services.clock)
    return TestClient(other, base_url=ISSUER)


def portal_tokens(client: TestClient, scope: str = ONLINE, username: str = "alice") -> dict[str, Any]:
    """portal: authorization_code only (no refresh token), client_secret_post."""
    request = AuthRequest(client_id="portal", redirect_uri="https://portal.example/cb", scope=scope)
    request, code = sign_in_and_get_code(client, request, username=username)
    response = redeem(client, request, code, auth=None, client_secret=PORTAL_AUTH["client_secret"])
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def portal_introspect(client: TestClient, token: str) -> dict[str, Any]:
    response = client.post("/introspect", data={"token": token, **PORTAL_AUTH})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture
def jwt_client(client: TestClient) -> Iterator[TestClient]:
    use_jwt(client)
    yield client


# ---- someone else's token: another client, a public client --------------------------------------


def test_another_client_cannot_revoke_the_jwt(jwt_client):
    token = tokens_for(jwt_client)["access_token"]
    response = jwt_client.post("/revoke", data={"token": token, **PORTAL_AUTH})
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert markers(jwt_client) == []
    assert is_live(jwt_client, token)


def test_a_public_client_cannot_revoke_another_clients_jwt(jwt_client):
    """spa authenticates with its client_id alone: anyone can speak as it."""
    token = tokens_for(jwt_client)["access_token"]
    for hint in (None, "access_token", "refresh_token"):
        data = {"token": token, "client_id": "spa", **({"token_type_hint": hint} if hint else {})}
        response = jwt_client.post("/revoke", data=data)
        assert response.status_code == 400 and response.json()["error"] == "invalid_grant", response.text
    assert markers(jwt_client) == []
    reload_revocations(jwt_client)
    assert is_live(jwt_client, token)


def test_a_public_client_cannot_introspect_a_jwt(jwt_client):
    token = tokens_for(jwt_client)["access_token"]
    response = jwt_client.post("/introspect", data={"token": token, "client_id": "spa"})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    response = jwt_client.post("/introspect", data={"token": token, "client_id": "shop"})  # no secret
    assert response.status_code == 401


def test_a_client_credentials_jwt_is_its_clients_alone(jwt_client):
    response = jwt_client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"}, auth=SHOP)
    token = response.json()["access_token"]
    assert introspect(jwt_client, token)["active"] is True
    assert portal_introspect(jwt_client, token) == {"active": False}
    assert jwt_client.post("/revoke", data={"token": token, "client_id": "spa"}).status_code == 400
    assert introspect(jwt_client, token)["active"] is True


def test_a_jwt_is_not_a_refresh_token_a_code_or_a_client_assertion(jwt_client):
    token = tokens_for(jwt_client)["access_token"]
    as_refresh = refresh(jwt_client, token)
    assert as_refresh.status_code == 400 and as_refresh.json()["error"] == "invalid_grant"
    as_code = jwt_client.post(
        "/token",
        data={"grant_type": "authorization_code", "code": token, "redirect_uri": "https://shop.example/callback"},
        auth=SHOP,
    )
    assert as_code.status_code == 400 and as_code.json()["error"] == "invalid_grant"
    # backend authenticates with private_key_jwt: idp's signature is not its key's
    as_assertion = jwt_client.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "backend",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": token,
        },
    )
    assert as_assertion.status_code in (400, 401) and as_assertion.json()["error"] == "invalid_client", (
        as_assertion.text
    )


def test_an_access_jwt_is_not_an_id_token_hint(client):
    """Found by this review. A resource server receives the access token; if it passed for an
    ID token at /logout, whoever holds it could sign the user out without the confirmation a
    third-party page gets (a hint tied to the session ends it at once). An API that is also a
    registered client (its client_id as the audience) made the aud check no obstacle."""
    use_jwt(client, access_token_audience=["portal"])
    configure(client, "portal", post_logout_redirect_uris=["https://portal.example/bye"])
    tokens = tokens_for(client)
    assert claims_of(tokens["access_token"])["aud"] == ["portal"]
    response = logout(
        client, id_token_hint=tokens["access_token"], post_logout_redirect_uri="https://portal.example/bye"
    )
    assert response.status_code == 400, response.headers.get("location")
    assert "idp_session" in client.cookies
    assert is_live(client, tokens["access_token"])  # still signed in: the session's grant lives
    # the real ID token is still a hint
    assert logout(client, id_token_hint=tokens["id_token"]).status_code == 200
    assert "idp_session" not in client.cookies


# ---- algorithm and header confusion --------------------------------------------------------------


@pytest.mark.parametrize("material", ["pem", "jwk-json", "x-coordinate"])
def test_hs256_keyed_with_idps_public_key_is_refused(jwt_client, material):
    claims = claims_of(tokens_for(jwt_client)["access_token"])
    public = idp_key(jwt_client).as_dict(private=False)
    secret = {
        "pem": ECKey.import_key(public).as_pem(private=False),
        "jwk-json": json.dumps(public).encode(),
        "x-coordinate": base64.urlsafe_b64decode(public["x"] + "=="),
    }[material]
    forged = raw_jws({"alg": "HS256", "kid": public["kid"], "typ": "at+jwt"}, claims, secret, "HS256")
    refused_everywhere(jwt_client, forged)


def test_an_rs256_token_is_not_an_access_token_even_from_idps_own_rsa_key(jwt_client):
    """ID tokens are RS256 by default: the access-token check takes ES256 and Ed25519 only."""
    claims = claims_of(tokens_for(jwt_client)["access_token"])
    assert is_live(jwt_client, signed_by_idp(jwt_client, claims))  # the same claims, ES256: accepted
    refused_everywhere(jwt_client, signed_by_idp(jwt_client, claims, alg="RS256"))


@pytest.mark.parametrize(
    ("alg", "kid_of", "key"),
    [
        ("ES256", "RS256", "attacker-ec"),  # a kid naming idp's RSA key
        ("ES256", "Ed25519", "attacker-ec"),
        ("Ed25519", "ES256", "attacker-okp"),
        ("RS256", "RS256", "attacker-rsa"),
        ("ES256", "ES256", "attacker-ec"),  # idp's own kid, another key
        ("ES256", None, "attacker-ec"),  # no kid: idp must not try the attacker's luck with each key
    ],
)
def test_a_kid_of_idp_with_another_key_or_key_type_is_refused(jwt_client, alg, kid_of, key):
    claims = claims_of(tokens_for(jwt_client)["access_token"])
    attacker = {
        "attacker-ec": lambda: ECKey.generate_key("P-256"),
        "attacker-okp": lambda: OKPKey.generate_key("Ed25519"),
        "attacker-rsa": lambda: RSAKey.generate_key(2048),
    }[key]()
    header: dict[str, Any] = {"alg": alg, "typ": "at+jwt"}
    if kid_of is not None:
        header["kid"] = str(idp_key(jwt_client, kid_of).kid)
    refused_everywhere(jwt_client, raw_jws(header, claims, attacker, alg))


@pytest.mark.parametrize("injected", ["jwk", "jku", "x5u", "x5c"])
def test_a_header_that_brings_its_own_key_is_refused(jwt_client, injected):
    claims = claims_of(tokens_for(jwt_client)["access_token"])
    attacker = ECKey.generate_key("P-256", parameters={"kid": "attacker"})
    public = attacker.as_dict(private=False)
    value = {
        "jwk": public,
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": [b64u(b"not a certificate")],
    }[injected]
    for kid in ("attacker", str(idp_key(jwt_client).kid)):
        header = {"alg": "ES256", "typ": "at+jwt", "kid": kid, injected: value}
        refused_everywhere(jwt_client, raw_jws(header, claims, attacker))


@pytest.mark.parametrize(
    "crit",
    [
        {"crit": ["urn:example:must-understand"], "urn:example:must-understand": True},
        {"crit": ["b64"], "b64": False},
        {"crit": "exp"},  # not even a list
    ],
)
def test_a_crit_header_is_refused_even_under_idps_signature(jwt_client, crit):
    """RFC 7515 §4.1.11: a recipient that does not understand a crit extension must refuse."""
    claims = claims_of(tokens_for(jwt_client)["access_token"])
    refused_everywhere(jwt_client, signed_by_idp(jwt_client, claims, **crit))


@pytest.mark.parametrize(
    "typ",
    [None, "JWT", "jwt", "at+jwt ", " at+jwt", "at+jwt+x", "application/jwt", "logout+jwt", "dpop+jwt", "at%2Bjwt"],
)
def test_only_an_at_jwt_typ_makes_an_access_token(jwt_client, typ):
    claims = claims_of(tokens_for(jwt_client)["access_token"])
    refused_everywhere(jwt_client, signed_by_idp(jwt_client, claims, typ=typ))


def test_typ_is_compared_without_case_but_not_loosely(jwt_client):
    """RFC 7515 §4.1.9: typ values are case-insensitive; its JSON type is not."""
    claims = claims_of(tokens_for(jwt_client)["access_token"])
    for typ in ("AT+JWT", "application/At+Jwt"):
        assert is_live(jwt_client, signed_by_idp(jwt_client, claims, typ=typ))
    for typ in (["at+jwt"], {"at+jwt": 1}, 1):
        refused_everywhere(jwt_client, signed_by_idp(jwt_client, claims, typ=typ))


def test_a_nested_or_encrypted_token_is_refused(jwt_client):
    inner = tokens_for(jwt_client)["access_token"]
    key = idp_key(jwt_client)
    header = {"alg": "ES256", "kid": str(key.kid), "typ": "at+jwt", "cty": "JWT"}
    refused_everywhere(jwt_client, raw_jws(header, inner.encode(), key))  # the payload is a JWT, not claims
    refused_everywhere(jwt_client, raw_jws(header, json.dumps(inner).encode(), key))
    jwe_shaped = (
        f"{segment({'alg': 'dir', 'enc': 'A256GCM', 'typ': 'at+jwt'})}..{b64u(b'iv')}.{b64u(b'c')}.{b64u(b't')}"
    )
    refused_everywhere(jwt_client, jwe_shaped)
    assert is_live(jwt_client, inner)


def test_an_oversized_token_is_refused_even_when_idp_signed_it(jwt_client):
    token = tokens_for(jwt_client)["access_token"]
    claims = claims_of(token)
    big = signed_by_idp(jwt_client, {**claims, "pad": "x" * 4096})
    assert len(big) > 4096
    # at /userinfo only MAX_CHARS stands in the way (idp's signature on it is good); the form
    # endpoints refuse a parameter that long before reading it
    assert userinfo(jwt_client, big).status_code == 401
    never_believed(jwt_client, big)
    never_believed(jwt_client, token + "A" * 5000)  # a live token, its signature padded
    never_believed(jwt_client, "eyJ" + "A" * 100_000 + ".eyJ" + "A" * 100_000 + "." + "A" * 100_000)
    assert is_live(jwt_client, token)


NOT_JWTS = [
    "eyJ..",
    "eyJ.eyJ.",
    "eyJhbGciOiJFUzI1NiJ9..",
    "eyJ!!!.eyJ$$$.***",
    "eyJ" + "\u00e9" * 20 + ".a.b",
    "eyJ\x00\x00\x00.a.b",
    "eyJhbGciOiJub25lIn0.e30.",
    segment(b'{"alg":"ES256"}') + "." + segment(b"[]") + ".AAAA",
    segment(b'{"alg":"ES256"}') + "." + segment(b'"a string"') + ".AAAA",
    segment(b'{"alg":"ES256"}') + "." + segment(b"null") + ".AAAA",
    segment(b'{"alg":"ES256"}') + "." + segment(b"\xff\xfe") + ".AAAA",
    segment(b'{"alg":"ES256","alg":"none"}') + "." + segment(b"{}") + ".",
    segment(b'{"alg":null}') + "." + segment(b"{}") + ".AAAA",
    segment(b'{"alg":["ES256"]}') + "." + segment(b"{}") + ".AAAA",
    segment(b'{"alg":{"ES256":1}}') + "." + segment(b"{}") + ".AAAA",
    segment(b'{"alg":256}') + "." + segment(b"{}") + ".AAAA",
    segment(b'{"alg":"ES256","kid":["a","b"]}') + "." + segment(b"{}") + ".AAAA",
    segment(b'{"alg":"ES256","kid":{"k":1}}') + "." + segment(b"{}") + ".AAAA",
    segment(b'{"alg":"ES256","kid":12}') + "." + segment(b"{}") + ".AAAA",
    segment(b'{"alg":"ES256","crit":"x"}') + "." + segment(b"{}") + ".AAAA",
    segment(b'{"alg":"ES256","b64":false,"crit":["b64"]}') + ".{}.AAAA",
    segment(b'{"alg":"ES256","typ":"at+jwt"') + "." + segment(b"{}") + ".AAAA",  # truncated JSON
    segment(b'{"alg":"ES256"}') + "." + segment(b"{}") + "." + "A" * 3,  # a signature of no length
]


@pytest.mark.parametrize("token", NOT_JWTS, ids=range(len(NOT_JWTS)))
def test_strings_shaped_like_a_jwt_are_refused_never_an_error(jwt_client, token):
    assert token.count(".") == 2
    never_believed(jwt_client, token)


# ---- the signing keys --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "Ed25519"])
def test_a_jwt_signed_by_a_revoked_key_dies_when_the_keys_reload(client, alg):
    """`idp keys revoke KID`: a leaked key must stop vouching for the access tokens it signed."""
    use_jwt(client, access_token_signing_alg=alg)
    old = tokens_for(client)["access_token"]
    leaked = str(idp_key(client, alg).kid)
    assert json.loads(base64.urlsafe_b64decode(old.split(".")[0] + "=="))["kid"] == leaked
    services = client.app.state.services
    with services.sessions.begin() as db:
        rotate_signing_key(db, services.keyring, id_token_ttl_seconds=3600, signs_in_seconds=0, alg=alg)
    services.oidc.keys.reload()
    assert is_live(client, old)  # a rotation alone keeps the old key published: its tokens live
    with services.sessions.begin() as db:
        revoke_signing_key(db, leaked, id_token_ttl_seconds=3600, keyring=services.keyring)
    services.oidc.keys.reload()  # what every process does within REFRESH_SECONDS
    assert not is_live(client, old)
    assert leaked not in {key["kid"] for key in client.get("/jwks").json()["keys"]}
    # what the leaked key signs from now on is refused too, whatever the claims
    forged = raw_jws({"alg": alg, "kid": leaked, "typ": "at+jwt"}, claims_of(old), idp_key_of_row(client, leaked), alg)
    assert not is_live(client, forged)
    new = tokens_for(client, AuthRequest())["access_token"]
    assert verify_as_resource_server(client, new, alg=alg) and is_live(client, new)


def idp_key_of_row(client: TestClient, kid: str) -> Any:
    """The private key of a stored signing key (what whoever leaked it holds)."""
    services = client.app.state.services
    with services.sessions() as db:
        row = db.scalar(select(SigningKey).where(SigningKey.kid == kid))
        return _private_key(row, services.keyring)


# ---- the IdP session and the user -----------------------------------------------------------------


def test_logout_ends_the_sessions_jwts_but_not_its_offline_ones(jwt_client):
    online = tokens_for(jwt_client, AuthRequest(scope=ONLINE))
    refreshed = refresh(jwt_client, online["refresh_token"]).json()["access_token"]  # same grant, minted later
    offline = tokens_for(jwt_client, AuthRequest(scope=OFFLINE))
    assert claims_of(online["access_token"])["sid"] == claims_of(offline["access_token"])["sid"]
    assert logout(jwt_client, id_token_hint=online["id_token"]).status_code == 200
    reload_revocations(jwt_client)
    assert not is_live(jwt_client, online["access_token"])
    assert not is_live(jwt_client, refreshed)
    assert is_live(jwt_client, offline["access_token"])  # offline_access outlives the session, by design
    with fresh_process(jwt_client) as other:  # a process that never heard of the logout
        assert userinfo(other, online["access_token"]).status_code == 401
        assert introspect(other, refreshed) == {"active": False}


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda db, keyring: disable_user(db, "alice"), id="disable"),
        pytest.param(lambda db, keyring: set_password(db, "alice", "x", must_change=True), id="admin-password"),
        pytest.param(lambda db, keyring: reset_mfa(db, "alice"), id="reset-mfa"),
        pytest.param(lambda db, keyring: delete_user(db, keyring, "alice", allow_reuse=False), id="delete"),
        # what the user's own password change and a recovery run (idp/account, idp/links)
        pytest.param(lambda db, keyring: revoke_all_grants(db, _alice(db)), id="password-change"),
    ],
)
def test_what_the_admin_or_a_credential_change_ends_ends_the_jwt(jwt_client, operation):
    """offline_access too: these end every grant of the user, and introspection, which reads
    no user row for a JWT, must hear of it."""
    offline = tokens_for(jwt_client, AuthRequest(scope=OFFLINE))["access_token"]
    assert is_live(jwt_client, offline)
    services = jwt_client.app.state.services
    with services.sessions.begin() as db:
        operation(db, services.keyring)
    reload_revocations(jwt_client)
    assert introspect(jwt_client, offline) == {"active": False}
    assert userinfo(jwt_client, offline).status_code == 401
    assert jwt_client.post("/revoke", data={"token": offline}, auth=SHOP).status_code == 200


def _alice(db: Any) -> int:
    return int(db.scalar(select(User.id).where(User.username == "alice")))


def test_enabling_a_disabled_user_does_not_revive_their_jwt(jwt_client, clock):
    token = tokens_for(jwt_client)["access_token"]
    admin(jwt_client, disable_user, "alice")
    admin(jwt_client, enable_user, "alice")
    assert not is_live(jwt_client, token)  # userinfo now finds an enabled user: the marker alone refuses
    with fresh_process(jwt_client) as other:
        assert userinfo(other, token).status_code == 401
    clock.advance(1)
    assert is_live(jwt_client, tokens_for(jwt_client, AuthRequest())["access_token"])


# ---- the user leaves the app's groups, holding only a JWT --------------------------------------------


def test_removing_a_member_ends_their_jwt_at_a_client_without_refresh_tokens(client):
    configure(client, "portal", access_token_format="jwt", allowed_groups=["staff"])
    with client.app.state.services.sessions.begin() as db:
        add_group(db, "staff")
        add_members(db, "staff", ["alice", "bob"])
    token = portal_tokens(client)["access_token"]
    assert "refresh_token" not in portal_tokens(client)  # a JWT is all alice holds there
    assert userinfo(client, token).status_code == 200 and portal_introspect(client, token)["active"] is True
    removal = admin(client, remove_members, "staff", ["alice"])
    assert removal.withdrawn == (("alice", "portal"),)
    assert userinfo(client, token).status_code == 401
    assert portal_introspect(client, token) == {"active": False}


def test_narrowing_allowed_groups_ends_a_jwt_held_without_session_refresh_token_or_row(client):
    """The holder idp can find only by the code it redeemed lately: an offline_access grant at
    portal (no refresh token: portal has no refresh_token grant) outlives the logout, and no
    access token row names it."""
    portal_toml = 'scope = "openid profile email"\nfirst_party = true\n'
    jwt_portal = 'scope = "openid profile email offline_access"\nfirst_party = true\naccess_token_format = "jwt"\n'
    toml = _toml_with_inline_jwks()
    assert portal_toml in toml
    services = client.app.state.services
    with services.sessions.begin() as db:
        add_group(db, "staff")
        add_members(db, "staff", ["bob"])
        sync_clients(db, services.keyring, parse_clients_toml(toml.replace(portal_toml, jwt_portal)))
    services.oidc.clients.reload()
    tokens = portal_tokens(client, scope=OFFLINE)
    token = tokens["access_token"]
    assert "refresh_token" not in tokens
    assert logout(client, id_token_hint=tokens["id_token"]).status_code == 200
    reload_revocations(client)
    assert userinfo(client, token).status_code == 200  # offline_access: the logout left it
    narrowed = toml.replace(portal_toml, jwt_portal + 'allowed_groups = ["staff"]\n')
    with services.sessions.begin() as db:
        report = sync_clients(db, services.keyring, parse_clients_toml(narrowed))
    assert ("alice", "portal") in report.withdrawn
    services.oidc.clients.reload()
    reload_revocations(client)
    assert userinfo(client, token).status_code == 401
    assert portal_introspect(client, token) == {"active": False}


# ---- codes and grants presented twice --------------------------------------------------------------


def test_a_replayed_code_ends_the_jwt_it_gave(jwt_client):
    request, code = sign_in_and_get_code(jwt_client)
    first = redeem(jwt_client, request, code)
    assert first.status_code == 200
    token = first.json()["access_token"]
    replay = redeem(jwt_client, request, code)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    reload_revocations(jwt_client)
    assert not is_live(jwt_client, token)


# ---- the markers and the in-memory list -------------------------------------------------------------


def test_a_revoked_jwt_stays_dead_after_a_reload_a_second_revoke_and_in_a_new_process(jwt_client):
    token = tokens_for(jwt_client)["access_token"]
    for _ in range(2):  # revoked twice: the second is a harmless 200
        assert jwt_client.post("/revoke", data={"token": token}, auth=SHOP).status_code == 200
    assert [scope for scope, _ in markers(jwt_client)] == ["token"]
    jwt_client.app.state.services.oidc.revocations._revoked = {}  # memory lost
    reload_revocations(jwt_client)
    assert not is_live(jwt_client, token)
    with fresh_process(jwt_client) as other:  # started after the revocation: loads the markers at start
        assert userinfo(other, token).status_code == 401
        assert introspect(other, token) == {"active": False}


def test_markers_outlive_the_longest_jwt_even_when_a_later_revocation_sweeps(client, clock):
    use_jwt(client, access_token_lifetime=300)
    grant = tokens_for(client)
    single = tokens_for(client, AuthRequest())
    assert client.post("/revoke", data={"token": grant["refresh_token"]}, auth=SHOP).status_code == 200
    assert client.post("/revoke", data={"token": single["access_token"]}, auth=SHOP).status_code == 200
    clock.advance(299)
    admin(client, revoke_all_grants, user_id_of(client, "bob"))  # sweeps what it thinks expired
    client.app.state.services.oidc.revocations._revoked = {}
    reload_revocations(client)
    assert userinfo(client, grant["access_token"]).status_code == 401
    assert userinfo(client, single["access_token"]).status_code == 401


def test_a_token_from_the_same_second_as_a_revocation_counts_as_revoked_in_every_process(jwt_client, clock):
    """A token issued after a revocation but within its second has the same iat: documented
    as revoked; the database's round trip of revoked_at must keep it so."""
    clock.advance(0.25)
    admin(jwt_client, revoke_all_grants, user_id_of(jwt_client, "alice"))
    clock.advance(0.5)  # the same second, later
    token = tokens_for(jwt_client, AuthRequest())["access_token"]
    assert not is_live(jwt_client, token)
    jwt_client.app.state.services.oidc.revocations._revoked = {}
    reload_revocations(jwt_client)
    assert not is_live(jwt_client, token)
    clock.advance(0.25)  # the next second
    assert is_live(jwt_client, tokens_for(jwt_client, AuthRequest())["access_token"])


@pytest.mark.parametrize("how", ["revoke-the-jwt", "revoke-the-grant"])
def test_a_jwt_signed_on_a_host_whose_clock_runs_ahead_is_still_revoked(jwt_client, clock, how):
    """Found by this review. idp believes an iat up to a minute ahead (another host's clock),
    but a marker counted only tokens issued at or before it: a JWT that host signed, revoked
    here at /revoke (RFC 7009: the 200 says it is gone) or by its grant, lived on until exp."""
    tokens = tokens_for(jwt_client)
    claims = claims_of(tokens["access_token"])
    ahead = {**claims, "iat": claims["iat"] + 30, "exp": claims["exp"] + 30, "jti": "jti-of-the-host-ahead-0123"}
    token = signed_by_idp(jwt_client, ahead)
    assert is_live(jwt_client, token)
    revoked = tokens["refresh_token"] if how == "revoke-the-grant" else token
    assert jwt_client.post("/revoke", data={"token": revoked}, auth=SHOP).status_code == 200
    reload_revocations(jwt_client)
    assert not is_live(jwt_client, token)


@pytest.mark.parametrize("lifetime", [301, 3600, 10**12])
def test_a_lifetime_beyond_300_seconds_is_never_believed(jwt_client, lifetime):
    """idp never signs a lifetime over 300 s (the clients file refuses it, the policy caps it),
    and the markers outlive only tokens that short: one signed with idp's key anyway would come
    back to life when its marker is swept, and a far exp made /introspect answer 500."""
    claims = claims_of(tokens_for(jwt_client)["access_token"])
    far = signed_by_idp(jwt_client, {**claims, "exp": claims["iat"] + lifetime, "jti": "far-0123456789abcd"})
    refused_everywhere(jwt_client, far)
    assert is_live(jwt_client, signed_by_idp(jwt_client, {**claims, "exp": claims["iat"] + 300}))


def test_a_revoke_noted_by_this_process_survives_a_reload_that_read_the_table_before_its_commit(jwt_client):
    """note() runs before the unit of work commits: a background reload that read the markers
    just before must not forget the revocation until the next one."""
    token = tokens_for(jwt_client)["access_token"]
    revocations = jwt_client.app.state.services.oidc.revocations
    claims = claims_of(token)
    revocations.note("token", claims["jti"], jwt_client.app.state.services.clock.now())  # not in the table
    reload_revocations(jwt_client)
    assert not is_live(jwt_client, token)


def test_a_marker_for_one_user_or_client_does_not_reach_another(jwt_client):
    """The converse guard: a marker ends what it names and nothing else (bob's revocation does
    not end alice's token, alice's withdrawal from portal not her token at shop)."""
    alice = tokens_for(jwt_client)["access_token"]
    admin(jwt_client, revoke_all_grants, user_id_of(jwt_client, "bob"))
    admin(jwt_client, revoke_user_grants_at_client, user_id_of(jwt_client, "alice"), "portal")
    assert is_live(jwt_client, alice)
    with jwt_client.app.state.services.sessions() as db:
        assert db.scalar(select(func.count()).select_from(TokenRevocation)) == 2


def test_rp_key_is_not_idps(jwt_client):
    """A relying party's registered key (backend's private_key_jwt key) signs nothing idp believes."""
    claims = claims_of(tokens_for(jwt_client)["access_token"])
    forged = raw_jws({"alg": "RS256", "kid": "rp-key-1", "typ": "at+jwt"}, claims, RP_KEY, "RS256")
    refused_everywhere(jwt_client, forged)
