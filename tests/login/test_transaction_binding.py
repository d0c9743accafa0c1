"""Attacks on the login transaction and the session cookie (issue 13), each over HTTP with
separate cookie jars for separate browsers: another user's password posted on a transaction
that already named its user or finished, a transaction driven from a browser that did not
start it, a finished chain resumed twice, a consent decision replayed, and a session cookie
copied before a step-up or re-authentication. Each would merge identities or hand one
user's factor to another on the code before this fix."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.db.models import AuditEvent, Client, IdpSession, User
from tests.conftest import ISSUER
from tests.login.test_chain import at_step, enrol_totp, error_of, id_token_of, post_code, to_client, user_id
from tests.login.test_passkey_login import csrf_token, passkey_ceremony, register_on_account
from tests.support.authenticator import SoftAuthenticator
from tests.support.rp import AuthRequest, form_value, query_of, start, submit_login
from tests.support.seed import PASSWORD

EXPIRED = "This sign-in request has expired or was already used."
WRONG = "wrong password entirely"


@pytest.fixture
def second_browser(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, base_url=ISSUER) as other:
        yield other


def login_page_url(client: TestClient, request: AuthRequest | None = None) -> str:
    response = start(client, request or AuthRequest())
    assert response.status_code == 303 and response.headers["location"].startswith("/login?tx="), response.text
    return str(response.headers["location"])


def tx_of(location: str) -> str:
    return location.split("tx=")[1].split("&")[0]


def post_password(client: TestClient, tx: str, username: str, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    """The login form posted on transaction `tx`, with this browser's own CSRF token."""
    return client.post(
        "/login",
        data={"csrf_token": csrf_token(client), "tx": tx, "username": username, "password": password},
        follow_redirects=False,
    )


def sets_session(response: Any) -> bool:
    return any("idp_session=" in v for k, v in response.headers.multi_items() if k == "set-cookie")


def subject_of(client: TestClient, username: str) -> str:
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        return str(db.scalar(select(User.subject).where(User.username == username)))


def reset_counter(client: TestClient, username: str) -> None:
    with client.app.state.services.sessions.begin() as db:  # type: ignore[attr-defined]
        db.execute(update(User).where(User.username == username).values(failed_logins=0, failures_since=None))


def require_mfa_for_shop(client: TestClient) -> None:
    services = client.app.state.services  # type: ignore[attr-defined]
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == "shop"))
        db.execute(
            update(Client).where(Client.id == row.id).values(config={**row.config, "default_acr_values": ["mfa"]})
        )
    services.oidc.clients.reload()


def refused_like_a_wrong_password_on_a_finished_transaction(client: TestClient, tx: str, victim: str) -> None:
    """The victim's right password on the finished transaction: refused, no session, and
    exactly the answer a wrong password gets (nothing says the password was right)."""
    right = post_password(client, tx, victim)
    wrong = post_password(client, tx, victim, WRONG)
    assert right.status_code == wrong.status_code == 400, right.text
    assert EXPIRED in right.text and error_of(right.text) == error_of(wrong.text)
    assert not sets_session(right) and "location" not in right.headers


# ---- another user's password on a transaction that finished ---------------------------------------


def test_attacker_who_finished_his_own_totp_chain_cannot_post_the_victims_password_on_it(client):
    enrol_totp(client, "alice")
    bob_secret = enrol_totp(client, "bob")
    request = AuthRequest()
    tx = tx_of(login_page_url(client, request))
    code_step = post_password(client, tx, "bob")
    assert code_step.headers["location"].startswith("/login/totp?tx=")
    finished = post_code(client, code_step.headers["location"], code=pyotp.TOTP(bob_secret).at(at_step(client, 1)))
    assert finished.headers["location"] == f"/authorize/resume?tx={tx}"  # not followed, on purpose

    refused_like_a_wrong_password_on_a_finished_transaction(client, tx, "alice")
    # the transaction still carries bob's chain, and only bob's: the RP learns bob, never alice
    claims = id_token_of(client, request, to_client(client, finished))
    assert claims["sub"] == subject_of(client, "bob") and claims["acr"] == "mfa"


