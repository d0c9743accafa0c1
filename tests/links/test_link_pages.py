"""One-time links through their pages (idp/web/links.py), attacked at each transition: who
else could present the link, from which browser, in which order, twice.

- The GET neither uses nor binds a link (a mail scanner's cookieless fetch first: the user
  still finishes); pages carry no-referrer and no-store.
- The confirming POST binds the link to that browser: another browser is refused at the
  confirmation and at the password page, and the link stays the first browser's.
- Single use, expiry, supersession and a password change end a link.
- An invitation sets a password and signs in (or, for an account with a password, asks for
  it first); a recovery ends every session, removes the factors the user chose, and signs
  in at pwd only; a reset still asks for the second factor; a verification verifies the
  address it was sent to, and only that one."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlsplit

import pyotp
import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.db.models import AuditEvent, IdpSession, OneTimeLink, TotpCredential, User
from idp.links import records
from idp.links.records import Kind
from idp.users import add_user
from tests.conftest import ISSUER
from tests.support.clock import ManualClock
from tests.support.rp import form_value
from tests.support.seed import PASSWORD

NEW_PASSWORD = "plum tractor velvet orbit"


@pytest.fixture
def browser(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, base_url=ISSUER) as client:
        yield client


@pytest.fixture
def other_browser(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, base_url=ISSUER) as client:
        yield client


def user_id(app: Starlette, username: str) -> int:
    with app.state.services.sessions() as db:
        return int(db.scalar(select(User.id).where(User.username == username)))


def issue(app: Starlette, username: str, kind: Kind, *, email: str | None = None) -> str:
    services = app.state.services
    with services.sessions.begin() as db:
        uid = db.scalar(select(User.id).where(User.username == username))
        return records.issue(db, services.keyring, uid, kind, email=email).secret


def add_invitee(app: Starlette, username: str = "carol", email: str | None = "carol@example.com") -> None:
    with app.state.services.sessions.begin() as db:
        add_user(db, username=username, email=email, name=username.title(), password_hash=None)


def confirm(client: TestClient, secret: str) -> object:
    page = client.get(f"/link?t={secret}")
    assert page.status_code == 200, page.text
    return client.post(
        "/link", data={"csrf_token": form_value(page.text, "csrf_token"), "t": secret}, follow_redirects=False
    )


def choose(client: TestClient, location: str, password: str = NEW_PASSWORD, **extra: str) -> object:
    page = client.get(location)
    assert page.status_code == 200, page.text
    data = {
        "csrf_token": form_value(page.text, "csrf_token"),
        "l": form_value(page.text, "l"),
        "new_password": password,
        "confirm_password": password,
        **extra,
    }
    return client.post("/link/password", data=data, follow_redirects=False)


def link_row(app: Starlette, secret: str) -> OneTimeLink:
    services = app.state.services
    with services.sessions() as db:
        row = db.scalar(
            select(OneTimeLink).where(OneTimeLink.secret_digest == records.secret_digest(services.keyring, secret))
        )
        assert row is not None
        db.expunge(row)
        return row


def audit_kinds(app: Starlette, uid: int | None = None) -> list[str]:
    with app.state.services.sessions() as db:
        query = select(AuditEvent.kind).order_by(AuditEvent.id)
        if uid is not None:
            query = query.where(AuditEvent.user_id == uid)
        return list(db.scalars(query))


def sign_in(client: TestClient, username: str = "alice", password: str = PASSWORD) -> object:
    csrf = form_value(client.get("/login").text, "csrf_token")
    return client.post(
        "/login", data={"csrf_token": csrf, "username": username, "password": password}, follow_redirects=False
    )


def enrol_totp(app: Starlette, username: str, clock: ManualClock) -> str:
    services = app.state.services
    uid = user_id(app, username)
    with services.sessions.begin() as db:
        secret = services.factors.begin_totp(db, uid)
    with services.sessions.begin() as db:
        assert services.factors.confirm_totp(db, uid, pyotp.TOTP(secret).at(clock.time())).ok
    return secret


# ---- the confirmation page and its POST ------------------------------------------------------


def test_the_confirmation_page_uses_nothing_and_leaks_nothing(app: Starlette, browser: TestClient) -> None:
    add_invitee(app)
    secret = issue(app, "carol", "invite")
    page = browser.get(f"/link?t={secret}")
    assert page.status_code == 200
    assert "carol" in page.text and "Set up your account" in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "no-store" in page.headers["cache-control"]
    row = link_row(app, secret)
    assert row.confirmed_at is None and row.used_at is None and row.browser is None
    # only the digest is stored
    assert secret not in repr([getattr(row, c) for c in OneTimeLink.__table__.columns.keys()])


def test_a_scanners_fetch_first_does_not_spend_the_link(app: Starlette, browser: TestClient) -> None:
    add_invitee(app)
    secret = issue(app, "carol", "invite")
    with TestClient(app, base_url=ISSUER, cookies=None) as scanner:
        for _ in range(3):
            assert scanner.get(f"/link?t={secret}").status_code == 200
        assert scanner.head(f"/link?t={secret}").status_code in (200, 405)
    answer = confirm(browser, secret)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/link/password?l=")
    done = choose(browser, answer.headers["location"])
    assert done.status_code == 303 and done.headers["location"] == "/account", done.text
    assert browser.get("/account").status_code == 200


def test_a_link_confirmed_in_one_browser_is_refused_in_another(
    app: Starlette, browser: TestClient, other_browser: TestClient
) -> None:
    add_invitee(app)
    secret = issue(app, "carol", "invite")
    answer = confirm(browser, secret)
    location = answer.headers["location"]
    # the other browser: at the confirmation, then with the link id it saw (a shoulder, a log)
    refused = confirm(other_browser, secret)
    assert refused.status_code == 403 and "another browser" in refused.text
    assert other_browser.get(location).status_code == 403
    page = browser.get(location)
    forged = other_browser.post(
        "/link/password",
        data={
            "csrf_token": form_value(other_browser.get("/login").text, "csrf_token"),
            "l": form_value(page.text, "l"),
            "new_password": "attacker chosen pass phrase",
            "confirm_password": "attacker chosen pass phrase",
        },
        follow_redirects=False,
    )
    assert forged.status_code == 403
    assert link_row(app, secret).used_at is None
    # the first browser still finishes
    assert choose(browser, location).headers["location"] == "/account"
    reasons = audit_kinds(app, user_id(app, "carol"))
    assert reasons.count("link.refused") >= 3


def test_a_link_works_once(app: Starlette, browser: TestClient, other_browser: TestClient) -> None:
    add_invitee(app)
    secret = issue(app, "carol", "invite")
    location = confirm(browser, secret).headers["location"]
    assert choose(browser, location).status_code == 303
    assert browser.get(f"/link?t={secret}").status_code == 410
    assert confirm_again(browser, secret).status_code == 410
    assert confirm_again(other_browser, secret).status_code == 410
    # the password page of the spent link: nothing more to choose
    assert browser.get(location).status_code == 410
    again = choose_raw(browser, location, "another pass phrase entirely")
    assert again.status_code == 410
    with app.state.services.sessions() as db:
        user = db.scalar(select(User).where(User.username == "carol"))
        assert app.state.services.hashing.verify(user.password_hash, NEW_PASSWORD)


def confirm_again(client: TestClient, secret: str) -> object:
    csrf = form_value(client.get("/login").text, "csrf_token")
    return client.post("/link", data={"csrf_token": csrf, "t": secret}, follow_redirects=False)


def choose_raw(client: TestClient, location: str, password: str) -> object:
    csrf = form_value(client.get("/login").text, "csrf_token")
    link_id = urlsplit(location).query.removeprefix("l=")
    data = {"csrf_token": csrf, "l": link_id, "new_password": password, "confirm_password": password}
    return client.post("/link/password", data=data, follow_redirects=False)


def test_expired_superseded_and_garbled_links_are_refused(
    app: Starlette, browser: TestClient, clock: ManualClock
) -> None:
    add_invitee(app)
    old = issue(app, "carol", "invite")
    new = issue(app, "carol", "invite")
    assert browser.get(f"/link?t={old}").status_code == 410
    assert confirm_again(browser, old).status_code == 410
    for garbled in (new[:-1], new + "x", "../../etc/passwd", "A" * 5000):
        assert browser.get("/link", params={"t": garbled}).status_code == 404
    clock.advance((records.LIFETIMES["invite"] + timedelta(seconds=1)).total_seconds())
    assert browser.get(f"/link?t={new}").status_code == 410
    assert confirm_again(browser, new).status_code == 410


def test_a_confirmed_link_must_be_finished_within_its_window(
    app: Starlette, browser: TestClient, clock: ManualClock
) -> None:
    add_invitee(app)
    secret = issue(app, "carol", "invite")
    location = confirm(browser, secret).headers["location"]
    clock.advance((records.CONFIRMED_FOR + timedelta(seconds=1)).total_seconds())
    assert browser.get(location).status_code == 410
    assert choose_raw(browser, location, NEW_PASSWORD).status_code == 410


def test_a_refused_password_spends_nothing(app: Starlette, browser: TestClient) -> None:
    add_invitee(app)
    secret = issue(app, "carol", "invite")
    location = confirm(browser, secret).headers["location"]
    for weak in ("short", "password1234"):
        answer = choose(browser, location, weak)
        assert answer.status_code == 400
    mismatch = choose(browser, location, NEW_PASSWORD, confirm_password="something else entirely")
    assert mismatch.status_code == 400 and "not the same" in mismatch.text
    assert link_row(app, secret).used_at is None
    assert choose(browser, location).headers["location"] == "/account"


def test_the_confirmation_needs_the_csrf_token(app: Starlette, browser: TestClient) -> None:
    add_invitee(app)
    secret = issue(app, "carol", "invite")
    browser.get(f"/link?t={secret}")
    refused = browser.post("/link", data={"t": secret}, follow_redirects=False)
    assert refused.status_code == 403
    assert link_row(app, secret).confirmed_at is None


# ---- what each kind does ---------------------------------------------------------------------


def test_an_invitation_mailed_to_an_address_verifies_it_and_signs_in(app: Starlette, browser: TestClient) -> None:
    add_invitee(app)
    secret = issue(app, "carol", "invite", email="carol@example.com")
    done = choose(browser, confirm(browser, secret).headers["location"])
    assert done.headers["location"] == "/account"
    uid = user_id(app, "carol")
    with app.state.services.sessions() as db:
        assert db.get(User, uid).email_verified
        session = db.scalar(select(IdpSession).where(IdpSession.user_id == uid))
        assert session is not None and session.acr == "pwd"
    kinds = audit_kinds(app, uid)
    for kind in ("link.issued", "link.confirmed", "link.used", "user.password_set", "email.verified"):
        assert kind in kinds
    link_id = link_row(app, secret).link_id
    with app.state.services.sessions() as db:
        login = db.scalars(
            select(AuditEvent).where(AuditEvent.user_id == uid, AuditEvent.kind == "login.succeeded")
        ).one()
        assert login.detail["link_id"] == link_id


def test_an_invitation_for_an_account_with_a_password_asks_for_it(app: Starlette, browser: TestClient) -> None:
    secret = issue(app, "alice", "invite")
    answer = confirm(browser, secret)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login?tx=")
    page = browser.get(answer.headers["location"])
    assert 'value="alice"' in page.text
    tx = form_value(page.text, "tx")
    csrf = form_value(page.text, "csrf_token")
    # the link alone signs nobody in; another account's password is refused on this chain
    wrong = browser.post(
        "/login",
        data={"csrf_token": csrf, "tx": tx, "username": "bob", "password": PASSWORD},
        follow_redirects=False,
    )
    assert wrong.status_code == 401, (wrong.headers, wrong.text[:500])
    right = browser.post(
        "/login",
        data={"csrf_token": csrf, "tx": tx, "username": "alice", "password": PASSWORD},
        follow_redirects=False,
    )
    assert right.status_code == 303 and right.headers["location"] == "/account", right.text


def test_a_recovery_ends_everything_removes_the_chosen_factors_and_signs_in_at_pwd(
    app: Starlette, browser: TestClient, other_browser: TestClient, clock: ManualClock
) -> None:
    enrol_totp(app, "alice", clock)
    uid = user_id(app, "alice")
    # the thief's session on the lost phone's browser
    thief = sign_in(other_browser)
    assert thief.status_code == 303
    secret = issue(app, "alice", "recover")
    location = confirm(browser, secret).headers["location"]
    page = browser.get(location)
    assert 'name="remove_totp"' in page.text and 'name="remove_backup_codes"' not in page.text
    done = choose(browser, location, remove_totp="yes")
    assert done.headers["location"] == "/account", done.text
    with app.state.services.sessions() as db:
        assert db.scalar(select(TotpCredential).where(TotpCredential.user_id == uid)) is None
        live = list(db.scalars(select(IdpSession).where(IdpSession.user_id == uid, IdpSession.ended_at.is_(None))))
        assert len(live) == 1 and live[0].acr == "pwd" and live[0].amr == ["pwd"]
        recovered = db.scalars(
            select(AuditEvent).where(AuditEvent.user_id == uid, AuditEvent.kind == "account.recovered")
        ).one()
        assert recovered.detail["removed"] == ["totp"]
    assert other_browser.get("/account", follow_redirects=False).status_code != 200
    assert sign_in(other_browser, password=PASSWORD).status_code == 401  # the old password is gone
    account = browser.get("/account")
    assert account.status_code == 200 and "Account recovered with a recovery link" in account.text


def test_a_recovery_that_keeps_the_app_still_asks_for_its_code(
    app: Starlette, browser: TestClient, clock: ManualClock
) -> None:
    enrol_totp(app, "alice", clock)
    secret = issue(app, "alice", "recover")
    done = choose(browser, confirm(browser, secret).headers["location"])
    assert done.status_code == 303 and done.headers["location"].startswith("/login/totp?tx="), done.headers


def test_a_recovered_session_reaches_mfa_only_through_a_new_factor(
    app: Starlette, browser: TestClient, clock: ManualClock
) -> None:
    """The RP asks for mfa: the recovered pwd session is stepped up, and with no factor left
    the step is an enrolment, never a code from what was removed."""
    enrol_totp(app, "alice", clock)
    secret = issue(app, "alice", "recover")
    choose(browser, confirm(browser, secret).headers["location"], remove_totp="yes")
    answer = browser.get(
        "/authorize",
        params={
            "client_id": "shop",
            "response_type": "code",
            "redirect_uri": "https://shop.example/callback",
            "scope": "openid",
            "state": "s",
            "nonce": "n",
            "acr_values": "mfa",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256",
        },
        follow_redirects=False,
    )
    location = answer.headers["location"]
    assert location.startswith("/login?tx="), location  # no code for the RP: a step-up
    # adding a factor needs a fresh password first (the step-up's credit is the session's)
    page = browser.get(location)
    password = browser.post(
        "/login",
        data={
            "csrf_token": form_value(page.text, "csrf_token"),
            "tx": form_value(page.text, "tx"),
            "username": "alice",
            "password": NEW_PASSWORD,
        },
        follow_redirects=False,
    )
    assert password.status_code == 303 and password.headers["location"].startswith("/login/enrol_totp?"), (
        password.headers
    )


def test_a_reset_never_bypasses_the_second_factor(app: Starlette, browser: TestClient, clock: ManualClock) -> None:
    totp_secret = enrol_totp(app, "alice", clock)
    secret = issue(app, "alice", "reset")
    done = choose(browser, confirm(browser, secret).headers["location"])
    assert done.headers["location"].startswith("/login/totp?tx="), done.headers
    assert browser.get("/account", follow_redirects=False).status_code != 200
    page = browser.get(done.headers["location"])
    clock.advance(30)  # the enrolment used this time step's code
    code = browser.post(
        "/login/totp",
        data={
            "csrf_token": form_value(page.text, "csrf_token"),
            "tx": form_value(page.text, "tx"),
            "code": pyotp.TOTP(totp_secret).at(clock.time()),
        },
        follow_redirects=False,
    )
    assert code.headers["location"] == "/account", code.text
    uid = user_id(app, "alice")
    assert "password.reset" in audit_kinds(app, uid)


def test_a_password_change_revokes_open_links(app: Starlette, browser: TestClient) -> None:
    secret = issue(app, "alice", "reset")
    from idp.user_lifecycle import set_password

    services = app.state.services
    with services.sessions.begin() as db:
        set_password(db, "alice", services.hashing.hash("a brand new admin pass"), must_change=False)
    assert browser.get(f"/link?t={secret}").status_code == 410
    assert link_row(app, secret).revoked_reason == "password_changed"


def test_a_verification_link_verifies_only_the_address_it_was_sent_to(app: Starlette, browser: TestClient) -> None:
    secret = issue(app, "alice", "verify", email="alice@example.com")
    page = browser.get(f"/link?t={secret}")
    assert "Confirm" in page.text
    done = browser.post(
        "/link", data={"csrf_token": form_value(page.text, "csrf_token"), "t": secret}, follow_redirects=False
    )
    assert done.status_code == 200 and "confirmed" in done.text
    with app.state.services.sessions() as db:
        assert db.scalar(select(User.email_verified).where(User.username == "alice"))
    assert confirm_again(browser, secret).status_code == 410


def test_a_verification_for_an_address_since_changed_verifies_nothing(app: Starlette, browser: TestClient) -> None:
    secret = issue(app, "bob", "verify", email="bob@example.com")
    with app.state.services.sessions.begin() as db:
        db.scalar(select(User).where(User.username == "bob")).email = "bob@elsewhere.example"
    refused = confirm_again(browser, secret)
    assert refused.status_code == 410
    with app.state.services.sessions() as db:
        assert not db.scalar(select(User.email_verified).where(User.username == "bob"))
    assert link_row(app, secret).used_at is None


def test_link_pages_never_send_a_referrer(app: Starlette, browser: TestClient) -> None:
    add_invitee(app)
    secret = issue(app, "carol", "invite")
    answer = confirm(browser, secret)
    assert answer.headers["referrer-policy"] == "no-referrer"
    page = browser.get(answer.headers["location"])
    assert page.headers["referrer-policy"] == "no-referrer" and "no-store" in page.headers["cache-control"]
    assert re.search(r"t=[A-Za-z0-9_-]{40}", page.text) is None  # the secret is not carried on


def test_a_reset_of_a_locked_account_answers_401_and_starts_no_session(
    app: Starlette, browser: TestClient, clock: ManualClock
) -> None:
    """A reset link does not open a lock: the new password is set (the link's one use), the
    sign-in it hands over to is refused as any sign-in of a locked account is: 401, never 423."""
    uid = user_id(app, "bob")
    with app.state.services.sessions.begin() as db:
        db.get(User, uid).locked_until = clock.now() + timedelta(hours=1)
    secret = issue(app, "bob", "reset")
    done = choose(browser, confirm(browser, secret).headers["location"])
    assert done.status_code == 401, done.text
    assert "paused" in done.text and "new password is set" in done.text
    with app.state.services.sessions() as db:
        assert db.scalar(select(IdpSession).where(IdpSession.user_id == uid, IdpSession.ended_at.is_(None))) is None
    assert browser.get("/account", follow_redirects=False).status_code != 200


def test_changing_the_address_revokes_links_mailed_to_the_old_one(app: Starlette, browser: TestClient) -> None:
    """An admin corrects a mistyped address: the invitation mailed to the wrong mailbox dies;
    a printed one (no address recorded) stays."""
    from idp.users import UserChanges, update_user

    add_invitee(app, email="carol@typo.example")
    mailed = issue(app, "carol", "invite", email="carol@typo.example")
    services = app.state.services
    with services.sessions.begin() as db:
        update_user(db, "carol", UserChanges(email="carol@example.com"), keyring=services.keyring)
    assert browser.get(f"/link?t={mailed}").status_code == 410
    assert link_row(app, mailed).revoked_reason == "address_changed"
    printed = issue(app, "carol", "invite")
    with services.sessions.begin() as db:
        update_user(db, "carol", UserChanges(email="carol@other.example"), keyring=services.keyring)
    assert browser.get(f"/link?t={printed}").status_code == 200


def test_the_invitations_grace_is_not_spent_by_what_the_chain_enrolled(
    app: Starlette, browser: TestClient, clock: ManualClock
) -> None:
    """carol's group requires mfa: the invitation's chain enrols her authenticator app before
    the session; later (past the re-authentication age, within the grace) /account still
    lets her add one more credential, a passkey, without signing in again."""
    from idp.groups import add_group, add_members
    from tests.account.test_sensitive_additions import passkey_options

    add_invitee(app)
    with app.state.services.sessions.begin() as db:
        add_group(db, "admins", min_acr="mfa")
        add_members(db, "admins", ["carol"])
    secret = issue(app, "carol", "invite")
    done = choose(browser, confirm(browser, secret).headers["location"])
    assert done.headers["location"].startswith("/login/enrol_totp?"), done.headers
    page = browser.get(done.headers["location"])
    key = re.search(r'data-totp-secret="([A-Z2-7]+)"', page.text) or re.search(r"\b([A-Z2-7]{32})\b", page.text)
    assert key, page.text[:500]
    clock.advance(20)  # she types the code a little after choosing her password
    enrolled = browser.post(
        done.headers["location"].split("?")[0],
        data={
            "csrf_token": form_value(page.text, "csrf_token"),
            "tx": form_value(page.text, "tx"),
            "code": pyotp.TOTP(key.group(1)).at(clock.time()),
        },
        follow_redirects=True,
    )
    assert enrolled.status_code == 200
    assert browser.get("/account").status_code == 200
    clock.advance(660)  # past reauth_seconds (600), within the grace (900)
    assert passkey_options(browser).status_code == 200
    clock.advance(300)  # past the grace: the usual rule again
    assert passkey_options(browser).status_code in (401, 403)


def test_a_strangers_forgot_password_request_does_not_end_a_reset_in_progress(
    app: Starlette, browser: TestClient
) -> None:
    """alice confirmed her reset link; someone types her name into Forgot password?: her
    reset goes on (only links still pending are superseded by a self-service request)."""
    services = app.state.services
    with services.sessions.begin() as db:
        db.scalar(select(User).where(User.username == "alice")).email_verified = True
    with services.sessions.begin() as db:
        first = records.issue_if_reachable(db, services.keyring, "alice", "reset", by="self")
    location = confirm(browser, first.secret).headers["location"]
    with services.sessions.begin() as db:
        second = records.issue_if_reachable(db, services.keyring, "alice", "reset", by="self")
        assert second.user_id is not None and second.superseded == 0
    assert choose(browser, location).status_code == 303
