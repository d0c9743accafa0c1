"""Passkeys through the HTTP endpoints (idp/web/passkey_routes.py), as idp/static/passkeys.js
drives them, with a software authenticator: registration on /account, usernameless and
username-first sign-in, step-up to phr, failures and the lockout, the audit of a counter
regression, rename and removal, and bad input (always a 4xx JSON answer, never a 500)."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from idp.db.models import AuditEvent, Passkey, User
from idp.mfa.passkeys import NAME_MAX
from idp.users import add_user
from tests.conftest import ISSUER
from tests.support.authenticator import SoftAuthenticator
from tests.support.rp import (
    AuthRequest,
    decode_id_token,
    form_value,
    query_of,
    redeem,
    start,
    submit_login,
)
from tests.support.seed import PASSWORD

SIGN_IN_FAILED = "That passkey could not sign you in."
JSON_ENDPOINTS = ("/login/passkey/options", "/login/passkey/verify", "/account/passkeys/options", "/account/passkeys")


# ---- helpers: the browser -------------------------------------------------------------------


def csrf_token(client: TestClient, page: str = "/login") -> str:
    """Any rendered page carries the token for the browser's idp_csrf cookie."""
    response = client.get(page)
    assert response.status_code == 200, response.text
    return form_value(response.text, "csrf_token")


