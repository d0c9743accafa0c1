"""Passkeys (idp/mfa/passkeys.py) against the service and the database, on SQLite and
PostgreSQL: a registration then a sign-in verify; every way a ceremony can be wrong is
refused with PasskeyError and leaves the stored credential as it was (sign counter, last
use); challenges are single use, expire, and are bound to their transaction and user."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url

from idp.db.models import Passkey, User
from idp.mfa.passkeys import (
    CHALLENGE_TTL_SECONDS,
    NAME_MAX,
    PasskeyError,
    Passkeys,
    RelyingParty,
    clean_name,
)
from idp.state.memory import MemoryStore
from tests.conftest import ISSUER
from tests.support.authenticator import Excluded, SoftAuthenticator


@pytest.fixture
def passkeys(app) -> Passkeys:  # type: ignore[no-untyped-def]
    return app.state.services.passkeys


@pytest.fixture
def sessions(app):  # type: ignore[no-untyped-def]
    return app.state.services.sessions


def user_id(sessions, username: str) -> int:  # type: ignore[no-untyped-def]
    with sessions() as db:
        return int(db.scalar(select(User.id).where(User.username == username)))


def handle_of(sessions, username: str) -> bytes | None:  # type: ignore[no-untyped-def]
    with sessions() as db:
        return db.scalar(select(User.webauthn_handle).where(User.username == username))


def registration_options(passkeys: Passkeys, sessions, username: str = "alice") -> tuple[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    with sessions.begin() as db:
        user = db.scalar(select(User).where(User.username == username))
        challenge = passkeys.registration_options(db, user)
    return challenge.id, json.loads(challenge.options_json)


def complete_registration(
    passkeys: Passkeys,
    sessions,
    username: str,
    challenge_id: object,
    credential: object,  # type: ignore[no-untyped-def]
    name: object = "Laptop",
) -> int:
    with sessions.begin() as db:
        user = db.scalar(select(User).where(User.username == username))
        return passkeys.register(db, user, challenge_id, credential, name).id


def register(
    passkeys: Passkeys,
    sessions,
    authenticator: SoftAuthenticator,
    username: str = "alice",  # type: ignore[no-untyped-def]
    name: str = "Laptop",
) -> int:
    challenge_id, options = registration_options(passkeys, sessions, username)
    return complete_registration(passkeys, sessions, username, challenge_id, authenticator.create(options), name)


def sign_in_options(passkeys: Passkeys, sessions, tx: str, **kw: Any) -> tuple[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    with sessions.begin() as db:
        challenge = passkeys.sign_in_options(db, tx_id=tx, **kw)
    return challenge.id, json.loads(challenge.options_json)


def sign_in(passkeys: Passkeys, sessions, tx: str, challenge_id: object, credential: object):  # type: ignore[no-untyped-def]
    with sessions.begin() as db:
        return passkeys.sign_in(db, tx_id=tx, challenge_id=challenge_id, credential=credential)


@dataclass(frozen=True)
class Stored:
    sign_count: int
    last_used_at: object
    backed_up: bool


def stored(sessions, passkey_id: int) -> Stored:  # type: ignore[no-untyped-def]
    with sessions() as db:
        row = db.get(Passkey, passkey_id)
        assert row is not None
        return Stored(row.sign_count, row.last_used_at, row.backed_up)


def passkey_count(sessions) -> int:  # type: ignore[no-untyped-def]
    with sessions() as db:
        return int(db.scalar(select(func.count()).select_from(Passkey)) or 0)


def new_tx() -> str:
    return secrets.token_urlsafe(24)


# ---- the happy path -------------------------------------------------------------------------


def test_relying_party_comes_from_the_issuer():
    assert RelyingParty.from_issuer(ISSUER) == RelyingParty("localhost", "http://localhost:8000", "idp")
    rp = RelyingParty.from_issuer("https://id.example.com/")
    assert rp.rp_id == "id.example.com" and rp.origin == "https://id.example.com"


def test_registration_then_a_usernameless_sign_in(passkeys, sessions):
    authenticator = SoftAuthenticator()
    challenge_id, options = registration_options(passkeys, sessions)
    assert options["rp"]["id"] == "localhost"
    assert base64url_to_bytes(options["user"]["id"]) == handle_of(sessions, "alice")
    assert len(handle_of(sessions, "alice") or b"") >= 16  # random and opaque, never the username
    assert options["user"]["name"] == "alice"
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["authenticatorSelection"]["userVerification"] == "required"
    assert options["excludeCredentials"] == []
    assert {"type": "public-key", "alg": -7} in options["pubKeyCredParams"]

    response = authenticator.create(options)
    passkey_id = complete_registration(passkeys, sessions, "alice", challenge_id, response, "  My\tlaptop  ")
    credential = authenticator.credential()
    alice = user_id(sessions, "alice")  # SQLite here has one connection: no session inside another
    with sessions() as db:
        row = db.get(Passkey, passkey_id)
        assert row.user_id == alice
        assert row.credential_id == credential.id
        assert row.public_key == credential.cose_public_key()
        assert row.sign_count == 0 and row.transports == ["internal"] and row.name == "My laptop"
        assert row.backed_up is False and row.last_used_at is None

    tx = new_tx()
    challenge_id, options = sign_in_options(passkeys, sessions, tx)
    assert not options.get("allowCredentials")  # usernameless: any discoverable passkey
    assert options["userVerification"] == "required" and options["rpId"] == "localhost"
    signed = sign_in(passkeys, sessions, tx, challenge_id, authenticator.get(options))
    assert signed.user_id == user_id(sessions, "alice") and signed.passkey_id == passkey_id
    assert signed.methods == ("hwk", "user")
    after = stored(sessions, passkey_id)
    assert after.sign_count == 1 and after.last_used_at is not None


def test_a_synced_passkey_signs_in_as_swk(passkeys, sessions):
    authenticator = SoftAuthenticator(backup_eligible=True, backed_up=True, counting=False)
    passkey_id = register(passkeys, sessions, authenticator)
    assert stored(sessions, passkey_id).backed_up is True
    tx = new_tx()
    challenge_id, options = sign_in_options(passkeys, sessions, tx)
    signed = sign_in(passkeys, sessions, tx, challenge_id, authenticator.get(options))
    assert signed.methods == ("swk", "user")


def test_options_for_a_proven_user_list_their_credentials_and_may_get_no_user_handle(passkeys, sessions):
    """Once an earlier step proved the user (a password, a step-up session), the options name
    that user's passkeys, and the assertion may leave the userHandle out (WebAuthn §7.2: the
    RP knows the user already; security keys often omit it)."""
    authenticator = SoftAuthenticator()
    register(passkeys, sessions, authenticator)
    tx = new_tx()
    challenge_id, options = sign_in_options(passkeys, sessions, tx, user_id=user_id(sessions, "alice"))
    assert [d["id"] for d in options["allowCredentials"]] == [authenticator.credential().b64id]
    assert options["allowCredentials"][0]["type"] == "public-key"
    signed = sign_in(passkeys, sessions, tx, challenge_id, authenticator.get(options, user_handle=None))
    assert signed.user_id == user_id(sessions, "alice")


def test_username_first_options_list_nothing_and_the_named_users_passkey_answers_them(passkeys, sessions):
    """A typed name proves nothing, so its options are usernameless (the same for every name,
    tests/login/test_passkey_login.py); it binds the challenge to that name's passkeys."""
    authenticator = SoftAuthenticator()
    register(passkeys, sessions, authenticator)
    tx = new_tx()
    challenge_id, options = sign_in_options(passkeys, sessions, tx, username="alice")
    assert options["allowCredentials"] == []
    signed = sign_in(passkeys, sessions, tx, challenge_id, authenticator.get(options))
    assert signed.user_id == user_id(sessions, "alice")


