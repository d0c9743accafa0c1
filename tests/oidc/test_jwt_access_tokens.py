"""JWT access tokens (RFC 9068) for a client with access_token_format = "jwt": the token a
resource server verifies with /jwks alone, that userinfo and introspection check without a
lookup, and that every revocation still reaches (idp/oidc/access_jwt.py, the markers of
idp/revocation.py). Opaque tokens stay the default."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from joserfc import jws, jwt
from joserfc.jwk import ECKey, KeySet
from sqlalchemy import func, select
from starlette.testclient import TestClient

from idp.clients_file import ClientsFileError, parse_clients_toml
from idp.db.models import AccessToken, TokenRevocation, User
from idp.revocation import revoke_all_grants, revoke_user_grants_at_client
from tests.conftest import ISSUER
from tests.oidc.test_logout import configure
from tests.support.rp import SHOP, AuthRequest, decode_id_token, refresh, tokens_for

BACKEND_TOML = """
[[clients]]
client_id = "api"
client_secret = "api-secret-0123456789abcdefghijklmnopqrstuvwxyz"
grant_types = ["client_credentials"]
token_endpoint_auth_method = "client_secret_basic"
scope = "profile"
"""


def use_jwt(client: TestClient, **fields: Any) -> None:
    configure(client, "shop", access_token_format="jwt", **fields)


def access_rows(client: TestClient) -> int:
    with client.app.state.services.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(AccessToken)))


def verify_as_resource_server(client: TestClient, token: str, alg: str = "ES256") -> dict[str, Any]:
    """What a resource server does with RFC 9068 §4: /jwks, the header's alg and typ, iss, aud."""
    header = dict(jws.extract_compact(token.encode()).headers())
    assert header["typ"] == "at+jwt" and header["alg"] == alg
    keys = KeySet.import_key_set(client.get("/jwks").json())
    claims = dict(jwt.decode(token, keys, algorithms=[alg]).claims)
    assert claims["iss"] == ISSUER
    return claims


def userinfo(client: TestClient, token: str) -> Any:
    return client.get("/userinfo", headers={"authorization": f"Bearer {token}"})


def introspect(client: TestClient, token: str, auth: tuple[str, str] = SHOP) -> dict[str, Any]:
    response = client.post("/introspect", data={"token": token}, auth=auth)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def subject_of(client: TestClient, username: str) -> str:
    with client.app.state.services.sessions() as db:
        return str(db.scalar(select(User.subject).where(User.username == username)))


def user_id_of(client: TestClient, username: str) -> int:
    with client.app.state.services.sessions() as db:
        return int(db.scalar(select(User.id).where(User.username == username)))


def reload_revocations(client: TestClient) -> None:
    """What the app's background refresher does within seconds on every process."""
    client.app.state.services.oidc.revocations.reload()


def test_opaque_stays_the_default(client):
    tokens = tokens_for(client)
    assert tokens["access_token"].count(".") == 0
    assert access_rows(client) == 1


def test_the_code_flow_gives_a_jwt_a_resource_server_verifies_and_no_row_is_written(client, clock):
    use_jwt(client)
    tokens = tokens_for(client)
    claims = verify_as_resource_server(client, tokens["access_token"])
    assert claims["sub"] == subject_of(client, "alice")
    assert claims["client_id"] == "shop" and claims["aud"] == ISSUER
    assert claims["scope"] == tokens["scope"]
    assert claims["iat"] == int(clock.time()) and claims["exp"] - claims["iat"] == tokens["expires_in"] <= 300
    assert claims["acr"] and claims["amr"] == ["pwd"] and isinstance(claims["auth_time"], int)
    assert claims["sid"] and claims["grant_id"] and len(claims["jti"]) >= 16
    assert access_rows(client) == 0  # the point: nothing to insert, nothing to look up
    # the ID token's at_hash is of the JWT the client received
    id_token = decode_id_token(client, tokens["id_token"])
    digest = __import__("hashlib").sha256(tokens["access_token"].encode("ascii")).digest()
    assert id_token["at_hash"] == base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def test_userinfo_and_introspection_accept_it(client):
    use_jwt(client)
    tokens = tokens_for(client)
    answer = userinfo(client, tokens["access_token"])
    assert answer.status_code == 200, answer.text
    assert answer.json()["sub"] == subject_of(client, "alice")
    assert answer.json()["email"] == "alice@example.com"
    seen = introspect(client, tokens["access_token"])
    assert seen["active"] is True and seen["sub"] == subject_of(client, "alice")
    assert seen["client_id"] == "shop" and seen["token_type"] == "Bearer" and seen["iss"] == ISSUER
    assert "username" not in seen  # the token alone answers: no lookup of the user


def test_another_client_cannot_introspect_it(client):
    use_jwt(client)
    tokens = tokens_for(client)
    portal = {"client_id": "portal", "client_secret": SHOP[1] + "-portal"}  # client_secret_post
    response = client.post("/introspect", data={"token": tokens["access_token"], **portal})
    assert response.status_code == 200, response.text
    assert response.json() == {"active": False}