def test_attacker_who_enrolled_a_factor_on_the_spot_cannot_hand_it_to_the_victim(client):
    require_mfa_for_shop(client)  # default_acr_values = ["mfa"]: bob, with no factor, enrols during the login
    enrol_totp(client, "alice")
    tx = tx_of(login_page_url(client))
    enrol = post_password(client, tx, "bob")
    assert enrol.headers["location"].startswith("/login/enrol_totp?tx=")
    page = client.get(enrol.headers["location"])
    secret = re.search(r'data-totp-secret="([A-Z2-7]+)"', page.text).group(1)  # type: ignore[union-attr]
    confirmed = client.post(
        "/login/enrol_totp",
        data={
            "csrf_token": form_value(page.text, "csrf_token"),
            "tx": tx,
            "code": pyotp.TOTP(secret).at(at_step(client, 2)),
        },
        follow_redirects=False,
    )
    assert confirmed.status_code == 200 and f"/authorize/resume?tx={tx}" in confirmed.text

    refused_like_a_wrong_password_on_a_finished_transaction(client, tx, "alice")


def test_attacker_who_signed_in_with_his_own_passkey_cannot_lift_the_victim_to_phr(client):
    authenticator = SoftAuthenticator()
    submit_login(client, "/login", username="bob")  # bob, signed in to idp, adds his passkey
    register_on_account(client, authenticator)
    client.cookies.clear()

    tx = tx_of(login_page_url(client, AuthRequest(extra={"acr_values": "phr"})))
    verify = passkey_ceremony(client, authenticator, csrf_token(client), tx)
    assert verify.status_code == 200 and verify.json()["redirect"] == f"/authorize/resume?tx={tx}", verify.text

    refused_like_a_wrong_password_on_a_finished_transaction(client, tx, "alice")


# ---- another user's password on a transaction that named its user ----------------------------------


def test_another_users_password_mid_chain_gets_the_wrong_password_answer_and_is_never_merged(client):
    enrol_totp(client, "alice")
    bob_secret = enrol_totp(client, "bob")
    request = AuthRequest()
    tx = tx_of(login_page_url(client, request))
    code_step = post_password(client, tx, "bob")
    assert code_step.headers["location"].startswith("/login/totp?tx=")

    right = post_password(client, tx, "alice")
    reset_counter(client, "alice")  # so the wrong password meets the same counter
    wrong = post_password(client, tx, "alice", WRONG)
    assert right.status_code == wrong.status_code == 401 and not sets_session(right)
    assert right.text == wrong.text  # the very same page: the password being right shows nowhere
    with client.app.state.services.sessions() as db:
        reasons = db.scalars(
            select(AuditEvent.detail).where(
                AuditEvent.kind == "login.password.failed", AuditEvent.user_id == user_id(client, "alice")
            )
        ).all()
    assert any((detail or {}).get("reason") == "other_identity" for detail in reasons), reasons

    # the chain is still bob's: his code finishes it, as bob
    finished = post_code(client, code_step.headers["location"], code=pyotp.TOTP(bob_secret).at(at_step(client, 1)))
    claims = id_token_of(client, request, to_client(client, finished))
    assert claims["sub"] == subject_of(client, "bob") and claims["amr"] == ["pwd", "otp", "mfa"]


def test_a_step_up_transaction_refuses_another_users_password(client):
    submit_login(client, "/login", username="bob")  # bob's session, password only
    enrol_totp(client, "bob")
    step_up = start(client, AuthRequest(extra={"acr_values": "mfa"}))
    assert step_up.headers["location"].startswith("/login/totp?tx=")
    response = post_password(client, tx_of(step_up.headers["location"]), "alice")
    assert response.status_code == 401 and not sets_session(response)
    assert "The username or password is incorrect." in error_of(response.text)


# ---- a transaction presented by another browser --------------------------------------------------


def test_a_victims_sign_in_on_a_transaction_the_attacker_created_is_refused(client, second_browser):
    """The no-account attack: the attacker makes T (prompt=consent) and lures the victim to
    it; she signs in there, he posts her password on T and inherits her code step. Now T
    does not exist for her browser, so nothing she does lands on it."""
    attacker, victim = client, second_browser
    enrol_totp(client, "alice")
    lure = login_page_url(attacker, AuthRequest(extra={"prompt": "consent"}))
    tx = tx_of(lure)
    shown = victim.get(lure)
    assert shown.status_code == 400 and EXPIRED in shown.text
    posted = post_password(victim, tx, "alice")
    assert posted.status_code == 400 and not sets_session(posted)
    # the attacker, with her password, still faces her code step: nothing was inherited
    onward = post_password(attacker, tx, "alice")
    assert onward.status_code == 303 and onward.headers["location"].startswith("/login/totp?tx=")