def test_an_unknown_name_can_be_signed_in_by_no_passkey(passkeys, sessions):
    """Its challenge is bound to no user: even alice's own (valid) passkey is refused for it."""
    authenticator = SoftAuthenticator()
    passkey_id = register(passkeys, sessions, authenticator)
    tx = new_tx()
    challenge_id, options = sign_in_options(passkeys, sessions, tx, username="nobody")
    assertion = authenticator.get({**options, "allowCredentials": []})
    before = stored(sessions, passkey_id)
    with pytest.raises(PasskeyError):
        sign_in(passkeys, sessions, tx, challenge_id, assertion)
    assert stored(sessions, passkey_id) == before


# ---- sign-in failures: refused, and nothing changes ------------------------------------------


@dataclass
class World:
    passkeys: Passkeys
    sessions: Any
    authenticator: SoftAuthenticator
    passkey_id: int


@pytest.fixture
def world(passkeys, sessions) -> World:  # type: ignore[no-untyped-def]
    authenticator = SoftAuthenticator()
    passkey_id = register(passkeys, sessions, authenticator)
    # one good sign-in first: a credential that has been used (counter 1, last use set)
    tx = new_tx()
    challenge_id, options = sign_in_options(passkeys, sessions, tx)
    sign_in(passkeys, sessions, tx, challenge_id, authenticator.get(options))
    return World(passkeys, sessions, authenticator, passkey_id)