def test_audience_lifetime_and_ed25519_come_from_the_clients_file(client):
    use_jwt(
        client,
        access_token_signing_alg="Ed25519",
        access_token_lifetime=120,
        access_token_audience=["https://api.shop.example"],
    )
    tokens = tokens_for(client)
    claims = verify_as_resource_server(client, tokens["access_token"], alg="Ed25519")
    assert claims["aud"] == ["https://api.shop.example"]
    assert claims["exp"] - claims["iat"] == 120 == tokens["expires_in"]
    assert userinfo(client, tokens["access_token"]).status_code == 200


def test_a_refresh_gives_a_new_jwt_of_the_same_grant(client):
    use_jwt(client)
    first = tokens_for(client)
    second = refresh(client, first["refresh_token"]).json()
    one, two = (verify_as_resource_server(client, t["access_token"]) for t in (first, second))
    assert one["grant_id"] == two["grant_id"] and one["jti"] != two["jti"]
    assert two["auth_time"] == one["auth_time"] and two["sid"] == one["sid"]
    assert userinfo(client, second["access_token"]).status_code == 200


def test_it_expires(client, clock):
    use_jwt(client, access_token_lifetime=60)
    token = tokens_for(client)["access_token"]
    clock.advance(59)
    assert userinfo(client, token).status_code == 200
    clock.advance(1)
    assert userinfo(client, token).status_code == 401
    assert introspect(client, token) == {"active": False}


def test_revoking_it_at_revoke_ends_it_at_once_and_on_every_process(client):
    use_jwt(client)
    tokens = tokens_for(client)
    response = client.post("/revoke", data={"token": tokens["access_token"]}, auth=SHOP)
    assert response.status_code == 200
    assert userinfo(client, tokens["access_token"]).status_code == 401  # this process: at once
    assert introspect(client, tokens["access_token"]) == {"active": False}
    with client.app.state.services.sessions() as db:  # every other process: from the marker
        [marker] = db.scalars(select(TokenRevocation)).all()
        assert marker.scope == "token"
    client.app.state.services.oidc.revocations._revoked = {}  # a process that never heard of it
    reload_revocations(client)
    assert userinfo(client, tokens["access_token"]).status_code == 401
    # the grant itself lives on: only that access token was revoked (RFC 7009 §2.1)
    assert refresh(client, tokens["refresh_token"]).status_code == 200


def test_revoking_the_refresh_token_ends_the_grants_jwts(client):
    use_jwt(client)
    tokens = tokens_for(client)
    response = client.post("/revoke", data={"token": tokens["refresh_token"]}, auth=SHOP)
    assert response.status_code == 200
    reload_revocations(client)
    assert userinfo(client, tokens["access_token"]).status_code == 401
    assert introspect(client, tokens["access_token"]) == {"active": False}


def test_refresh_token_reuse_ends_the_grants_jwts(client):
    use_jwt(client)
    first = tokens_for(client)
    second = refresh(client, first["refresh_token"]).json()
    assert refresh(client, first["refresh_token"]).status_code == 400  # reuse: the family dies
    reload_revocations(client)
    assert userinfo(client, second["access_token"]).status_code == 401


def test_revoking_a_users_grants_ends_their_jwts_but_not_later_ones(client, clock):
    use_jwt(client)
    before = tokens_for(client)["access_token"]
    with client.app.state.services.sessions.begin() as db:
        revoke_all_grants(db, user_id_of(client, "alice"))  # a password change, a disable, a recovery
    reload_revocations(client)
    assert userinfo(client, before).status_code == 401
    clock.advance(1)  # iat has whole seconds: a token of the revocation's own second counts as revoked
    after = tokens_for(client, AuthRequest())["access_token"]
    assert userinfo(client, after).status_code == 200


def test_withdrawing_a_user_from_a_client_ends_their_jwts_there(client):
    use_jwt(client)
    token = tokens_for(client)["access_token"]
    with client.app.state.services.sessions.begin() as db:
        revoke_user_grants_at_client(db, user_id_of(client, "alice"), "shop")
    reload_revocations(client)
    assert userinfo(client, token).status_code == 401


def test_markers_are_kept_only_while_a_jwt_could_still_live(client, clock):
    use_jwt(client)
    tokens_for(client)
    with client.app.state.services.sessions.begin() as db:
        revoke_all_grants(db, user_id_of(client, "alice"))
    clock.advance(361)
    with client.app.state.services.sessions.begin() as db:
        revoke_all_grants(db, user_id_of(client, "bob"))  # the next revocation sweeps the old marker
    bob = subject_of(client, "bob")
    with client.app.state.services.sessions() as db:
        assert [m.subject for m in db.scalars(select(TokenRevocation))] == [bob]


def test_a_client_credentials_jwt_names_the_client_and_opens_no_userinfo(client):
    configure(client, "shop", access_token_format="jwt")
    response = client.post("/token", data={"grant_type": "client_credentials", "scope": "profile"}, auth=SHOP)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    claims = verify_as_resource_server(client, token)
    assert claims["sub"] == "shop" and "auth_time" not in claims and "grant_id" not in claims
    assert introspect(client, token)["active"] is True
    assert userinfo(client, token).status_code == 401