def test_a_transaction_posted_from_a_second_cookie_jar_is_refused_at_every_step(client, second_browser):
    """The victim signed in (password + code) on her own T and stopped at the consent page;
    the attacker, holding T's id, tries every door from his own browser."""
    victim, attacker = client, second_browser
    secret = enrol_totp(victim, "alice")
    tx = tx_of(login_page_url(victim, AuthRequest(extra={"prompt": "consent"})))
    code_step = post_password(victim, tx, "alice")
    finished = post_code(victim, code_step.headers["location"], code=pyotp.TOTP(secret).at(at_step(victim, 1)))
    consent = victim.get(finished.headers["location"], follow_redirects=False)
    assert consent.headers["location"] == f"/consent?tx={tx}"

    token = csrf_token(attacker)
    attempts = {
        "login page": attacker.get(f"/login?tx={tx}"),
        "password": post_password(attacker, tx, "alice"),
        "code page": attacker.get(f"/login/totp?tx={tx}"),
        "code": attacker.post("/login/totp", data={"csrf_token": token, "tx": tx, "code": "123456"}),
        "consent page": attacker.get(f"/consent?tx={tx}"),
        "consent": attacker.post(
            "/consent", data={"csrf_token": token, "tx": tx, "decision": "allow"}, follow_redirects=False
        ),
        "resume": attacker.get(f"/authorize/resume?tx={tx}", follow_redirects=False),
        "passkey verify": attacker.post(
            "/login/passkey/verify", json={"csrf_token": token, "tx": tx, "challenge_id": "x", "credential": {}}
        ),
    }
    for door, response in attempts.items():
        assert response.status_code == 400 and "location" not in response.headers, (door, response.text[:300])
        assert not sets_session(response), door
    options = attacker.post("/login/passkey/options", json={"csrf_token": token, "tx": tx})
    assert options.status_code == 200 and options.json()["tx"] != tx  # a fresh transaction of his own, empty

    # the victim's own browser still finishes: T was not spent by the attacker's attempts
    page = victim.get(f"/consent?tx={tx}")
    allowed = victim.post(
        "/consent",
        data={"csrf_token": form_value(page.text, "csrf_token"), "tx": tx, "decision": "allow"},
        follow_redirects=False,
    )
    assert "code" in query_of(allowed.headers["location"])


def test_a_link_to_a_login_page_opened_in_another_browser_shows_the_expired_page(client, second_browser):
    location = login_page_url(client)
    assert client.get(location).status_code == 200
    elsewhere = second_browser.get(location)
    assert elsewhere.status_code == 400 and EXPIRED in elsewhere.text


# ---- once: the end of the chain, the resume, the consent decision ---------------------------------


def test_a_finished_transaction_resumes_exactly_once(client):
    request = AuthRequest(client_id="portal", redirect_uri="https://portal.example/cb", scope="openid")  # first party
    tx = tx_of(login_page_url(client, request))
    finished = post_password(client, tx, "alice")
    assert finished.headers["location"] == f"/authorize/resume?tx={tx}"
    first = client.get(finished.headers["location"], follow_redirects=False)
    assert "code" in query_of(first.headers["location"])
    again = client.get(finished.headers["location"], follow_redirects=False)
    assert again.status_code == 400 and "location" not in again.headers


def test_a_finished_transaction_takes_no_further_step(client):
    enrol_totp(client, "alice")
    tx = tx_of(login_page_url(client))
    post_password(client, tx, "bob")  # bob has no second factor: his chain ends at once
    for response in (
        post_password(client, tx, "bob"),
        client.post("/login/totp", data={"csrf_token": csrf_token(client), "tx": tx, "code": "123456"}),
        client.get(f"/login/totp?tx={tx}"),
        client.get(f"/login/enrol_totp?tx={tx}"),
    ):
        assert response.status_code == 400 and not sets_session(response), response.text[:300]


def test_resume_before_the_chain_finished_issues_nothing(client):
    enrol_totp(client, "alice")
    tx = tx_of(login_page_url(client))
    post_password(client, tx, "alice")  # at the code step
    resumed = client.get(f"/authorize/resume?tx={tx}", follow_redirects=False)
    assert resumed.status_code == 400 and "location" not in resumed.headers