def _bob_handle(world: World) -> bytes:
    register(world.passkeys, world.sessions, SoftAuthenticator(), "bob")
    handle = handle_of(world.sessions, "bob")
    assert handle is not None
    return handle


def _case_wrong_origin(world: World, options: dict[str, Any]) -> dict[str, Any]:
    return world.authenticator.get(options, origin="https://evil.example")


def _case_origin_with_another_port(world: World, options: dict[str, Any]) -> dict[str, Any]:
    return world.authenticator.get(options, origin="http://localhost:8001")


def _case_wrong_rp_id_hash(world: World, options: dict[str, Any]) -> dict[str, Any]:
    return world.authenticator.get(options, rp_id="evil.example")


def _case_no_user_verification(world: World, options: dict[str, Any]) -> dict[str, Any]:
    return world.authenticator.get(options, user_verified=False)


def _case_user_handle_of_another_user(world: World, options: dict[str, Any]) -> dict[str, Any]:
    return world.authenticator.get(options, user_handle=_bob_handle(world))


def _case_bad_signature(world: World, options: dict[str, Any]) -> dict[str, Any]:
    forged = world.authenticator.get(options)
    other = world.authenticator.get(options)  # a valid signature, but over other data (another counter)
    forged["response"]["signature"] = other["response"]["signature"]
    return forged


def _case_wrong_challenge(world: World, options: dict[str, Any]) -> dict[str, Any]:
    return world.authenticator.get(options, challenge=bytes_to_base64url(secrets.token_bytes(32)))


def _case_registration_type(world: World, options: dict[str, Any]) -> dict[str, Any]:
    assertion = world.authenticator.get(options)
    client_data = json.loads(base64url_to_bytes(assertion["response"]["clientDataJSON"]))
    client_data["type"] = "webauthn.create"
    assertion["response"]["clientDataJSON"] = bytes_to_base64url(json.dumps(client_data).encode())
    return assertion


def _case_cross_origin(world: World, options: dict[str, Any]) -> dict[str, Any]:
    return world.authenticator.get(options, cross_origin=True)


def _case_top_origin(world: World, options: dict[str, Any]) -> dict[str, Any]:
    """A correctly signed assertion whose client data names the page that framed the call."""
    assertion = world.authenticator.get(options)
    client_data = json.loads(base64url_to_bytes(assertion["response"]["clientDataJSON"]))
    client_data["topOrigin"] = "https://evil.example"
    encoded = json.dumps(client_data).encode()
    signed = base64url_to_bytes(assertion["response"]["authenticatorData"]) + hashlib.sha256(encoded).digest()
    key = world.authenticator.credential().private_key
    assertion["response"]["clientDataJSON"] = bytes_to_base64url(encoded)
    assertion["response"]["signature"] = bytes_to_base64url(key.sign(signed, ec.ECDSA(hashes.SHA256())))
    return assertion