# ---- what is not one of idp's access tokens -------------------------------------------------------


def _forge(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _signed(claims: dict[str, Any], header: dict[str, Any]) -> str:
    return jwt.encode(header, claims, ECKey.generate_key("P-256"), algorithms=["ES256"])


def test_an_altered_token_is_refused(client):
    use_jwt(client)
    token = tokens_for(client)["access_token"]
    forged = _forge(token, sub=subject_of(client, "bob"))
    assert userinfo(client, forged).status_code == 401
    assert introspect(client, forged) == {"active": False}


def test_a_token_signed_by_another_key_with_idps_kid_is_refused(client):
    use_jwt(client)
    token = tokens_for(client)["access_token"]
    header = dict(jws.extract_compact(token.encode()).headers())
    claims = verify_as_resource_server(client, token)
    assert userinfo(client, _signed(claims, header)).status_code == 401


def test_an_unsigned_token_is_refused(client):
    use_jwt(client)
    token = tokens_for(client)["access_token"]
    _, payload, _ = token.split(".")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"at+jwt"}').rstrip(b"=").decode()
    assert userinfo(client, f"{none_header}.{payload}.").status_code == 401


@pytest.mark.parametrize(
    ("change", "typ"),
    [
        ({}, "JWT"),  # any other JWT idp signs (an ID token, a logout token) is not an access token
        ({"iss": "https://other.example"}, "at+jwt"),
        ({"iat": "later"}, "at+jwt"),  # not a NumericDate
        ({"client_id": None}, "at+jwt"),
        ({"future": 3600}, "at+jwt"),  # issued an hour from now: a clock that far off is not believed
    ],
)
def test_a_token_signed_by_idp_but_not_as_an_access_token_is_refused(client, clock, change, typ):
    use_jwt(client)
    claims = verify_as_resource_server(client, tokens_for(client)["access_token"])
    assert (
        userinfo(client, client.app.state.services.oidc.keys.get().sign(claims, alg="ES256", typ="at+jwt")).status_code
        == 200
    )
    if "future" in change:
        change = {"iat": claims["iat"] + change["future"], "exp": claims["exp"] + change["future"]}
    crafted = {k: v for k, v in {**claims, **change}.items() if v is not None}
    token = client.app.state.services.oidc.keys.get().sign(crafted, alg="ES256", typ=typ)
    assert userinfo(client, token).status_code == 401
    assert introspect(client, token) == {"active": False}


def test_an_id_token_is_not_an_access_token(client):
    use_jwt(client)
    tokens = tokens_for(client)
    configure(client, "shop", access_token_format="jwt", id_token_signed_response_alg="ES256")
    id_token = tokens_for(client, AuthRequest())["id_token"]
    assert userinfo(client, id_token).status_code == 401  # typ JWT, not at+jwt
    assert introspect(client, id_token) == {"active": False}
    assert userinfo(client, tokens["access_token"]).status_code == 200


def test_a_disabled_user_is_refused_at_userinfo_even_before_the_markers_reload(client):
    use_jwt(client)
    token = tokens_for(client)["access_token"]
    with client.app.state.services.sessions.begin() as db:
        db.get(User, user_id_of(client, "alice")).disabled = True
    assert userinfo(client, token).status_code == 401


# ---- the clients file ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('access_token_format = "jwt"\naccess_token_lifetime = 301', "from 1 to 300"),
        ('access_token_format = "jwt"\naccess_token_lifetime = 0', "from 1 to 300"),
        ('access_token_format = "jwt"\naccess_token_signing_alg = "RS256"', "is not supported"),
        ('access_token_format = "jwt"\naccess_token_signing_alg = "none"', "is not supported"),
        ('access_token_format = "jwt"\naccess_token_audience = [""]', "resource server's identifier"),
        ("access_token_lifetime = 60", 'used only with access_token_format = "jwt"'),
        ('access_token_format = "paseto"', "is not supported"),
    ],
)
def test_the_clients_file_refuses_what_would_not_be_a_short_lived_signed_token(extra, message):
    with pytest.raises(ClientsFileError, match=message):
        parse_clients_toml(BACKEND_TOML + extra + "\n")


def test_the_clients_file_takes_the_jwt_settings():
    [config] = parse_clients_toml(
        BACKEND_TOML + 'access_token_format = "jwt"\naccess_token_audience = ["https://api.example"]\n'
    )
    assert config.access_token_format == "jwt" and config.access_token_signing_alg == "ES256"
    assert config.access_token_lifetime is None and config.access_token_audience == ("https://api.example",)


def test_the_key_family_a_jwt_client_signs_with_is_in_use(client):
    """`idp keys revoke` refuses to leave a family in use without a key, and the schedule
    rotates only families in use: a JWT client's access_token_signing_alg makes one."""
    from idp.oidc.signing_keys import families_in_use

    with client.app.state.services.sessions() as db:
        assert "Ed25519" not in families_in_use(db)
    use_jwt(client, access_token_signing_alg="Ed25519")
    with client.app.state.services.sessions() as db:
        assert "Ed25519" in families_in_use(db)
