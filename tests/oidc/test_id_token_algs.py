"""Per-client ID token algorithms (OIDC Registration §2 `id_token_signed_response_alg`; RFC 7518
§3.3-3.4, RFC 8037, RFC 9864): RS256, ES256, Ed25519 and its older name EdDSA, each ID token
verified against /jwks with exactly the alg and kid of its header, by joserfc and (for the
names it knows) PyJWT; one key per algorithm family in JWKS, each rotated publish-then-sign."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import jwt as pyjwt
import pytest
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import delete
from starlette.testclient import TestClient

from idp.app import create_app
from idp.db.models import SigningKey
from idp.oidc.logout import check_hint, logout_token
from idp.oidc.signing_keys import rotate_signing_key, rotate_signing_keys
from idp.state.memory import MemoryStore
from tests.conftest import ISSUER
from tests.oidc.test_logout import configure, drain_deliveries, receiver, wait_until
from tests.support.rp import AuthRequest, redeem, refresh, sign_in_and_get_code
from tests.support.seed import seed

FAMILY = {"RS256": "RS256", "ES256": "ES256", "Ed25519": "Ed25519", "EdDSA": "Ed25519"}
ALGS = list(FAMILY)
PYJWT_ALGS = {"RS256", "ES256", "EdDSA"}  # PyJWT 2.x does not know RFC 9864's "Ed25519"


def use_alg(client: TestClient, alg: str | None) -> None:
    configure(client, "shop", id_token_signed_response_alg=alg)


def header_of(token: str) -> dict[str, Any]:
    return dict(jws.extract_compact(token.encode()).headers())


def jwks(client: TestClient) -> list[dict[str, Any]]:
    return client.get("/jwks").json()["keys"]  # type: ignore[no-any-return]


def kids_by_alg(client: TestClient) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for key in jwks(client):
        found.setdefault(key["alg"], set()).add(key["kid"])
    return found


def verify(client: TestClient, token: str, alg: str) -> dict[str, Any]:
    """Verified as an RP does: the JWK the header's kid names, that alg and no other."""
    document = client.get("/jwks").json()
    header = header_of(token)
    assert header["alg"] == alg and header["typ"] == "JWT"
    [jwk] = [k for k in document["keys"] if k["kid"] == header["kid"]]
    assert jwk["alg"] == alg and jwk["use"] == "sig"
    claims = dict(jwt.decode(token, KeySet.import_key_set(document), algorithms=[alg]).claims)
    if alg in PYJWT_ALGS:
        key = pyjwt.PyJWKSet.from_dict(document)[header["kid"]]
        # PyJWT checks the times against the wall clock; the app's clock is checked below
        wall_times_off = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}
        assert (
            pyjwt.decode(token, key.key, algorithms=[alg], audience="shop", issuer=ISSUER, options=wall_times_off)
            == claims
        )
    assert claims["iss"] == ISSUER and claims["aud"] == "shop"
    assert claims["iat"] <= client.app.state.services.clock.time() < claims["exp"]
    return claims


def sign_in(client: TestClient) -> tuple[AuthRequest, dict[str, Any]]:
    request, code = sign_in_and_get_code(client)
    response = redeem(client, request, code)
    assert response.status_code == 200, response.text
    return request, response.json()


def reload_keys(client: TestClient) -> None:
    client.app.state.services.oidc.keys.reload()  # every process does so within REFRESH_SECONDS