def _case_no_user_handle(world: World, options: dict[str, Any]) -> dict[str, Any]:
    return world.authenticator.get(options, user_handle=None)


def _case_malformed(world: World, options: dict[str, Any]) -> object:
    assertion = world.authenticator.get(options)
    assertion["response"]["authenticatorData"] = "!!not base64!!"
    return assertion


SIGN_IN_FAILURES = {
    "wrong origin": _case_wrong_origin,
    "origin with another port": _case_origin_with_another_port,
    "wrong RP ID hash": _case_wrong_rp_id_hash,
    "user verification missing": _case_no_user_verification,
    "userHandle of another user": _case_user_handle_of_another_user,
    "bad signature": _case_bad_signature,
    "challenge not the one issued": _case_wrong_challenge,
    "clientData type webauthn.create": _case_registration_type,
    "crossOrigin true: made in another site's frame": _case_cross_origin,
    "topOrigin: made in another site's frame": _case_top_origin,
    "usernameless without userHandle: nothing names the user": _case_no_user_handle,
    "malformed authenticatorData": _case_malformed,
}


@pytest.mark.parametrize("case", list(SIGN_IN_FAILURES))
def test_a_bad_assertion_is_refused_changes_nothing_and_uses_up_the_challenge(world: World, case: str):
    tx = new_tx()
    challenge_id, options = sign_in_options(world.passkeys, world.sessions, tx)
    bad = SIGN_IN_FAILURES[case](world, options)
    before = stored(world.sessions, world.passkey_id)
    with pytest.raises(PasskeyError) as refused:
        sign_in(world.passkeys, world.sessions, tx, challenge_id, bad)
    assert refused.value.reason
    assert stored(world.sessions, world.passkey_id) == before
    # single use whatever happened: the challenge cannot be retried with a good assertion
    with pytest.raises(PasskeyError):
        sign_in(world.passkeys, world.sessions, tx, challenge_id, world.authenticator.get(options))
    assert stored(world.sessions, world.passkey_id) == before


def test_a_replayed_challenge_is_refused(world: World):
    tx = new_tx()
    challenge_id, options = sign_in_options(world.passkeys, world.sessions, tx)
    assert sign_in(world.passkeys, world.sessions, tx, challenge_id, world.authenticator.get(options))
    after_first = stored(world.sessions, world.passkey_id)
    # a new, correctly signed assertion (a higher counter) for the same challenge id
    with pytest.raises(PasskeyError):
        sign_in(world.passkeys, world.sessions, tx, challenge_id, world.authenticator.get(options))
    assert stored(world.sessions, world.passkey_id) == after_first


def test_a_replayed_assertion_is_refused(world: World):
    tx = new_tx()
    challenge_id, options = sign_in_options(world.passkeys, world.sessions, tx)
    assertion = world.authenticator.get(options)
    sign_in(world.passkeys, world.sessions, tx, challenge_id, assertion)
    after_first = stored(world.sessions, world.passkey_id)
    fresh_id, _ = sign_in_options(world.passkeys, world.sessions, tx)  # a fresh challenge, the old answer
    with pytest.raises(PasskeyError):
        sign_in(world.passkeys, world.sessions, tx, fresh_id, assertion)
    assert stored(world.sessions, world.passkey_id) == after_first