def test_a_consent_decision_is_taken_once(client):
    tx = tx_of(login_page_url(client, AuthRequest(extra={"prompt": "consent"})))
    consent = client.get(post_password(client, tx, "alice").headers["location"], follow_redirects=False)
    page = client.get(consent.headers["location"])
    form = {"csrf_token": form_value(page.text, "csrf_token"), "tx": tx, "decision": "allow"}
    first = client.post("/consent", data=form, follow_redirects=False)
    assert "code" in query_of(first.headers["location"])
    replayed = client.post("/consent", data=form, follow_redirects=False)
    assert replayed.status_code == 400 and "location" not in replayed.headers


# ---- a new session cookie value at every authentication event --------------------------------------


def session_row(client: TestClient, sid_or_user: str) -> IdpSession:
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        return db.scalar(select(IdpSession).where(IdpSession.user_id == user_id(client, sid_or_user)))  # type: ignore[return-value]


def test_after_a_step_up_the_old_cookie_value_gets_the_sign_in_page(client, second_browser):
    first = AuthRequest(scope="openid")
    before = id_token_of(client, first, to_client(client, submit_login(client, login_page_url(client, first))))
    old_cookie = client.cookies["idp_session"]
    secret = enrol_totp(client, "alice")

    stepped = AuthRequest(scope="openid", extra={"acr_values": "mfa"})
    code_step = start(client, stepped)
    assert code_step.headers["location"].startswith("/login/totp?tx=")
    done = post_code(client, code_step.headers["location"], code=pyotp.TOTP(secret).at(at_step(client, 1)))
    after = id_token_of(client, stepped, to_client(client, done))
    new_cookie = client.cookies["idp_session"]
    assert new_cookie != old_cookie
    assert after["sid"] == before["sid"] and after["acr"] == "mfa"  # the same session, so logout still names it

    second_browser.cookies.set("idp_session", old_cookie)  # a copy taken before the step-up
    replayed = start(second_browser, AuthRequest(scope="openid"))
    assert replayed.headers["location"].startswith("/login?tx="), replayed.headers["location"]
    assert second_browser.get("/account", follow_redirects=False).headers["location"].startswith("/login")


def test_re_authentication_for_the_account_page_renews_the_cookie_and_keeps_the_session(client, second_browser):
    submit_login(client, "/login", username="alice")
    old_cookie, row = client.cookies["idp_session"], session_row(client, "alice")
    again = client.post(
        "/login",
        data={"csrf_token": csrf_token(client), "username": "alice", "password": PASSWORD},
        follow_redirects=False,
    )
    assert again.headers["location"] == "/account" and sets_session(again)
    assert client.cookies["idp_session"] != old_cookie
    renewed = session_row(client, "alice")
    assert (renewed.id, renewed.sid) == (row.id, row.sid)  # one session, renewed, not a second one
    assert client.get("/account").status_code == 200

    second_browser.cookies.set("idp_session", old_cookie)
    assert second_browser.get("/account", follow_redirects=False).headers["location"].startswith("/login")


def test_a_passkey_of_another_user_cannot_finish_a_chain_that_named_its_user(client):
    """Usernameless options were fetched before bob's password named the user; an assertion
    by alice's passkey on that transaction must not finish bob's chain as alice."""
    authenticator = SoftAuthenticator()
    submit_login(client, "/login", username="alice")
    register_on_account(client, authenticator)  # alice's passkey, in this authenticator
    client.cookies.clear()
    enrol_totp(client, "bob")
    tx = tx_of(login_page_url(client))
    token = csrf_token(client)
    options = client.post("/login/passkey/options", json={"csrf_token": token, "tx": tx}).json()
    assert post_password(client, tx, "bob").headers["location"].startswith("/login/totp?tx=")
    verify = client.post(
        "/login/passkey/verify",
        json={
            "csrf_token": token,
            "tx": tx,
            "challenge_id": options["challenge_id"],
            "credential": authenticator.get(options["publicKey"]),
        },
    )
    assert verify.status_code == 401 and verify.json() == {"error": "That passkey could not sign you in."}
    assert not sets_session(verify)