def password_sign_in_to_account(client: TestClient, username: str = "alice") -> None:
    token = csrf_token(client)
    response = client.post(
        "/login", data={"csrf_token": token, "username": username, "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/account", response.text


def register_on_account(
    client: TestClient, authenticator: SoftAuthenticator, name: str = "My laptop"
) -> dict[str, Any]:
    token = csrf_token(client)
    options = client.post("/account/passkeys/options", json={"csrf_token": token})
    assert options.status_code == 200, options.text
    assert options.headers["cache-control"].startswith("no-store")
    body = options.json()
    credential = authenticator.create(body["publicKey"])
    done = client.post(
        "/account/passkeys",
        json={"csrf_token": token, "challenge_id": body["challenge_id"], "credential": credential, "name": name},
    )
    assert done.status_code == 200, done.text
    assert done.json() == {"redirect": "/account"}
    return credential


def sign_in_options(client: TestClient, token: str, tx: str | None = None, **extra: Any):  # type: ignore[no-untyped-def]
    body: dict[str, Any] = {"csrf_token": token, **extra}
    if tx is not None:
        body["tx"] = tx
    return client.post("/login/passkey/options", json=body)


def passkey_ceremony(
    client: TestClient,
    authenticator: SoftAuthenticator,
    token: str,
    tx: str | None = None,
    *,
    username: str | None = None,
    **get: Any,
):  # type: ignore[no-untyped-def]
    """options, the authenticator's assertion, verify: the verify response."""
    extra = {"username": username} if username is not None else {}
    options = sign_in_options(client, token, tx, **extra)
    assert options.status_code == 200, options.text
    body = options.json()
    assertion = authenticator.get(body["publicKey"], **get)
    return client.post(
        "/login/passkey/verify",
        json={"csrf_token": token, "tx": body["tx"], "challenge_id": body["challenge_id"], "credential": assertion},
    )


def follow_to_client(client: TestClient, location: str) -> str:
    """From a redirect inside idp (resume, consent: Allow) to the redirect back to the RP."""
    for _ in range(8):
        if not location.startswith("/"):
            return location
        if location.startswith("/consent"):
            page = client.get(location)
            response = client.post(
                "/consent",
                data={
                    "csrf_token": form_value(page.text, "csrf_token"),
                    "tx": form_value(page.text, "tx"),
                    "decision": "allow",
                },
                follow_redirects=False,
            )
        else:
            response = client.get(location, follow_redirects=False)
        assert response.status_code in (302, 303), (location, response.status_code, response.text[:500])
        location = response.headers["location"]
    raise AssertionError("too many redirects")


def id_token_claims(client: TestClient, request: AuthRequest, location: str) -> dict[str, Any]:
    params = query_of(location)
    assert "code" in params, params
    assert params["state"] == request.state
    tokens = redeem(client, request, params["code"])
    assert tokens.status_code == 200, tokens.text
    return decode_id_token(client, tokens.json()["id_token"])


# ---- helpers: the database ------------------------------------------------------------------


def _user(client: TestClient, username: str) -> User:
    with client.app.state.services.sessions() as db:
        user = db.scalar(select(User).where(User.username == username))
        assert user is not None
        db.expunge(user)
        return user


def failed_logins(client: TestClient, username: str = "alice") -> int:
    return int(_user(client, username).failed_logins or 0)


def passkeys_of(client: TestClient, username: str = "alice") -> list[Passkey]:
    uid = _user(client, username).id
    with client.app.state.services.sessions() as db:
        rows = list(db.scalars(select(Passkey).where(Passkey.user_id == uid).order_by(Passkey.id)))
        for row in rows:
            db.expunge(row)
        return rows


def audits(client: TestClient, kind: str) -> list[AuditEvent]:
    with client.app.state.services.sessions() as db:
        rows = list(db.scalars(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)))
        for row in rows:
            db.expunge(row)
        return rows


def with_passkey(client: TestClient, authenticator: SoftAuthenticator, username: str = "alice") -> Passkey:
    """The user signs in with the password, adds a passkey on /account, then the browser forgets
    everything (a fresh client)."""
    password_sign_in_to_account(client, username)
    register_on_account(client, authenticator)
    client.cookies.clear()
    (row,) = passkeys_of(client, username)
    return row


# ---- registration ---------------------------------------------------------------------------


def test_alice_registers_a_passkey_on_her_account_page(client):
    authenticator = SoftAuthenticator()
    password_sign_in_to_account(client)
    credential = register_on_account(client, authenticator, name="Alice's laptop")
    (row,) = passkeys_of(client)
    assert row.credential_id == authenticator.credential().id and row.name == "Alice's laptop"
    assert credential["id"] == authenticator.credential().b64id
    assert [e.user_id for e in audits(client, "passkey.added")] == [_user(client, "alice").id]
    page = client.get("/account")
    assert page.status_code == 200
    assert "Alice&#39;s laptop" in page.text or "Alice's laptop" in page.text, "the list on /account shows the passkey"


def test_registration_needs_a_session(client):
    token = csrf_token(client)
    assert client.post("/account/passkeys/options", json={"csrf_token": token}).status_code == 401
    response = client.post("/account/passkeys", json={"csrf_token": token, "challenge_id": "x" * 32, "credential": {}})
    assert response.status_code == 401 and "error" in response.json()


def test_a_failed_registration_is_a_400_and_is_audited(client):
    authenticator = SoftAuthenticator()
    password_sign_in_to_account(client)
    token = csrf_token(client)
    body = client.post("/account/passkeys/options", json={"csrf_token": token}).json()
    credential = authenticator.create(body["publicKey"], origin="https://evil.example")
    response = client.post(
        "/account/passkeys",
        json={"csrf_token": token, "challenge_id": body["challenge_id"], "credential": credential, "name": "x"},
    )
    assert response.status_code == 400 and "error" in response.json()
    assert passkeys_of(client) == []
    assert len(audits(client, "passkey.registration_failed")) == 1


# ---- usernameless sign-in -------------------------------------------------------------------


@pytest.mark.parametrize("synced", [False, True], ids=["device-bound", "synced"])
def test_usernameless_sign_in_from_a_fresh_browser_is_phr(client, synced: bool):
    authenticator = SoftAuthenticator(backup_eligible=synced, backed_up=synced, counting=not synced)
    with_passkey(client, authenticator)

    request = AuthRequest()
    login = start(client, request).headers["location"]
    assert login.startswith("/login?tx=")
    tx = query_of(login)["tx"]
    token = csrf_token(client, login)
    options = sign_in_options(client, token, tx)
    assert options.status_code == 200, options.text
    body = options.json()
    assert body["tx"] == tx
    public_key = body["publicKey"]
    assert not public_key.get("allowCredentials"), "usernameless: the browser offers any discoverable passkey"
    assert public_key["userVerification"] == "required" and public_key["rpId"] == "localhost"

    verify = client.post(
        "/login/passkey/verify",
        json={
            "csrf_token": token,
            "tx": tx,
            "challenge_id": body["challenge_id"],
            "credential": authenticator.get(public_key),
        },
    )
    assert verify.status_code == 200, verify.text
    assert "idp_session=" in verify.headers.get("set-cookie", "")  # the session starts with the JSON answer
    claims = id_token_claims(client, request, follow_to_client(client, verify.json()["redirect"]))
    assert claims["acr"] == "phr"
    assert ("swk" if synced else "hwk") in claims["amr"]
    assert ("hwk" if synced else "swk") not in claims["amr"]
    assert "user" in claims["amr"] and "mfa" in claims["amr"] and "pwd" not in claims["amr"]
    assert claims["sub"] == _user(client, "alice").subject
    assert len(audits(client, "login.passkey.succeeded")) == 1


def test_a_passkey_sign_in_to_idp_itself_lands_on_the_account_page(client):
    authenticator = SoftAuthenticator()
    with_passkey(client, authenticator)
    token = csrf_token(client)
    verify = passkey_ceremony(client, authenticator, token)  # no tx: the endpoint starts one
    assert verify.status_code == 200, verify.text
    assert verify.json() == {"redirect": "/account"}
    assert client.get("/account", follow_redirects=False).status_code == 200


# ---- username-first ------------------------------------------------------------------------


def add_passkeys(client: TestClient, username: str, id_lengths: tuple[int, ...]) -> None:
    """Registers one passkey per length straight through the service (each on its own
    authenticator), the way several devices would have over time."""
    services = client.app.state.services
    for length in id_lengths:
        with services.sessions.begin() as db:
            user = db.scalar(select(User).where(User.username == username))
            challenge = services.passkeys.registration_options(db, user)
        credential = SoftAuthenticator(credential_id_length=length).create(json.loads(challenge.options_json))
        with services.sessions.begin() as db:
            user = db.scalar(select(User).where(User.username == username))
            services.passkeys.register(db, user, challenge.id, credential, f"Key {length}")


def test_username_first_options_reveal_neither_accounts_nor_their_passkeys(client):
    """Enumeration by typing names: the options for a name with no account, and for accounts
    with 0, 1 and 3 passkeys (credential ids of 16, 32 and 64 bytes), are the same bytes but
    for the random challenge and challenge id, and hand nobody a credential id."""
    with client.app.state.services.sessions.begin() as db:
        add_user(db, username="carol", email=None, name="Carol", password_hash=None)  # no passkey
    add_passkeys(client, "alice", (16, 32, 64))
    add_passkeys(client, "bob", (64,))
    token = csrf_token(client)
    tx = query_of(start(client, AuthRequest()).headers["location"])["tx"]

    def answer(username: str) -> bytes:
        response = sign_in_options(client, token, tx, username=username)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["publicKey"]["allowCredentials"] == []
        random = (body["challenge_id"], body["publicKey"]["challenge"])
        return response.content.replace(random[0].encode(), b"<id>").replace(random[1].encode(), b"<challenge>")

    answers = {name: answer(name) for name in ("nobody", "carol", "bob", "alice")}
    assert len(set(answers.values())) == 1, answers


def test_username_first_sign_in_takes_the_named_users_passkey_only(client):
    """The options list nothing, the typed name binds the challenge: alice's passkey answers
    for "alice" (typed any way) and is refused for "bob"."""
    authenticator = SoftAuthenticator()
    with_passkey(client, authenticator)
    token = csrf_token(client)
    refused = passkey_ceremony(client, authenticator, token, username="bob")
    assert refused.status_code == 401 and refused.json()["error"].startswith(SIGN_IN_FAILED)
    verify = passkey_ceremony(client, authenticator, token, username=" Alice ")
    assert verify.status_code == 200, verify.text


def test_a_username_first_assertion_without_a_user_handle_is_refused(client):
    """Usernameless options (a typed name proves nothing) need the userHandle to name the
    user (WebAuthn §7.2 step 6): an assertion without one is refused."""
    authenticator = SoftAuthenticator()
    with_passkey(client, authenticator)
    token = csrf_token(client)
    for username in (None, "alice"):
        verify = passkey_ceremony(client, authenticator, token, username=username, user_handle=None)
        assert verify.status_code == 401 and verify.json()["error"].startswith(SIGN_IN_FAILED)
    assert passkey_ceremony(client, authenticator, token, username="alice").status_code == 200


def test_username_first_options_take_the_same_time_for_a_name_with_and_without_passkeys(client):
    with_passkey(client, SoftAuthenticator())
    token = csrf_token(client)
    tx = query_of(start(client, AuthRequest()).headers["location"])["tx"]

    def timed(username: str) -> float:
        began = time.perf_counter()
        response = sign_in_options(client, token, tx, username=username)
        elapsed = time.perf_counter() - began
        assert response.status_code == 200
        return elapsed

    for _ in range(5):  # warm up both paths
        timed("alice"), timed("nobody")
    samples: dict[str, list[float]] = {"alice": [], "nobody": []}
    for i in range(60):  # alternating, so a burst of load elsewhere hits both sides alike
        order = ("alice", "nobody") if i % 2 == 0 else ("nobody", "alice")
        for username in order:
            samples[username].append(timed(username))
    alice, nobody = statistics.median(samples["alice"]), statistics.median(samples["nobody"])
    assert abs(nobody - alice) <= 0.15 * alice, f"median {nobody * 1e3:.2f} ms for nobody vs {alice * 1e3:.2f} ms"


# ---- step-up ---------------------------------------------------------------------------------


def test_step_up_from_a_password_session_to_phr_asks_for_the_passkey_only(client):
    authenticator = SoftAuthenticator()
    first = AuthRequest(scope="openid")
    signed_in = submit_login(client, start(client, first).headers["location"])
    claims = id_token_claims(client, first, follow_to_client(client, signed_in.headers["location"]))
    assert claims["acr"] == "pwd"
    register_on_account(client, authenticator)  # in the same session

    stepped = AuthRequest(scope="openid", extra={"acr_values": "phr"})
    response = start(client, stepped)
    seen = []
    while response.status_code in (302, 303) and response.headers["location"].startswith("/login"):
        location = response.headers["location"]
        seen.append(location)
        assert not location.startswith("/login?"), "a step-up must not ask for the password"
        response = client.get(location, follow_redirects=False)
    assert seen and seen[-1].startswith("/login/passkey?tx="), seen
    assert response.status_code == 200, response.text[:500]  # the passkey step's page
    tx = query_of(seen[-1])["tx"]
    token = csrf_token(client)

    options = sign_in_options(client, token, tx)
    assert [d["id"] for d in options.json()["publicKey"]["allowCredentials"]] == [authenticator.credential().b64id]
    body = options.json()
    verify = client.post(
        "/login/passkey/verify",
        json={
            "csrf_token": token,
            "tx": tx,
            "challenge_id": body["challenge_id"],
            "credential": authenticator.get(body["publicKey"]),
        },
    )
    assert verify.status_code == 200, verify.text
    upgraded = id_token_claims(client, stepped, follow_to_client(client, verify.json()["redirect"]))
    assert upgraded["acr"] == "phr"
    assert {"hwk", "user", "mfa"} <= set(upgraded["amr"])
    assert upgraded["sid"] == claims["sid"]  # the same IdP session, upgraded


def test_the_step_up_passkey_must_be_the_session_users(client):
    """A step-up for alice's session cannot be finished with bob's passkey."""
    bobs = SoftAuthenticator()
    with_passkey(client, bobs, "bob")
    alices = SoftAuthenticator()
    password_sign_in_to_account(client)
    register_on_account(client, alices)
    stepped = AuthRequest(scope="openid", extra={"acr_values": "phr"})
    location = start(client, stepped).headers["location"]  # straight to the step the chain needs
    assert location.startswith("/login/passkey?tx=")
    tx = query_of(location)["tx"]
    token = csrf_token(client)
    body = sign_in_options(client, token, tx).json()
    assertion = bobs.get({**body["publicKey"], "allowCredentials": []})
    verify = client.post(
        "/login/passkey/verify",
        json={"csrf_token": token, "tx": tx, "challenge_id": body["challenge_id"], "credential": assertion},
    )
    assert verify.status_code == 401 and verify.json() == {"error": SIGN_IN_FAILED}


def test_phr_for_a_password_only_user_is_unmet_authentication_requirements(client):
    request = AuthRequest(extra={"acr_values": "phr"})
    response = submit_login(client, start(client, request).headers["location"], username="bob")
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("https://shop.example/callback?")
    params = query_of(location)
    assert params["error"] == "unmet_authentication_requirements" and params["state"] == request.state
    assert "code" not in params


# ---- failures and the lockout ------------------------------------------------------------------


def test_a_credential_that_is_not_registered_is_refused_and_counts_against_nobody(client):
    authenticator = SoftAuthenticator()
    with_passkey(client, authenticator)
    alice = _user(client, "alice")
    stranger = SoftAuthenticator()
    stranger.new_credential(user_handle=alice.webauthn_handle)  # a second authenticator, never registered
    token = csrf_token(client)
    for username in (None, "alice"):
        verify = passkey_ceremony(client, stranger, token, username=username, credential=stranger.credential())
        # the words a real credential gets, with a phantom counter's arithmetic (tests/login/
        # test_flow_attacks.py: warnings must not tell real credential ids from fake ones)
        assert verify.status_code == 401 and verify.json()["error"].startswith(SIGN_IN_FAILED)
        assert verify.headers["content-type"].startswith("application/json")
    assert failed_logins(client) == 0
    failures = audits(client, "login.passkey.failed")
    assert len(failures) == 2 and all(e.user_id is None for e in failures)
    assert "idp_session" not in client.cookies


def test_failed_assertions_of_a_known_credential_count_toward_the_lockout(client):
    """Passkey failures count; a user-verified assertion on the locked account still signs
    its owner in and clears the lock (DESIGN.md §4: the lock cannot lock out a passkey)."""
    authenticator = SoftAuthenticator()
    with_passkey(client, authenticator)
    token = csrf_token(client)
    limit = client.app.state.services.settings.lockout_attempts
    for attempt in range(1, limit + 1):
        verify = passkey_ceremony(client, authenticator, token, user_verified=False)
        assert verify.status_code == 401 and "error" in verify.json()
        assert failed_logins(client) == attempt
    assert len(audits(client, "account.locked")) == 1
    unlocked = passkey_ceremony(client, authenticator, token)
    assert unlocked.status_code == 200 and "redirect" in unlocked.json(), unlocked.text
    assert "idp_session" in client.cookies
    assert failed_logins(client) == 0 and _user(client, "alice").locked_until is None
    assert audits(client, "login.succeeded")[-1].detail.get("cleared_lock") is True


def test_anonymous_wrong_passwords_cannot_lock_the_owner_out_of_signing_in_with_a_passkey(client):
    """The review's attack: five wrong passwords from anyone lock the account; its owner
    still signs in with a passkey, and the password step stays locked until then."""
    authenticator = SoftAuthenticator()
    with_passkey(client, authenticator)
    client.cookies.clear()
    limit = client.app.state.services.settings.lockout_attempts
    for _ in range(limit):
        assert submit_login(client, "/login", username="alice", password="not the password").status_code == 401
    assert _user(client, "alice").locked_until is not None
    assert submit_login(client, "/login", username="alice").status_code == 401  # the right password: refused
    token = csrf_token(client)
    signed = passkey_ceremony(client, authenticator, token)
    assert signed.status_code == 200 and "redirect" in signed.json(), signed.text
    assert _user(client, "alice").locked_until is None and failed_logins(client) == 0


def test_a_locked_account_refuses_the_password_even_mid_chain_but_not_the_passkey_step(client):
    """The lock covers the password, TOTP and backup-code steps, not a passkey step: with
    alice's account locked during her chain, the code is refused, the passkey is not."""
    authenticator = SoftAuthenticator()
    with_passkey(client, authenticator)
    client.cookies.clear()
    services = client.app.state.services
    alice = _user(client, "alice").id  # SQLite here has one connection: no session inside another
    stepped = submit_login(client, start(client, AuthRequest(extra={"acr_values": "phr"})).headers["location"])
    assert stepped.status_code == 303 and stepped.headers["location"].startswith("/login/passkey?tx="), stepped.text
    with services.sessions.begin() as db:  # locked between the password and the passkey
        for _ in range(services.settings.lockout_attempts):
            services.lockout.record_failure(db, alice)
    tx = query_of(stepped.headers["location"])["tx"]
    token = csrf_token(client)
    body = sign_in_options(client, token, tx).json()
    verify = client.post(
        "/login/passkey/verify",
        json={
            "csrf_token": token,
            "tx": tx,
            "challenge_id": body["challenge_id"],
            "credential": authenticator.get(body["publicKey"]),
        },
    )
    assert verify.status_code == 200 and verify.json()["redirect"].startswith("/authorize/resume?tx="), verify.text


def test_a_counter_regression_is_refused_audited_and_counted(client):
    authenticator = SoftAuthenticator()
    row = with_passkey(client, authenticator)
    token = csrf_token(client)
    assert passkey_ceremony(client, authenticator, token, sign_count=5).status_code == 200
    client.cookies.clear()
    token = csrf_token(client)
    verify = passkey_ceremony(client, authenticator, token, sign_count=3)
    assert verify.status_code == 401 and verify.json() == {"error": SIGN_IN_FAILED}
    (event,) = audits(client, "passkey.counter_regression")
    assert event.user_id == _user(client, "alice").id and event.outcome == "refused"
    assert failed_logins(client) == 1
    (after,) = passkeys_of(client)
    assert after.id == row.id and after.sign_count == 5
    assert "idp_session" not in client.cookies


def test_a_forged_assertion_with_a_low_counter_is_not_reported_as_a_counter_regression(client):
    """The counter-regression audit says "this authenticator may be cloned": only an assertion
    signed by the credential's key is evidence of that. Anyone who knows the credential id
    (it is listed to its proven owner, and may leak) can send an unsigned one with a low counter."""
    authenticator = SoftAuthenticator()
    with_passkey(client, authenticator)
    token = csrf_token(client)
    assert passkey_ceremony(client, authenticator, token, sign_count=5).status_code == 200
    client.cookies.clear()
    token = csrf_token(client)
    junk_signature = bytes.fromhex("3006020101020101")  # DER ECDSA (r=1, s=1): not a signature by the key
    verify = passkey_ceremony(client, authenticator, token, sign_count=3, signature=junk_signature)
    assert verify.status_code == 401
    assert len(audits(client, "login.passkey.failed")) == 1
    assert audits(client, "passkey.counter_regression") == []


def test_a_success_resets_the_failure_count(client):
    authenticator = SoftAuthenticator()
    with_passkey(client, authenticator)
    token = csrf_token(client)
    assert passkey_ceremony(client, authenticator, token, user_verified=False).status_code == 401
    assert failed_logins(client) == 1
    assert passkey_ceremony(client, authenticator, token).status_code == 200
    assert failed_logins(client) == 0


# ---- rename and remove ---------------------------------------------------------------------


def _post_form(client: TestClient, path: str, **fields: str):  # type: ignore[no-untyped-def]
    return client.post(path, data={"csrf_token": csrf_token(client), **fields}, follow_redirects=False)


def test_removal_after_a_recent_sign_in(client):
    password_sign_in_to_account(client)
    register_on_account(client, SoftAuthenticator())
    (row,) = passkeys_of(client)
    response = _post_form(client, f"/account/passkeys/{row.id}/remove")
    assert response.status_code == 303 and response.headers["location"] == "/account"
    assert passkeys_of(client) == []
    assert len(audits(client, "passkey.removed")) == 1


def test_removal_after_an_old_sign_in_asks_to_sign_in_again(client, clock):
    password_sign_in_to_account(client)
    register_on_account(client, SoftAuthenticator())
    (row,) = passkeys_of(client)
    clock.advance(11 * 60)  # the sign-in is older than IDP_REAUTH_SECONDS (10 minutes)
    response = _post_form(client, f"/account/passkeys/{row.id}/remove")
    assert response.status_code == 303 and response.headers["location"] == "/login?reauth=1"
    assert [p.id for p in passkeys_of(client)] == [row.id]
    assert audits(client, "passkey.removed") == []


def test_rename_works_and_is_length_limited(client):
    password_sign_in_to_account(client)
    register_on_account(client, SoftAuthenticator(), name="Laptop")
    (row,) = passkeys_of(client)
    response = _post_form(client, f"/account/passkeys/{row.id}/rename", name="  Work   phone ")
    assert response.status_code == 303 and response.headers["location"] == "/account"
    assert passkeys_of(client)[0].name == "Work phone"
    assert "Work phone" in client.get("/account").text
    _post_form(client, f"/account/passkeys/{row.id}/rename", name="n" * 500)
    assert passkeys_of(client)[0].name == "n" * NAME_MAX
    _post_form(client, f"/account/passkeys/{row.id}/rename", name="   ")
    assert passkeys_of(client)[0].name  # never empty


def test_nobody_renames_or_removes_another_users_passkey(client):
    with_passkey(client, SoftAuthenticator(), "bob")
    (bobs,) = passkeys_of(client, "bob")
    password_sign_in_to_account(client)
    assert _post_form(client, f"/account/passkeys/{bobs.id}/rename", name="mine").status_code == 404
    assert _post_form(client, f"/account/passkeys/{bobs.id}/remove").status_code == 404
    assert [(p.id, p.name) for p in passkeys_of(client, "bob")] == [(bobs.id, bobs.name)]


def test_rename_and_remove_need_a_session_and_the_csrf_token(client):
    password_sign_in_to_account(client)
    register_on_account(client, SoftAuthenticator())
    (row,) = passkeys_of(client)
    for action in ("remove", "rename"):
        no_csrf = client.post(f"/account/passkeys/{row.id}/{action}", data={"name": "x"}, follow_redirects=False)
        assert no_csrf.status_code == 403
    assert [p.name for p in passkeys_of(client)] == [row.name]
    session = client.cookies.get("idp_session")
    client.cookies.delete("idp_session")
    assert session is not None
    signed_out = _post_form(client, f"/account/passkeys/{row.id}/remove")
    assert signed_out.status_code == 303 and signed_out.headers["location"].startswith("/login")
    assert len(passkeys_of(client)) == 1


# ---- bad input ------------------------------------------------------------------------------


@pytest.fixture
def tolerant(app):  # type: ignore[no-untyped-def]
    """A browser whose server errors come back as responses (a 500 is a failure, not an exception)."""
    with TestClient(app, base_url=ISSUER, raise_server_exceptions=False) as browser:
        yield browser


def _assert_json_error(response, status: int | tuple[int, ...]) -> None:  # type: ignore[no-untyped-def]
    allowed = status if isinstance(status, tuple) else (status,)
    assert response.status_code in allowed, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json().get("error"), str)