def test_a_challenge_expires_after_five_minutes(app, sessions):
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    services = app.state.services
    passkeys = Passkeys(store, services.passkeys.rp)
    authenticator = SoftAuthenticator()
    passkey_id = register(passkeys, sessions, authenticator)
    assert CHALLENGE_TTL_SECONDS == 300

    tx, late_tx = new_tx(), new_tx()  # one live challenge per transaction: two sign-ins
    in_time_id, in_time = sign_in_options(passkeys, sessions, tx)
    late_id, late = sign_in_options(passkeys, sessions, late_tx)
    assert in_time["timeout"] == CHALLENGE_TTL_SECONDS * 1000  # what the browser is told matches the store
    now[0] += CHALLENGE_TTL_SECONDS - 1
    assert sign_in(passkeys, sessions, tx, in_time_id, authenticator.get(in_time))
    now[0] += 2  # 301 s after it was issued
    before = stored(sessions, passkey_id)
    with pytest.raises(PasskeyError):
        sign_in(passkeys, sessions, late_tx, late_id, authenticator.get(late))
    assert stored(sessions, passkey_id) == before

    # and a registration challenge likewise
    registration_id, options = registration_options(passkeys, sessions, "bob")
    now[0] += CHALLENGE_TTL_SECONDS + 1
    with pytest.raises(PasskeyError):
        complete_registration(passkeys, sessions, "bob", registration_id, SoftAuthenticator().create(options))


def test_a_deleted_challenge_is_refused(world: World, app):
    tx = new_tx()
    challenge_id, options = sign_in_options(world.passkeys, world.sessions, tx)
    app.state.services.store.delete(f"webauthn:{challenge_id}")
    before = stored(world.sessions, world.passkey_id)
    with pytest.raises(PasskeyError):
        sign_in(world.passkeys, world.sessions, tx, challenge_id, world.authenticator.get(options))
    assert stored(world.sessions, world.passkey_id) == before


def test_a_challenge_issued_for_one_transaction_is_refused_for_another(world: World):
    issued_for = new_tx()
    challenge_id, options = sign_in_options(world.passkeys, world.sessions, issued_for)
    before = stored(world.sessions, world.passkey_id)
    with pytest.raises(PasskeyError):
        sign_in(world.passkeys, world.sessions, new_tx(), challenge_id, world.authenticator.get(options))
    assert stored(world.sessions, world.passkey_id) == before


def test_a_registration_challenge_cannot_sign_in(world: World):
    challenge_id, options = registration_options(world.passkeys, world.sessions)
    tx = new_tx()
    assertion = world.authenticator.get({"challenge": options["challenge"], "rpId": "localhost"})
    before = stored(world.sessions, world.passkey_id)
    with pytest.raises(PasskeyError):
        sign_in(world.passkeys, world.sessions, tx, challenge_id, assertion)
    assert stored(world.sessions, world.passkey_id) == before


@pytest.mark.parametrize("challenge_id", [None, 42, "", "short", "x" * 65, ["a" * 20]])
def test_a_malformed_challenge_id_is_refused(world: World, challenge_id: object):
    tx = new_tx()
    _, options = sign_in_options(world.passkeys, world.sessions, tx)
    with pytest.raises(PasskeyError):
        sign_in(world.passkeys, world.sessions, tx, challenge_id, world.authenticator.get(options))


def test_a_credential_of_another_user_is_refused_for_a_named_user(world: World):
    """Username-first for bob (or a step-up of bob's session): alice's passkey does not sign bob in."""
    register(world.passkeys, world.sessions, SoftAuthenticator(), "bob")
    for kw in ({"username": "bob"}, {"user_id": user_id(world.sessions, "bob")}):
        tx = new_tx()
        challenge_id, options = sign_in_options(world.passkeys, world.sessions, tx, **kw)
        assertion = world.authenticator.get({**options, "allowCredentials": []})
        before = stored(world.sessions, world.passkey_id)
        with pytest.raises(PasskeyError):
            sign_in(world.passkeys, world.sessions, tx, challenge_id, assertion)
        assert stored(world.sessions, world.passkey_id) == before


def test_an_unknown_credential_is_refused(world: World):
    stranger = SoftAuthenticator()
    stranger.new_credential(user_handle=handle_of(world.sessions, "alice"))  # made, never registered
    tx = new_tx()
    challenge_id, options = sign_in_options(world.passkeys, world.sessions, tx)
    before = stored(world.sessions, world.passkey_id)
    with pytest.raises(PasskeyError):
        sign_in(world.passkeys, world.sessions, tx, challenge_id, stranger.get(options))
    assert stored(world.sessions, world.passkey_id) == before