def test_the_end_of_the_chain_runs_once_even_when_two_requests_reach_it(client):
    """A request that reached the end while another was finishing the same transaction (the
    other's claim is made here by hand) gets no second session."""
    from idp.login.transaction import claim_finish

    tx = tx_of(login_page_url(client))
    assert claim_finish(client.app.state.services.store, tx, ttl_seconds=60)  # the racing request's claim
    late = post_password(client, tx, "alice")
    assert late.status_code == 401 and not sets_session(late)
    assert error_of(late.text) == "The username or password is incorrect."


# ---- cookie names over https ------------------------------------------------------------------

HTTPS_ISSUER = "https://id.example"


@pytest.fixture
def https_client(settings) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from idp.app import create_app
    from idp.state.memory import MemoryStore
    from tests.support.seed import seed

    app = create_app(replace(settings, issuer=HTTPS_ISSUER), store=MemoryStore())
    seed(app.state.services)
    with TestClient(app, base_url=HTTPS_ISSUER) as https:
        yield https


def set_cookies(response: Any) -> dict[str, str]:
    return {v.split("=", 1)[0]: v for k, v in response.headers.multi_items() if k == "set-cookie"}


def test_over_https_every_cookie_is_host_prefixed_secure_and_host_only(https_client):
    started = start(https_client, AuthRequest())
    login = https_client.get(started.headers["location"])
    signed_in = post_password(https_client, tx_of(started.headers["location"]), "alice")
    issued = {**set_cookies(started), **set_cookies(login), **set_cookies(signed_in)}
    assert set(issued) == {"__Host-idp_login", "__Host-idp_csrf", "__Host-idp_session"}, issued
    for header in issued.values():
        attributes = [part.strip().lower() for part in header.split(";")[1:]]
        assert {"secure", "httponly", "path=/", "samesite=lax"} <= set(attributes), header
        assert not any(a.startswith("domain=") for a in attributes), header
    # and the unprefixed names mean nothing there: a cookie planted without the prefix is ignored
    https_client.cookies.set("idp_session", https_client.cookies["__Host-idp_session"])
    del https_client.cookies["__Host-idp_session"]
    assert https_client.get("/account", follow_redirects=False).status_code == 303


# ---- found by review: a step-up outliving its session, user switches, cross-site POSTs ----------------


def live_sessions(client: TestClient, username: str) -> list[IdpSession]:
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        return list(
            db.scalars(
                select(IdpSession).where(IdpSession.user_id == user_id(client, username), IdpSession.ended_at.is_(None))
            )
        )


def has_totp(client: TestClient, username: str) -> bool:
    """A confirmed authenticator (the enrolment page alone leaves an unconfirmed secret)."""
    from idp.db.models import TotpCredential

    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        return (
            db.scalar(
                select(TotpCredential.id).where(
                    TotpCredential.user_id == user_id(client, username), TotpCredential.confirmed_at.is_not(None)
                )
            )
            is not None
        )


def enrolment_attempt(client: TestClient, tx: str, form_page: Any) -> Any:
    secret = re.search(r'data-totp-secret="([A-Z2-7]+)"', form_page.text)
    return client.post(
        "/login/enrol_totp",
        data={
            "csrf_token": csrf_token(client),
            "tx": tx,
            "code": pyotp.TOTP(secret.group(1) if secret else "A" * 32).at(at_step(client, 1)),
        },
        follow_redirects=False,
    )


def sign_out(client: TestClient) -> Any:
    page = client.get("/logout")
    return client.post(
        "/logout?confirm=1", data={"csrf_token": form_value(page.text, "csrf_token")}, follow_redirects=False
    )


def test_a_step_up_begun_before_signing_out_cannot_enrol_a_factor_afterwards(client):
    """A shared computer: alice (password only) starts a step-up that enrols TOTP, then signs
    out; the next person goes back in the history and enrols his own authenticator."""
    submit_login(client, "/login", username="alice")
    step_up = start(client, AuthRequest(extra={"acr_values": "mfa"}))
    tx = tx_of(step_up.headers["location"])
    form_page = client.get(f"/login/enrol_totp?tx={tx}")
    assert form_page.status_code == 200
    signed_out = sign_out(client)
    assert any(
        v.startswith("idp_login=") and "Max-Age=0" in v
        for k, v in signed_out.headers.multi_items()
        if k == "set-cookie"
    ), "the binding goes with the session"

    client.cookies.set("idp_login", "kept-by-a-browser-that-ignored-the-deletion-0123456789")
    assert client.get(f"/login/enrol_totp?tx={tx}").status_code == 400
    attempt = enrolment_attempt(client, tx, form_page)
    assert attempt.status_code == 400 and not sets_session(attempt)
    assert not has_totp(client, "alice") and live_sessions(client, "alice") == []