@pytest.mark.parametrize("alg", ALGS)
def test_id_tokens_are_signed_with_the_clients_alg_from_the_code_and_the_refresh_grant(client, alg):
    use_alg(client, alg)
    request, tokens = sign_in(client)
    claims = verify(client, tokens["id_token"], alg)
    assert claims["nonce"] == request.nonce and claims["acr"] and claims["amr"] and claims["auth_time"]
    # at_hash only where every library agrees on the hash (idp/oidc/id_tokens.py)
    assert ("at_hash" in claims) == (FAMILY[alg] != "Ed25519")

    refreshed = refresh(client, tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    again = verify(client, refreshed.json()["id_token"], alg)
    assert header_of(refreshed.json()["id_token"])["kid"] == header_of(tokens["id_token"])["kid"]
    assert (again["sub"], again["auth_time"], again["acr"]) == (claims["sub"], claims["auth_time"], claims["acr"])


def test_a_client_that_registers_no_alg_gets_rs256(client):
    use_alg(client, None)
    verify(client, sign_in(client)[1]["id_token"], "RS256")


def test_jwks_holds_one_key_per_algorithm_with_its_name_kid_and_use(client):
    keys = {key["alg"]: key for key in jwks(client)}
    assert len(jwks(client)) == 4 and keys.keys() == {"RS256", "ES256", "Ed25519", "EdDSA"}
    assert keys["RS256"]["kty"] == "RSA" and pyjwt.PyJWK(keys["RS256"]).key.key_size >= 2048
    assert (keys["ES256"]["kty"], keys["ES256"]["crv"]) == ("EC", "P-256")
    assert (keys["Ed25519"]["kty"], keys["Ed25519"]["crv"]) == ("OKP", "Ed25519")
    # the EdDSA entry is the Ed25519 key under its older name, with a kid of its own
    assert {k: v for k, v in keys["EdDSA"].items() if k not in ("alg", "kid")} == {
        k: v for k, v in keys["Ed25519"].items() if k not in ("alg", "kid")
    }
    assert len({key["kid"] for key in keys.values()}) == 4


def test_ed25519_and_eddsa_sign_with_one_key_and_say_which_name_is_used(client):
    use_alg(client, "Ed25519")
    ed25519 = sign_in(client)[1]["id_token"]
    use_alg(client, "EdDSA")
    eddsa = sign_in(client)[1]["id_token"]
    published = {key["kid"]: key for key in jwks(client)}
    assert header_of(ed25519)["alg"] == "Ed25519" and header_of(eddsa)["alg"] == "EdDSA"
    assert published[header_of(ed25519)["kid"]]["x"] == published[header_of(eddsa)["kid"]]["x"]
    # a verifier that matches the header's alg to the JWK's (joserfc, panva/jose) needs both entries
    only_ed25519 = KeySet.import_key_set({"keys": [published[header_of(ed25519)["kid"]]]})
    with pytest.raises(JoseError):
        jwt.decode(eddsa, only_ed25519, algorithms=["EdDSA"])


@pytest.mark.parametrize("alg", ALGS)
def test_a_rotation_publishes_every_new_key_before_it_signs(client, clock, alg):
    use_alg(client, alg)
    old_kid = header_of(sign_in(client)[1]["id_token"])["kid"]
    services = client.app.state.services
    with services.sessions.begin() as db:
        rows = rotate_signing_keys(db, services.keyring, id_token_ttl_seconds=3600, signs_in_seconds=3600)
        new = {row.alg: row.kid for row in rows}
    reload_keys(client)
    assert new.keys() == {"RS256", "ES256", "Ed25519"}
    published = kids_by_alg(client)
    for name, family in FAMILY.items():  # published at once, one more key per name
        assert len(published[name]) == 2 and any(kid.startswith(new[family]) for kid in published[name])
    assert header_of(sign_in(client)[1]["id_token"])["kid"] == old_kid  # published, not signing yet

    clock.advance(3600)  # the hour has passed
    reload_keys(client)
    token = sign_in(client)[1]["id_token"]
    assert header_of(token)["kid"].startswith(new[FAMILY[alg]]) and header_of(token)["kid"] != old_kid
    verify(client, token, alg)
    assert old_kid in {key["kid"] for key in jwks(client)}  # until its tokens expire


def test_rotating_one_algorithm_leaves_the_others_keys_alone(client):
    services = client.app.state.services
    before = kids_by_alg(client)
    with services.sessions.begin() as db:
        new_kid = rotate_signing_key(db, services.keyring, id_token_ttl_seconds=3600, alg="ES256").kid
    reload_keys(client)
    after = kids_by_alg(client)
    assert after["ES256"] == before["ES256"] | {new_kid}
    assert {alg: after[alg] for alg in ("RS256", "Ed25519", "EdDSA")} == {
        alg: before[alg] for alg in ("RS256", "Ed25519", "EdDSA")
    }
    use_alg(client, "RS256")
    assert {header_of(sign_in(client)[1]["id_token"])["kid"]} == before["RS256"]
    use_alg(client, "ES256")
    assert header_of(sign_in(client)[1]["id_token"])["kid"] == new_kid  # signs_in 0: at once


def test_eddsa_rotates_the_ed25519_key(client):
    services = client.app.state.services
    with services.sessions.begin() as db:
        [row] = rotate_signing_keys(db, services.keyring, id_token_ttl_seconds=3600, algs=["EdDSA", "Ed25519"])
    assert row.alg == "Ed25519"


@pytest.mark.parametrize("alg", ALGS)
def test_an_id_token_of_any_alg_is_a_valid_logout_hint(client, alg):
    use_alg(client, alg)
    claims = verify(client, token := sign_in(client)[1]["id_token"], alg)
    hint = check_hint(client.app.state.services.oidc, token)
    assert (hint.client_id, hint.sub, hint.sid) == ("shop", claims["sub"], claims["sid"])


@pytest.mark.parametrize("alg", ALGS)
def test_a_logout_token_is_signed_with_the_alg_it_is_given(client, clock, alg):
    ctx = client.app.state.services.oidc
    token = logout_token(ctx.issuer, ctx.keys, client_id="shop", sub="s", sid="x", now=clock.now(), alg=alg)
    header = header_of(token)
    assert header["alg"] == alg and header["typ"] == "logout+jwt"
    [jwk] = [k for k in jwks(client) if k["kid"] == header["kid"]]
    assert jwk["alg"] == alg
    assert jwt.decode(token, KeySet.import_key_set({"keys": [jwk]}), algorithms=[alg]).claims["sid"] == "x"


def test_a_database_with_only_an_rsa_key_gains_the_other_keys_at_start_and_keeps_its_rsa_key(settings, clock):
    """An existing deployment (one RS256 key, as before per-client algorithms) after the upgrade:
    the first start adds an ES256 and an Ed25519 key; the RSA key keeps signing under its kid."""
    first = create_app(settings, store=MemoryStore(), clock=clock)
    seed(first.state.services)
    with first.state.services.sessions.begin() as db:
        db.execute(delete(SigningKey).where(SigningKey.alg != "RS256"))
    rsa_kid = first.state.services.oidc.keys.get().signing_key.kid

    upgraded = create_app(settings, store=MemoryStore(), clock=clock)  # the next start: ensure_signing_key
    with TestClient(upgraded, base_url=ISSUER) as client:
        assert kids_by_alg(client)["RS256"] == {rsa_kid}
        assert kids_by_alg(client).keys() == {"RS256", "ES256", "Ed25519", "EdDSA"}
        assert header_of(sign_in(client)[1]["id_token"])["kid"] == rsa_kid
        use_alg(client, "ES256")
        verify(client, sign_in(client)[1]["id_token"], "ES256")


@pytest.mark.parametrize("alg", ["ES256", "Ed25519"])
def test_backchannel_logout_tokens_follow_the_clients_alg(client, alg):
    """Back-Channel Logout 1.0 §2.6: the RP validates the logout token's alg as its ID tokens'."""
    with receiver(200) as rp:
        configure(client, "shop", backchannel_logout_uri=rp.url, id_token_signed_response_alg=alg)
        tokens = sign_in(client)[1]
        client.get("/logout", params={"id_token_hint": tokens["id_token"]}, follow_redirects=False)
        assert wait_until(lambda: len(rp.posts) >= 1)
        drain_deliveries(client)
        [post] = rp.posts
        token = parse_qs(post["body"])["logout_token"][0]
        assert header_of(token)["alg"] == alg and header_of(token)["typ"] == "logout+jwt"
        claims = jwt.decode(token, KeySet.import_key_set(client.get("/jwks").json()), algorithms=[alg]).claims
        assert claims["sid"] == verify(client, tokens["id_token"], alg)["sid"]