def test_a_credential_id_swapped_onto_another_key_is_refused(world: World):
    """An assertion signed by an unregistered key but naming alice's credential id."""
    stranger = SoftAuthenticator()
    stranger.new_credential(user_handle=handle_of(world.sessions, "alice"))
    tx = new_tx()
    challenge_id, options = sign_in_options(world.passkeys, world.sessions, tx)
    forged = stranger.get(options)
    alice_id = world.authenticator.credential().b64id
    forged["id"] = forged["rawId"] = alice_id
    before = stored(world.sessions, world.passkey_id)
    with pytest.raises(PasskeyError):
        sign_in(world.passkeys, world.sessions, tx, challenge_id, forged)
    assert stored(world.sessions, world.passkey_id) == before


# ---- the sign counter ----------------------------------------------------------------------


def test_a_counter_going_backwards_or_standing_still_is_refused(world: World):
    tx = new_tx()
    challenge_id, options = sign_in_options(world.passkeys, world.sessions, tx)
    sign_in(world.passkeys, world.sessions, tx, challenge_id, world.authenticator.get(options, sign_count=5))
    assert stored(world.sessions, world.passkey_id).sign_count == 5
    before = stored(world.sessions, world.passkey_id)
    for count in (3, 5, 0):  # backwards, the same again, and a counting authenticator suddenly at zero
        challenge_id, options = sign_in_options(world.passkeys, world.sessions, tx)
        with pytest.raises(PasskeyError) as refused:
            sign_in(
                world.passkeys, world.sessions, tx, challenge_id, world.authenticator.get(options, sign_count=count)
            )
        assert refused.value.reason == "sign counter went backwards"  # the web layer audits on this reason
        assert stored(world.sessions, world.passkey_id) == before
    challenge_id, options = sign_in_options(world.passkeys, world.sessions, tx)
    sign_in(world.passkeys, world.sessions, tx, challenge_id, world.authenticator.get(options, sign_count=6))
    assert stored(world.sessions, world.passkey_id).sign_count == 6


def test_an_authenticator_that_does_not_count_is_accepted_again_and_again(passkeys, sessions):
    authenticator = SoftAuthenticator(counting=False)
    passkey_id = register(passkeys, sessions, authenticator)
    for _ in range(3):
        tx = new_tx()
        challenge_id, options = sign_in_options(passkeys, sessions, tx)
        assertion = authenticator.get(options)
        assert base64url_to_bytes(assertion["response"]["authenticatorData"])[33:37] == bytes(4)
        assert sign_in(passkeys, sessions, tx, challenge_id, assertion).passkey_id == passkey_id
        assert stored(sessions, passkey_id).sign_count == 0


# ---- registration ------------------------------------------------------------------------------


def test_registration_options_exclude_the_users_existing_credentials(passkeys, sessions):
    authenticator = SoftAuthenticator()
    register(passkeys, sessions, authenticator)
    _, options = registration_options(passkeys, sessions)
    assert [(d["id"], d["type"]) for d in options["excludeCredentials"]] == [
        (authenticator.credential().b64id, "public-key")
    ]
    with pytest.raises(Excluded):  # what a browser does with it: the same authenticator will not register twice
        authenticator.create(options)
    # another user's options list only their own
    _, bobs = registration_options(passkeys, sessions, "bob")
    assert bobs["excludeCredentials"] == []


def test_registering_the_same_credential_twice_is_refused(passkeys, sessions):
    authenticator = SoftAuthenticator()
    register(passkeys, sessions, authenticator)
    credential = authenticator.credential()
    for username in ("alice", "bob"):
        challenge_id, options = registration_options(passkeys, sessions, username)
        with pytest.raises(PasskeyError):
            complete_registration(
                passkeys, sessions, username, challenge_id, authenticator.create(options, reuse=credential)
            )
    assert passkey_count(sessions) == 1


