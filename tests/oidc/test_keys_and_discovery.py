"""Discovery (OIDC Discovery §3, RFC 9207 §3), JWKS and signing-key rotation. The rotation
tests follow the RS256 key that signs the default client's ID tokens; the other algorithms'
keys rotate the same way (tests/oidc/test_id_token_algs.py)."""

from __future__ import annotations

from datetime import timedelta

from joserfc import jws
from sqlalchemy import select, update

import idp.app
from idp.db.models import SigningKey
from idp.oidc.signing_keys import (
    JWKS_MAX_AGE_SECONDS,
    PUBLISH_LEAD_SECONDS,
    rotate_signing_key,
)
from tests.support.rp import decode_id_token, tokens_for


def test_discovery_describes_the_provider(client):
    meta = client.get("/.well-known/openid-configuration").json()
    assert meta["issuer"] == "http://localhost:8000"
    assert meta["token_endpoint"] == "http://localhost:8000/token"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["response_types_supported"] == ["code"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert set(meta["acr_values_supported"]) == {"pwd", "mfa", "phr"}
    assert "private_key_jwt" in meta["token_endpoint_auth_methods_supported"]
    # RFC 9864's name for Ed25519 signatures, and RFC 8037's older one for the same signature
    assert meta["id_token_signing_alg_values_supported"] == ["RS256", "ES256", "Ed25519", "EdDSA"]


PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}  # RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2


def test_jwks_publishes_public_keys_only(client):
    keys = client.get("/jwks").json()["keys"]
    assert sorted(key["alg"] for key in keys) == sorted(["RS256", "ES256", "Ed25519", "EdDSA"])
    assert all(not PRIVATE_MEMBERS & key.keys() and key["use"] == "sig" and key["kid"] for key in keys)


def rs256_kids(client) -> set[str]:
    return {k["kid"] for k in client.get("/jwks").json()["keys"] if k["alg"] == "RS256"}


def _kid_of(token: str) -> str:
    return jws.extract_compact(token.encode()).headers()["kid"]


def test_rotation_signs_with_the_new_key_and_keeps_the_old_one_published(client):
    services = client.app.state.services
    old_tokens = tokens_for(client)
    old_kid = _kid_of(old_tokens["id_token"])
    with services.sessions.begin() as db:
        new_kid = rotate_signing_key(db, services.keyring, id_token_ttl_seconds=3600).kid
    services.oidc.keys.reload()  # every process reloads within its refresh interval; force it here
    assert rs256_kids(client) == {old_kid, new_kid}
    new_tokens = tokens_for(client)
    assert _kid_of(new_tokens["id_token"]) == new_kid
    assert decode_id_token(client, old_tokens["id_token"])["aud"] == "shop"  # still verifiable


def test_retired_key_leaves_jwks_once_its_tokens_have_expired(client, clock):
    services = client.app.state.services
    old_kid = _kid_of(tokens_for(client)["id_token"])
    with services.sessions.begin() as db:
        rotate_signing_key(db, services.keyring, id_token_ttl_seconds=3600)
        db.execute(
            update(SigningKey).where(SigningKey.kid == old_kid).values(unpublish_at=clock.now() - timedelta(seconds=1))
        )
    services.oidc.keys.reload()
    assert old_kid not in rs256_kids(client)


def test_private_keys_are_encrypted_at_rest(client):
    with client.app.state.services.sessions() as db:
        for row in db.scalars(select(SigningKey)):
            assert b"PRIVATE KEY" not in row.private_key_encrypted


def test_a_rotated_key_is_published_at_once_but_signs_only_from_its_time(client, clock):
    """Publish first, sign later: no process may sign under a kid that another process's JWKS
    (or a relying party's cached copy) does not have yet."""
    services = client.app.state.services
    old_kid = _kid_of(tokens_for(client)["id_token"])
    with services.sessions.begin() as db:
        new_kid = rotate_signing_key(db, services.keyring, id_token_ttl_seconds=3600, signs_in_seconds=3600).kid
    services.oidc.keys.reload()
    assert rs256_kids(client) == {old_kid, new_kid}
    assert _kid_of(tokens_for(client)["id_token"]) == old_kid  # published, not signing yet

    clock.advance(3600)  # the hour has passed
    services.oidc.keys.reload()
    assert _kid_of(tokens_for(client)["id_token"]) == new_kid
    assert rs256_kids(client) == {old_kid, new_kid}


def test_the_switch_happens_on_a_reload_even_when_no_row_changed(client, clock):
    """The key cache rebuilds when the signing key changes with time alone."""
    services = client.app.state.services
    with services.sessions.begin() as db:
        new_kid = rotate_signing_key(db, services.keyring, id_token_ttl_seconds=3600, signs_in_seconds=1).kid
    services.oidc.keys.reload()
    assert _kid_of(tokens_for(client)["id_token"]) != new_kid
    clock.advance(1)
    services.oidc.keys.reload()
    assert _kid_of(tokens_for(client)["id_token"]) == new_kid


def test_the_publishing_lead_covers_every_process_and_every_cached_jwks(client):
    assert PUBLISH_LEAD_SECONDS >= 2 * idp.app.REFRESH_SECONDS + JWKS_MAX_AGE_SECONDS
    assert client.get("/jwks").headers["cache-control"] == f"public, max-age={JWKS_MAX_AGE_SECONDS}"


def test_a_rotation_with_nothing_signing_signs_at_once(client, clock):
    services = client.app.state.services
    with services.sessions.begin() as db:
        db.execute(update(SigningKey).values(retired_at=clock.now() - timedelta(seconds=1)))
        row = rotate_signing_key(db, services.keyring, id_token_ttl_seconds=3600, signs_in_seconds=3600)
        assert row.signs_from is None
        new_kid = row.kid
    services.oidc.keys.reload()
    assert _kid_of(tokens_for(client)["id_token"]) == new_kid
