"""The passkey enrolment step (issue 18): a chain that may enrol (an invitation's or a
recovery's, LoginTransaction.enrolling) of a user whose group requires phr and who has no
passkey registers one in the chain (/login/enrol_passkey, its options and verify as
idp/static/passkeys.js drives them), then signs in with it at the passkey step: the session
is phr. Any other chain is unmet as before. A registration that does not verify, comes out of
turn, from another browser, or for a locked account stores nothing.

The chain's transaction is made the way idp/links/redeem.py makes it (the password proven,
bound to this browser's login binding), driven over HTTP with a software authenticator."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.db.models import AuditEvent, IdpSession, Passkey, User
from idp.groups import add_group, add_members
from idp.login.transaction import LoginTransaction, new_transaction, save_transaction
from idp.mail import notices
from idp.mail.notices import Notice
from idp.security.keyring import new_secret
from tests.conftest import ISSUER
from tests.login.test_passkey_login import csrf_token, passkey_ceremony
from tests.support.authenticator import SoftAuthenticator
from tests.support.rows import detached

NOT_ADDED = "The passkey could not be added. Try again."
EXPIRED = "This sign-in has expired. Reload the page and try again."


# ---- the browser, the chain and the database --------------------------------------------------


def services_of(client: TestClient) -> Any:
    return client.app.state.services  # type: ignore[attr-defined]


def bind_browser(client: TestClient) -> str:
    """The browser's login binding (idp/web/login_binding.py), given one if it has none: the
    digest a transaction of this browser keeps."""
    secret = client.cookies.get("idp_login") or new_secret(32)
    client.cookies.set("idp_login", secret)
    return str(services_of(client).keyring.digest("login-browser:" + secret))


def user_id(client: TestClient, username: str = "alice") -> int:
    with services_of(client).sessions() as db:
        return int(db.scalar(select(User.id).where(User.username == username)))


def enrolling_chain(client: TestClient, *, enrolling: bool = True, named: bool = True) -> LoginTransaction:
    """The transaction an invitation hands over to: the password just chosen, ending at
    /account, bound to this browser."""
    tx = new_transaction(
        {}, "", "", None, enrolling=enrolling, link_id=None, return_to="/account", browser=bind_browser(client)
    )
    if named:
        tx = tx.with_step("pwd", user_id=user_id(client), username="alice")
    services = services_of(client)
    save_transaction(services.store, tx, ttl_seconds=services.settings.login_ttl_seconds)
    return tx


def options(client: TestClient, tx: str) -> Any:
    return client.post("/login/enrol_passkey/options", json={"csrf_token": csrf_token(client), "tx": tx})


def verify(client: TestClient, tx: str, challenge_id: str, credential: object, name: str = "Laptop") -> Any:
    return client.post(
        "/login/enrol_passkey/verify",
        json={
            "csrf_token": csrf_token(client),
            "tx": tx,
            "challenge_id": challenge_id,
            "credential": credential,
            "name": name,
        },
    )


def enrol(client: TestClient, tx: str, authenticator: SoftAuthenticator) -> Any:
    """Options, the authenticator's registration, verify: the verify response."""
    offered = options(client, tx)
    assert offered.status_code == 200, offered.text
    body = offered.json()
    return verify(client, tx, body["challenge_id"], authenticator.create(body["publicKey"]))


def passkeys(client: TestClient) -> list[Passkey]:
    return detached(services_of(client).sessions, select(Passkey).order_by(Passkey.id))


def audits(client: TestClient, kind: str) -> list[AuditEvent]:
    return detached(
        services_of(client).sessions, select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id)
    )


def session_acr(client: TestClient) -> str | None:
    cookie = client.cookies.get("idp_session")
    if cookie is None:
        return None
    services = services_of(client)
    with services.sessions() as db:
        return db.scalar(select(IdpSession.acr).where(IdpSession.cookie_digest == services.keyring.digest(cookie)))