def test_a_registration_challenge_is_single_use_and_bound_to_its_user(passkeys, sessions):
    challenge_id, options = registration_options(passkeys, sessions, "alice")
    with pytest.raises(PasskeyError):  # bob cannot finish a ceremony begun for alice
        complete_registration(passkeys, sessions, "bob", challenge_id, SoftAuthenticator().create(options))
    with pytest.raises(PasskeyError):  # and that attempt used the challenge up
        complete_registration(passkeys, sessions, "alice", challenge_id, SoftAuthenticator().create(options))

    challenge_id, options = registration_options(passkeys, sessions, "alice")
    complete_registration(passkeys, sessions, "alice", challenge_id, SoftAuthenticator().create(options))
    with pytest.raises(PasskeyError):
        complete_registration(passkeys, sessions, "alice", challenge_id, SoftAuthenticator().create(options))
    assert passkey_count(sessions) == 1


def test_a_sign_in_challenge_cannot_register(passkeys, sessions):
    challenge_id, options = sign_in_options(passkeys, sessions, new_tx())
    _, real = registration_options(passkeys, sessions)
    with pytest.raises(PasskeyError):
        complete_registration(
            passkeys,
            sessions,
            "alice",
            challenge_id,
            SoftAuthenticator().create({**real, "challenge": options["challenge"]}),
        )
    assert passkey_count(sessions) == 0


REGISTRATION_FAILURES = {
    "wrong origin": {"origin": "https://evil.example"},
    "wrong RP ID hash": {"rp_id": "evil.example"},
    "user verification missing": {"user_verified": False},
    "challenge not the one issued": {"challenge": bytes_to_base64url(b"\x01" * 32)},
    "crossOrigin true: made in another site's frame": {"cross_origin": True},
}


@pytest.mark.parametrize("case", list(REGISTRATION_FAILURES))
def test_a_bad_registration_is_refused_and_stores_nothing(passkeys, sessions, case: str):
    challenge_id, options = registration_options(passkeys, sessions)
    response = SoftAuthenticator().create(options, **REGISTRATION_FAILURES[case])
    with pytest.raises(PasskeyError):
        complete_registration(passkeys, sessions, "alice", challenge_id, response)
    assert passkey_count(sessions) == 0


@pytest.mark.parametrize("credential", [None, 42, "not json", ["x"], {}, {"id": "x", "rawId": "x"}])
def test_a_malformed_registration_is_a_passkey_error(passkeys, sessions, credential: object):
    challenge_id, _ = registration_options(passkeys, sessions)
    with pytest.raises(PasskeyError):
        complete_registration(passkeys, sessions, "alice", challenge_id, credential)
    assert passkey_count(sessions) == 0


# ---- small parts ---------------------------------------------------------------------------


def test_owner_of_names_the_owner_of_a_known_credential_only(world: World):
    alice = user_id(world.sessions, "alice")
    stranger = SoftAuthenticator()
    stranger.new_credential()
    with world.sessions() as db:
        assert world.passkeys.owner_of(db, {"rawId": world.authenticator.credential().b64id}) == alice
        assert world.passkeys.owner_of(db, {"rawId": stranger.credential().b64id}) is None
        for malformed in (None, 42, "not json", {"rawId": 7}, {"rawId": ""}, {"rawId": "a" * 2000}):
            assert world.passkeys.owner_of(db, malformed) is None


def test_list_and_find_are_per_user(passkeys, sessions):
    first = register(passkeys, sessions, SoftAuthenticator(), name="One")
    second = register(passkeys, sessions, SoftAuthenticator(), name="Two")
    bobs = register(passkeys, sessions, SoftAuthenticator(), "bob")
    alice = user_id(sessions, "alice")
    with sessions() as db:
        assert [p.id for p in passkeys.list(db, alice)] == [first, second]
        assert passkeys.count(db, alice) == 2
        assert passkeys.find(db, alice, first) is not None
        assert passkeys.find(db, alice, bobs) is None
        assert passkeys.find(db, alice, str(first)) is None


def test_names_are_cleaned_and_length_limited():
    assert clean_name("  Work \n laptop ") == "Work laptop"
    assert clean_name("x" * 500) == "x" * NAME_MAX
    assert clean_name("") == clean_name("   ") == clean_name(None) == clean_name(42) == "Passkey"