def test_a_step_up_from_a_stolen_cookie_dies_when_the_victims_sessions_are_ended(client, second_browser):
    victim, attacker = client, second_browser
    submit_login(victim, "/login", username="alice")
    attacker.cookies.set("idp_session", victim.cookies["idp_session"])  # a copy of her cookie
    step_up = start(attacker, AuthRequest(extra={"acr_values": "mfa"}))
    tx = tx_of(step_up.headers["location"])
    form_page = attacker.get(f"/login/enrol_totp?tx={tx}")
    assert form_page.status_code == 200
    services = victim.app.state.services
    with services.sessions.begin() as db:  # she signs out everywhere (or an admin does)
        alice = user_id(victim, "alice")
        db.execute(update(IdpSession).where(IdpSession.user_id == alice).values(ended_at=services.clock.now()))
    attempt = enrolment_attempt(attacker, tx, form_page)
    assert attempt.status_code == 400 and not sets_session(attempt)
    assert not has_totp(victim, "alice") and live_sessions(victim, "alice") == []


def test_consent_given_after_another_user_signed_in_in_the_same_browser_issues_no_code_for_either(client):
    request = AuthRequest(extra={"prompt": "consent"})
    tx = tx_of(login_page_url(client, request))
    consent = client.get(post_password(client, tx, "alice").headers["location"], follow_redirects=False)
    page = client.get(consent.headers["location"])
    submit_login(client, "/login", username="bob")  # another tab of the same browser
    allowed = client.post(
        "/consent",
        data={"csrf_token": form_value(page.text, "csrf_token"), "tx": tx, "decision": "allow"},
        follow_redirects=False,
    )
    assert allowed.status_code == 303 and allowed.headers["location"].startswith("/login?tx="), allowed.headers


def test_resume_after_another_user_signed_in_in_the_same_browser_asks_to_sign_in_again(client):
    request = AuthRequest(client_id="portal", redirect_uri="https://portal.example/cb", scope="openid")
    tx = tx_of(login_page_url(client, request))
    finished = post_password(client, tx, "alice")
    submit_login(client, "/login", username="bob")
    resumed = client.get(finished.headers["location"], follow_redirects=False)
    assert resumed.status_code == 303 and resumed.headers["location"].startswith("/login?tx="), resumed.headers


def test_a_post_authorization_request_becomes_a_get_and_leaves_the_browsers_binding_alone(client):
    in_progress = login_page_url(client)
    binding = client.cookies["idp_login"]
    params = AuthRequest().params()
    # a cross-site POST carries no SameSite=Lax cookie: the browser's binding is not sent
    kept = dict(client.cookies)
    client.cookies.clear()
    posted = client.post("/authorize", data=params, follow_redirects=False)
    assert posted.status_code == 303 and "set-cookie" not in posted.headers
    for name, value in kept.items():
        client.cookies.set(name, value)
    assert query_of(posted.headers["location"]) == params and posted.headers["location"].startswith("/authorize?")
    assert client.cookies["idp_login"] == binding and client.get(in_progress).status_code == 200


def test_a_disabled_users_passkey_signs_in_nobody_and_never_500s(app):
    with TestClient(app, base_url=ISSUER, raise_server_exceptions=False) as client:
        authenticator = SoftAuthenticator()
        submit_login(client, "/login", username="alice")
        register_on_account(client, authenticator)
        client.cookies.clear()
        with app.state.services.sessions.begin() as db:
            db.execute(update(User).where(User.username == "alice").values(disabled=True))
        for tx in (None, tx_of(login_page_url(client))):
            verify = passkey_ceremony(client, authenticator, csrf_token(client), tx)
            assert verify.status_code == 401 and verify.json()["error"].startswith(
                "That passkey could not sign you in."
            )
        with app.state.services.sessions() as db:
            kinds = db.scalars(select(AuditEvent.kind).where(AuditEvent.kind == "login.passkey.succeeded")).all()
        assert kinds == []