@pytest.mark.parametrize("path", JSON_ENDPOINTS)
def test_bad_bodies_are_4xx_json_never_500(tolerant, path: str):
    password_sign_in_to_account(tolerant)
    token = csrf_token(tolerant)
    json_type = {"content-type": "application/json"}
    cases: list[tuple[str, dict[str, str], bytes, int | tuple[int, ...]]] = [
        ("malformed JSON", json_type, b'{"csrf_token": "' + token.encode() + b'", ', 400),
        ("not UTF-8", json_type, b'{"csrf_token": "\xff\xfe"}', 400),
        ("a JSON array", json_type, b'["csrf_token"]', 400),
        ("a JSON string", json_type, b'"hello"', 400),
        (
            "wrong content type",
            {"content-type": "application/x-www-form-urlencoded"},
            f"csrf_token={token}".encode(),
            400,
        ),
        ("text/plain", {"content-type": "text/plain"}, b'{"csrf_token": "' + token.encode() + b'"}', 400),
        ("no content type", {}, b'{"csrf_token": "' + token.encode() + b'"}', 400),
        ("missing csrf", json_type, b'{"tx": "x"}', 403),
        ("wrong csrf", json_type, b'{"csrf_token": "' + b"0" * 64 + b'"}', 403),
        ("csrf of the wrong type", json_type, b'{"csrf_token": 12}', 403),
        ("a huge body", json_type, b'{"csrf_token": "' + token.encode() + b'", "pad": "' + b"a" * 200_000 + b'"}', 400),
    ]
    for name, headers, body, status in cases:
        response = tolerant.post(path, content=body, headers=headers)
        assert response.status_code != 500, name
        _assert_json_error(response, status)