class RecordedMail:
    """The flow's mailer (FlowServices.mail), keeping what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[Notice, int]] = []

    def notify(self, notice: Notice, user_id: int, *, ip: str | None) -> None:
        self.sent.append((notice, user_id))


@pytest.fixture
def mail(app: Starlette) -> RecordedMail:
    recorded = RecordedMail()
    flow = app.state.login_flow
    flow.services = dataclasses.replace(flow.services, mail=recorded)
    return recorded


@pytest.fixture
def staff(app: Starlette) -> None:
    """alice is in a group that requires phr (`idp group set staff --min-acr phr`); she has no passkey."""
    with app.state.services.sessions.begin() as db:
        add_group(db, "staff", min_acr="phr")
        add_members(db, "staff", ["alice"])


@pytest.fixture
def other_browser(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, base_url=ISSUER) as other:
        yield other


# ---- the enrolment, then the sign-in with the new passkey ------------------------------------------


def test_an_invited_phr_user_without_a_passkey_enrols_one_then_signs_in_with_it_at_phr(client, staff, mail):
    authenticator = SoftAuthenticator()
    tx = enrolling_chain(client)

    onward = client.get(f"/login?tx={tx.id}", follow_redirects=False)
    assert onward.status_code == 303 and onward.headers["location"] == f"/login/enrol_passkey?tx={tx.id}"
    page = client.get(onward.headers["location"])
    assert page.status_code == 200 and 'data-passkey="enrol"' in page.text
    assert "Your group requires signing in with a passkey" in page.text
    assert "<script>" not in page.text and '<script src="/static/passkeys.js" defer></script>' in page.text

    enrolled = enrol(client, tx.id, authenticator)

    assert enrolled.status_code == 200, enrolled.text
    assert enrolled.json() == {"redirect": f"/login/passkey?tx={tx.id}"}, "enrolment proves nothing: sign in with it"
    assert session_acr(client) is None
    (row,) = passkeys(client)
    assert row.user_id == user_id(client) and row.credential_id == authenticator.credential().id
    (added,) = audits(client, "passkey.added")
    assert added.user_id == user_id(client) and added.outcome == "success"
    assert {k: added.detail[k] for k in ("passkey", "name", "during")} == {
        "passkey": row.id,
        "name": "Laptop",
        "during": "login",
    }
    assert len(audits(client, "login.enrol_passkey.succeeded")) == 1
    assert mail.sent == [(notices.PASSKEY_ADDED, user_id(client))]

    signed_in = passkey_ceremony(client, authenticator, csrf_token(client), tx.id)

    assert signed_in.status_code == 200 and signed_in.json() == {"redirect": "/account"}, signed_in.text
    assert session_acr(client) == "phr"
    assert client.get("/account").status_code == 200
    (login,) = audits(client, "login.succeeded")
    assert login.detail["acr"] == "phr"


def test_the_same_chain_not_enrolling_is_unmet_as_before(client, staff):
    tx = enrolling_chain(client, enrolling=False)

    ending = client.get(f"/login?tx={tx.id}", follow_redirects=False)
    offered = options(client, tx.id)

    assert ending.status_code == 403 and "cannot sign in at the level asked for" in ending.text
    assert offered.status_code == 400 and "publicKey" not in offered.json()
    assert passkeys(client) == []


# ---- refused, and nothing stored ----------------------------------------------------------------


def _garbled(credential: dict[str, Any]) -> dict[str, Any]:
    return {**credential, "response": {**credential["response"], "attestationObject": "AAAA"}}


FORGERIES = {
    "a garbled attestation": lambda a, o: _garbled(a.create(o)),
    "another origin": lambda a, o: a.create(o, origin="https://evil.example"),
    "another rp id": lambda a, o: a.create(o, rp_id="evil.example"),
    "no user verification": lambda a, o: a.create(o, user_verified=False),
    "another challenge": lambda a, o: a.create(o, challenge="A" * 43),
    "a cross-origin frame": lambda a, o: a.create(o, cross_origin=True),
    "not a credential": lambda a, o: {"id": "x"},
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_a_registration_that_does_not_verify_is_refused_and_stores_nothing(client, staff, mail, forgery):
    tx = enrolling_chain(client)
    body = options(client, tx.id).json()

    refused = verify(client, tx.id, body["challenge_id"], FORGERIES[forgery](SoftAuthenticator(), body["publicKey"]))

    assert refused.status_code == 400 and refused.json() == {"error": NOT_ADDED}
    assert passkeys(client) == [] and audits(client, "passkey.added") == [] and mail.sent == []
    assert audits(client, "login.enrol_passkey.failed")[-1].detail["reason"]
    assert len(audits(client, "passkey.registration_failed")) == 1
    # the chain is still there, on the same step: a real registration goes through
    assert enrol(client, tx.id, SoftAuthenticator()).status_code == 200


def test_a_registration_challenge_is_single_use(client, staff):
    tx = enrolling_chain(client)
    body = options(client, tx.id).json()
    authenticator = SoftAuthenticator()
    assert verify(client, tx.id, body["challenge_id"], authenticator.create(body["publicKey"], user_verified=False))

    replayed = verify(client, tx.id, body["challenge_id"], authenticator.create(body["publicKey"]))

    assert replayed.status_code == 400 and passkeys(client) == []
    assert audits(client, "login.enrol_passkey.failed")[-1].detail["reason"] == "unknown, used or expired challenge"


def test_a_locked_accounts_registration_stores_nothing(client, staff, mail):
    """The passkey is written by the step's claim, after the flow's lock check: a verified
    registration on a locked account is refused and leaves no passkey behind."""
    tx = enrolling_chain(client)
    body = options(client, tx.id).json()
    with services_of(client).sessions.begin() as db:
        db.execute(
            update(User)
            .where(User.id == user_id(client))
            .values(locked_until=services_of(client).clock.now() + timedelta(hours=1))
        )

    refused = verify(client, tx.id, body["challenge_id"], SoftAuthenticator().create(body["publicKey"]))

    assert refused.status_code == 401, refused.text
    assert passkeys(client) == [] and audits(client, "passkey.added") == [] and mail.sent == []


def test_a_challenge_from_the_account_page_does_not_answer_in_the_chain(client, staff):
    """A registration challenge is bound to where it was issued: /account's (no transaction)
    is refused by the chain's enrolment, as another chain's would be."""
    tx = enrolling_chain(client)
    services = services_of(client)
    with services.sessions.begin() as db:
        challenge = services.passkeys.registration_options(db, db.get(User, user_id(client)))
    credential = SoftAuthenticator().create(json.loads(challenge.options_json))

    refused = verify(client, tx.id, challenge.id, credential)

    assert refused.status_code == 400 and passkeys(client) == []
    assert audits(client, "login.enrol_passkey.failed")[-1].detail["reason"] == "challenge issued for another ceremony"


def test_another_chains_challenge_does_not_answer_in_this_one(client, staff):
    first, second = enrolling_chain(client), enrolling_chain(client)
    body = options(client, first.id).json()

    refused = verify(client, second.id, body["challenge_id"], SoftAuthenticator().create(body["publicKey"]))

    assert refused.status_code == 400 and passkeys(client) == []


# ---- out of turn, and another browser ------------------------------------------------------------


def give_passkey(client: TestClient) -> None:
    services = services_of(client)
    with services.sessions.begin() as db:
        user = db.get(User, user_id(client))
        challenge = services.passkeys.registration_options(db, user)
        credential = SoftAuthenticator().create(json.loads(challenge.options_json))
        services.passkeys.register(db, user, challenge.id, credential, "Phone")


def test_the_enrolment_out_of_turn_is_refused(client, staff):
    """Once the user has a passkey the policy names the passkey step: the enrolment's options
    and a registration posted to it are refused, and nothing more is stored."""
    tx = enrolling_chain(client)
    early = options(client, tx.id).json()  # asked for on its turn
    give_passkey(client)  # then a passkey arrived from elsewhere

    late_options = options(client, tx.id)
    late_verify = verify(client, tx.id, early["challenge_id"], SoftAuthenticator().create(early["publicKey"]))

    assert late_options.status_code == 400 and "publicKey" not in late_options.json()
    assert late_verify.status_code == 400 and late_verify.json() == {"error": EXPIRED}
    assert len(passkeys(client)) == 1


def test_the_enrolment_before_the_chain_named_its_user_is_refused(client, staff):
    tx = enrolling_chain(client, named=False)

    assert options(client, tx.id).status_code == 400
    assert client.get(f"/login/enrol_passkey?tx={tx.id}").status_code == 400


def test_the_enrolment_of_a_user_whose_level_needs_no_passkey_is_refused(client):
    """alice is in no phr group: her chain is done with the password, there is no enrolment."""
    tx = enrolling_chain(client)

    assert options(client, tx.id).status_code == 400
    assert passkeys(client) == []


def test_another_browser_cannot_enrol_a_passkey_on_the_chain(client, other_browser, staff, mail):
    tx = enrolling_chain(client)
    bind_browser(other_browser)
    body = options(client, tx.id).json()  # the rightful browser's challenge, leaked with the tx id

    their_options = options(other_browser, tx.id)
    their_verify = verify(other_browser, tx.id, body["challenge_id"], SoftAuthenticator().create(body["publicKey"]))

    assert their_options.status_code == 400 and "publicKey" not in their_options.json()
    assert their_verify.status_code == 400 and their_verify.json() == {"error": EXPIRED}
    assert passkeys(client) == [] and mail.sent == []
    assert session_acr(other_browser) is None