def test_a_user_disabled_mid_chain_gets_a_page_not_a_500(app):
    from idp.mfa import backup_codes

    with TestClient(app, base_url=ISSUER, raise_server_exceptions=False) as client:
        enrol_totp(client, "alice")
        codes = backup_codes.generate()
        with app.state.services.sessions.begin() as db:
            app.state.services.factors.replace_backup_codes(
                db, user_id(client, "alice"), [(c, app.state.services.hashing.hash(c)) for c in codes]
            )
        code_step = client.post(
            "/login",
            data={"csrf_token": csrf_token(client), "username": "alice", "password": PASSWORD},
            follow_redirects=False,
        )
        with app.state.services.sessions.begin() as db:
            db.execute(update(User).where(User.username == "alice").values(disabled=True))
        used = client.post(
            "/login/backup_code",
            data={
                "csrf_token": csrf_token(client),
                "tx": tx_of(code_step.headers["location"]),
                "backup_code": codes[0],
            },
            follow_redirects=False,
        )
        assert 400 <= used.status_code < 500 and not sets_session(used), used.status_code


def test_a_passkey_re_authentication_renews_the_cookie_and_keeps_one_session(client, second_browser):
    authenticator = SoftAuthenticator()
    submit_login(client, "/login", username="alice")
    register_on_account(client, authenticator)
    old_cookie, before = client.cookies["idp_session"], live_sessions(client, "alice")
    verify = passkey_ceremony(client, authenticator, csrf_token(client))
    assert verify.status_code == 200 and verify.json()["redirect"] == "/account"
    after = live_sessions(client, "alice")
    assert [s.sid for s in after] == [s.sid for s in before] and client.cookies["idp_session"] != old_cookie
    second_browser.cookies.set("idp_session", old_cookie)
    assert second_browser.get("/account", follow_redirects=False).status_code == 303


def test_a_transaction_from_another_release_decodes_and_an_unbound_one_is_refused(client):
    import json

    from idp.login.transaction import find_transaction

    store = client.app.state.services.store
    tx = tx_of(login_page_url(client))
    raw = json.loads(store.get("login-tx:" + tx))
    store.set("login-tx:" + tx, json.dumps({**raw, "a_later_field": 1}).encode(), ttl_seconds=60)
    assert find_transaction(store, tx) is not None and client.get(f"/login?tx={tx}").status_code == 200
    store.set("login-tx:" + tx, json.dumps({k: v for k, v in raw.items() if k != "browser"}).encode(), ttl_seconds=60)
    assert client.get(f"/login?tx={tx}").status_code == 400  # before binding existed: bound to no browser


def test_a_prompt_login_re_authentication_renews_the_browsers_session_and_kills_the_old_cookie(client, second_browser):
    """Found by the journey matrix: prompt=login (and max_age) started a second session and
    left the first alive, so a copied cookie outlived the re-authentication and the logout."""
    first = AuthRequest(scope="openid")
    before = id_token_of(client, first, to_client(client, submit_login(client, login_page_url(client, first))))
    old_cookie = client.cookies["idp_session"]
    again = AuthRequest(scope="openid", extra={"prompt": "login"})
    after = id_token_of(client, again, to_client(client, submit_login(client, login_page_url(client, again))))
    assert after["sid"] == before["sid"] and after["auth_time"] >= before["auth_time"]
    assert client.cookies["idp_session"] != old_cookie and len(live_sessions(client, "alice")) == 1
    second_browser.cookies.set("idp_session", old_cookie)
    assert start(second_browser, AuthRequest(scope="openid")).headers["location"].startswith("/login?tx=")


def test_another_user_signing_in_in_the_same_browser_ends_the_previous_session(client, second_browser):
    submit_login(client, "/login", username="alice")
    alices_cookie = client.cookies["idp_session"]
    switch = AuthRequest(scope="openid", extra={"prompt": "login"})
    claims = id_token_of(
        client, switch, to_client(client, submit_login(client, login_page_url(client, switch), username="bob"))
    )
    assert claims["sub"] == subject_of(client, "bob")
    assert live_sessions(client, "alice") == [] and len(live_sessions(client, "bob")) == 1
    with client.app.state.services.sessions() as db:
        assert db.scalar(select(AuditEvent.kind).where(AuditEvent.kind == "session.replaced")) == "session.replaced"
    second_browser.cookies.set("idp_session", alices_cookie)
    assert second_browser.get("/account", follow_redirects=False).status_code == 303