@pytest.mark.parametrize("path", JSON_ENDPOINTS)
def test_deeply_nested_json_within_the_size_limit_is_a_400_not_a_500(tolerant, path: str):
    """Under 64 KiB, but deeper than the JSON parser's recursion limit (json.loads raises
    RecursionError, which is not a ValueError)."""
    password_sign_in_to_account(tolerant)
    token = csrf_token(tolerant)
    body = b'{"csrf_token": "' + token.encode() + b'", "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert len(body) < 64 * 1024
    response = tolerant.post(path, content=body, headers={"content-type": "application/json"})
    _assert_json_error(response, 400)


@pytest.mark.parametrize(
    "credential",
    [
        None,
        42,
        "x",
        [],
        {},
        {"rawId": 5},
        {"rawId": "!!!", "id": "!!!"},
        {"id": "AAAA", "rawId": "AAAA", "type": "public-key", "response": "x"},
        {"id": "AAAA", "rawId": "AAAA", "type": "public-key", "response": {"clientDataJSON": 1, "userHandle": 7}},
    ],
)
def test_garbage_credentials_are_refused_as_json(tolerant, credential: object):
    token = csrf_token(tolerant)
    body = sign_in_options(tolerant, token).json()
    response = tolerant.post(
        "/login/passkey/verify",
        json={"csrf_token": token, "tx": body["tx"], "challenge_id": body["challenge_id"], "credential": credential},
    )
    _assert_json_error(response, (400, 401))

    password_sign_in_to_account(tolerant)
    token = csrf_token(tolerant)
    options = tolerant.post("/account/passkeys/options", json={"csrf_token": token}).json()
    response = tolerant.post(
        "/account/passkeys",
        json={
            "csrf_token": token,
            "challenge_id": options["challenge_id"],
            "credential": credential,
            "name": ["not", "a", "name"],
        },
    )
    _assert_json_error(response, 400)
    assert passkeys_of(tolerant) == []


@pytest.mark.parametrize(
    "field,value",
    [
        ("tx", 42),
        ("tx", "x" * 500),
        ("challenge_id", {"a": 1}),
        ("challenge_id", "nope"),
        ("username", ["alice"]),
        ("username", "a" * 5000),
    ],
)
def test_odd_fields_in_the_sign_in_calls_are_harmless(tolerant, field: str, value: object):
    token = csrf_token(tolerant)
    options = tolerant.post("/login/passkey/options", json={"csrf_token": token, field: value})
    assert options.status_code == 200, options.text  # unknown tx: a fresh one; odd names: no name
    body = options.json()
    payload = {"csrf_token": token, "tx": body["tx"], "challenge_id": body["challenge_id"], "credential": {}}
    payload[field] = value
    verify = tolerant.post("/login/passkey/verify", json=payload)
    _assert_json_error(verify, (400, 401))
