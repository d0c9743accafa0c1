"""Attacks on one-time links and the account lifecycle (issue 18): for every piece of state a
link creates (its secret, its public id, the confirming browser's binding, the login
transaction it hands over, the session that chain starts, the invitation's grace, a reset
request), who else could present it, from which browser, in which order, and twice.

Each test names its attack and asserts the SAFE behaviour; a test that fails has found a
defect, and its message says what is wrong (where in the code, and what should happen).

Races: where a request has a window between its check and its write, the interleaving real
concurrency can produce is forced deterministically: the second request is made from inside
the first, in that window (a hook on the password hash, or on the re-authentication check).
Where the check and the write are one statement (the confirmation's conditional UPDATE), two
threads post at the same instant; a barrier holds both inside the verification of an address
so that PostgreSQL overlaps them (SQLite's one writer serializes them, and the barrier gives
way)."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pyotp
import pytest
from sqlalchemy import func, select, update
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.app import create_app
from idp.db.models import AuditEvent, IdpSession, OneTimeLink, Passkey, TotpCredential, User
from idp.groups import add_group, add_members
from idp.links import records, redeem
from idp.links.records import Kind
from idp.settings import Settings
from idp.state.memory import MemoryStore
from idp.users import UserChanges, add_user, disable_user, update_user
from tests.conftest import ISSUER
from tests.links.test_link_pages import NEW_PASSWORD, add_invitee, enrol_totp, issue, link_row
from tests.login.test_passkey_login import csrf_token, passkey_ceremony
from tests.support.authenticator import SoftAuthenticator
from tests.support.clock import ManualClock
from tests.support.rows import detached
from tests.support.rp import SHOP, AuthRequest, follow_to_client, form_value, query_of, refresh, start
from tests.support.rp import redeem as redeem_code
from tests.support.seed import PASSWORD, seed
from tests.support.smtp import SmtpServer, smtp_server

OTHER_PASSWORD = "walnut harbour cobalt signal"
ATTACKER_PASSWORD = "attacker chosen pass phrase"
PAST_REAUTH = 660  # seconds: older than reauth_seconds (600), within the grace (900)
LINK_STATUSES = (400, 403, 404, 405, 410, 429)  # what a refused /link request may answer


# ---- browsers -----------------------------------------------------------------------------------


@pytest.fixture
def browsers(app: Starlette) -> Iterator[Callable[[], TestClient]]:
    """As many separate browsers (cookie jars) as a test needs."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(TestClient(app, base_url=ISSUER))


@pytest.fixture
def browser(browsers: Callable[[], TestClient]) -> TestClient:
    return browsers()


@pytest.fixture
def attacker(browsers: Callable[[], TestClient]) -> TestClient:
    return browsers()


# ---- the database, read directly --------------------------------------------------------------------


def services(app: Starlette) -> Any:
    return app.state.services


def uid_of(app: Starlette, username: str) -> int:
    with services(app).sessions() as db:
        found = db.scalar(select(User.id).where(User.username == username))
        assert found is not None, username
        return int(found)


def user_row(app: Starlette, username: str) -> User:
    with services(app).sessions() as db:
        row = db.scalar(select(User).where(User.username == username))
        assert row is not None, username
        db.expunge(row)
        return row


def has_password(app: Starlette, username: str, password: str) -> bool:
    stored = user_row(app, username).password_hash
    return stored is not None and services(app).hashing.verify(stored, password)


def live_sessions(app: Starlette, username: str) -> list[IdpSession]:
    uid = uid_of(app, username)
    return detached(
        services(app).sessions, select(IdpSession).where(IdpSession.user_id == uid, IdpSession.ended_at.is_(None))
    )


def passkeys_of(app: Starlette, username: str) -> list[Passkey]:
    return detached(services(app).sessions, select(Passkey).where(Passkey.user_id == uid_of(app, username)))


def audits(app: Starlette, kind: str) -> list[AuditEvent]:
    return detached(services(app).sessions, select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.id))


def row_state(app: Starlette, secret: str) -> tuple[Any, ...]:
    row = link_row(app, secret)
    return (row.confirmed_at, row.browser, row.used_at, row.revoked_at, row.session_sid)


def signed_in_as(app: Starlette, client: TestClient) -> str | None:
    """The user whose live session this browser's cookie is, if any."""
    cookie = client.cookies.get("idp_session")
    if cookie is None:
        return None
    svc = services(app)
    with svc.sessions() as db:
        row = db.scalar(
            select(IdpSession).where(
                IdpSession.cookie_digest == svc.keyring.digest(cookie), IdpSession.ended_at.is_(None)
            )
        )
        if row is None:
            return None
        return db.scalar(select(User.username).where(User.id == row.user_id))


def set_group(app: Starlette, group: str, min_acr: str, *members: str) -> None:
    with services(app).sessions.begin() as db:
        add_group(db, group, min_acr=min_acr)
        add_members(db, group, list(members))


def give_passkey(app: Starlette, username: str) -> SoftAuthenticator:
    """A passkey of `username`'s, registered from elsewhere; the authenticator that holds it."""
    svc, authenticator = services(app), SoftAuthenticator()
    with svc.sessions.begin() as db:
        user = db.scalar(select(User).where(User.username == username))
        challenge = svc.passkeys.registration_options(db, user)
        credential = authenticator.create(json.loads(challenge.options_json))
        svc.passkeys.register(db, user, challenge.id, credential, "Phone")
    return authenticator


# ---- the link pages, driven as a browser does ------------------------------------------------------


def csrf_of(client: TestClient, page: str = "/login") -> str:
    return form_value(client.get(page).text, "csrf_token")


def post_confirm(client: TestClient, secret: str) -> Any:
    return client.post("/link", data={"csrf_token": csrf_of(client), "t": secret}, follow_redirects=False)


def confirmed(client: TestClient, secret: str) -> str:
    """The page, then its POST: where the link sends this browser next."""
    page = client.get(f"/link?t={secret}")
    assert page.status_code == 200, page.text
    answer = client.post(
        "/link", data={"csrf_token": form_value(page.text, "csrf_token"), "t": secret}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    return str(answer.headers["location"])


def link_id_of(location: str) -> str:
    return urlsplit(location).query.removeprefix("l=")


def post_password(client: TestClient, link_id: str, password: str = NEW_PASSWORD, **extra: str) -> Any:
    data = {"csrf_token": csrf_of(client), "l": link_id, "new_password": password, "confirm_password": password}
    return client.post("/link/password", data={**data, **extra}, follow_redirects=False)


def sign_in(client: TestClient, username: str = "alice", password: str = PASSWORD) -> Any:
    return client.post(
        "/login",
        data={"csrf_token": csrf_of(client), "username": username, "password": password},
        follow_redirects=False,
    )


def submit_code(client: TestClient, location: str, code: str) -> Any:
    page = client.get(location)
    assert page.status_code == 200, page.text
    return client.post(
        urlsplit(location).path,
        data={"csrf_token": form_value(page.text, "csrf_token"), "tx": form_value(page.text, "tx"), "code": code},
        follow_redirects=False,
    )


def tx_of(location: str) -> str:
    return query_of(location)["tx"]


# =================================================================================================
# the secret, replayed
# =================================================================================================


@pytest.mark.parametrize("kind", ["invite", "recover", "reset"])
def test_a_spent_link_replayed_from_any_browser_changes_nothing(
    app: Starlette, browser: TestClient, attacker: TestClient, kind: Kind
) -> None:
    """Replay after use: the secret (from the mail, a proxy log, the browser history) and the
    link id presented again, by the same browser and by another, after the link did its one
    change. Every request is refused; the password stays the one chosen."""
    username = "carol" if kind == "invite" else "alice"
    if kind == "invite":
        add_invitee(app)
    secret = issue(app, username, kind)
    location = confirmed(browser, secret)
    done = post_password(browser, link_id_of(location))
    assert done.status_code == 303, done.text
    spent = row_state(app, secret)

    for client in (browser, attacker):
        assert client.get(f"/link?t={secret}").status_code == 410
        assert post_confirm(client, secret).status_code == 410
        assert client.get(location).status_code in (403, 410)
        again = post_password(client, link_id_of(location), ATTACKER_PASSWORD)
        assert again.status_code in (403, 410), f"a spent link took a second password: {again.status_code}"

    assert has_password(app, username, NEW_PASSWORD), "the replay changed the password the link set"
    assert row_state(app, secret) == spent
    assert len(audits(app, "link.used")) == 1


def test_a_confirmed_link_superseded_by_a_newer_one_sets_nothing(app: Starlette, browser: TestClient) -> None:
    """Replay after supersession: the older link was confirmed (its password page open in the
    browser) when a newer link of its kind was issued. The older page's POST is refused; the
    newer link still works."""
    old = issue(app, "alice", "reset")
    location = confirmed(browser, old)
    new = issue(app, "alice", "reset")

    refused = post_password(browser, link_id_of(location), ATTACKER_PASSWORD)

    assert refused.status_code == 410, refused.text
    assert has_password(app, "alice", PASSWORD)
    assert link_row(app, old).revoked_reason == "superseded"
    assert post_password(browser, link_id_of(confirmed(browser, new))).status_code == 303
    assert has_password(app, "alice", NEW_PASSWORD)


@pytest.mark.parametrize("how", ["account page", "admin set-password"])
def test_a_password_change_kills_a_confirmed_link(app: Starlette, browsers: Callable[[], TestClient], how: str) -> None:
    """Replay after a password change: a reset link confirmed in one browser, then the user
    changes the password (on /account, or the admin sets it). The link's password page and
    POST are refused afterwards."""
    holder = browsers()
    location = confirmed(holder, issue(app, "alice", "reset"))
    if how == "account page":
        owner = browsers()
        assert sign_in(owner).status_code == 303
        changed = owner.post(
            "/account/password",
            data={
                "csrf_token": csrf_of(owner, "/account"),
                "current_password": PASSWORD,
                "new_password": OTHER_PASSWORD,
                "confirm_password": OTHER_PASSWORD,
            },
            follow_redirects=False,
        )
        assert changed.status_code == 303, changed.text
    else:
        from idp.user_lifecycle import set_password

        svc = services(app)
        with svc.sessions.begin() as db:
            set_password(db, "alice", svc.hashing.hash(OTHER_PASSWORD), must_change=False)

    assert holder.get(location).status_code == 410
    assert post_password(holder, link_id_of(location), ATTACKER_PASSWORD).status_code == 410
    assert has_password(app, "alice", OTHER_PASSWORD)


def test_using_one_kind_of_link_kills_the_other_kinds(
    app: Starlette, browser: TestClient, attacker: TestClient
) -> None:
    """A recovery link and a reset link are both open (the admin sent one, the user asked for
    the other); the reset is used. The recovery link, held elsewhere, must not then reset the
    password (or remove factors) a second time."""
    recovery = issue(app, "alice", "recover")
    recovery_location = confirmed(attacker, recovery)
    assert post_password(browser, link_id_of(confirmed(browser, issue(app, "alice", "reset")))).status_code == 303

    assert attacker.get(f"/link?t={recovery}").status_code == 410
    assert post_password(attacker, link_id_of(recovery_location), ATTACKER_PASSWORD).status_code == 410
    assert has_password(app, "alice", NEW_PASSWORD)
    assert link_row(app, recovery).revoked_reason == "password_changed"


def test_a_disabled_users_link_does_nothing_while_disabled(app: Starlette, browser: TestClient) -> None:
    """Replay after the user is disabled: a reset link confirmed before the admin disabled the
    account (and one not confirmed yet). Neither sets a password nor signs anyone in."""
    location = confirmed(browser, issue(app, "alice", "reset"))
    recovery = issue(app, "alice", "recover")
    with services(app).sessions.begin() as db:
        disable_user(db, "alice")

    refused = post_password(browser, link_id_of(location), ATTACKER_PASSWORD)
    assert refused.status_code in LINK_STATUSES, refused.status_code
    assert post_confirm(browser, recovery).status_code in LINK_STATUSES
    assert has_password(app, "alice", PASSWORD)
    assert live_sessions(app, "alice") == []
    assert signed_in_as(app, browser) is None


def test_a_disabled_users_link_is_neither_shown_nor_bound(app: Starlette, browser: TestClient) -> None:
    """A link presented while its account is disabled (the admin's answer to a takeover):
    refused at the page, as a deleted user's is, and its POST must not bind it to the
    presenting browser (audited as a successful confirmation), or that browser owns it the
    moment the admin enables the account again."""
    secret = issue(app, "alice", "recover")
    with services(app).sessions.begin() as db:
        disable_user(db, "alice")

    page = browser.get(f"/link?t={secret}")
    posted = post_confirm(browser, secret)

    assert (page.status_code, "alice" in page.text) == (404, False), (
        f"GET /link for a disabled account's link answered {page.status_code} naming the account: "
        f"redeem.preview refuses a deleted user but not a disabled one (redeem._live_user does)"
    )
    assert posted.status_code == 404
    assert row_state(app, secret) == (None, None, None, None, None), (
        "the refused confirmation bound the disabled account's link to this browser: records.confirm commits "
        "the binding (and audits link.confirmed) before redeem.confirm looks at the user"
    )
    assert audits(app, "link.confirmed") == []


def test_a_deleted_users_link_does_nothing(app: Starlette, browser: TestClient) -> None:
    """Replay after deletion: a confirmed reset link of a user deleted since. Its pages are
    refused (never a 500), and the tombstone gets no password."""
    from idp.user_lifecycle import delete_user

    secret = issue(app, "alice", "reset")
    location = confirmed(browser, secret)
    uid = uid_of(app, "alice")
    svc = services(app)
    with svc.sessions.begin() as db:
        delete_user(db, svc.keyring, "alice", allow_reuse=False)

    for response in (
        browser.get(f"/link?t={secret}"),
        post_confirm(browser, secret),
        browser.get(location),
        post_password(browser, link_id_of(location), ATTACKER_PASSWORD),
    ):
        assert response.status_code in (404, 410), response.status_code
    with svc.sessions() as db:
        assert db.get(User, uid).password_hash is None
    assert signed_in_as(app, browser) is None


@pytest.mark.parametrize("how", ["disabled", "deleted"])
def test_a_handed_over_chain_dies_with_its_user(
    app: Starlette, browser: TestClient, clock: ManualClock, how: str
) -> None:
    """The login transaction a reset handed over (waiting for the second factor) outlives the
    account: the admin disables or deletes alice meanwhile. The right code must start no
    session."""
    from idp.user_lifecycle import delete_user

    totp = enrol_totp(app, "alice", clock)
    done = post_password(browser, link_id_of(confirmed(browser, issue(app, "alice", "reset"))))
    assert done.headers["location"].startswith("/login/totp?tx="), done.headers
    svc = services(app)
    with svc.sessions.begin() as db:
        if how == "disabled":
            disable_user(db, "alice")
        else:
            delete_user(db, svc.keyring, "alice", allow_reuse=False)
    clock.advance(30)

    page = browser.get(done.headers["location"])
    if page.status_code == 200:
        answer = browser.post(
            "/login/totp",
            data={
                "csrf_token": form_value(page.text, "csrf_token"),
                "tx": form_value(page.text, "tx"),
                "code": pyotp.TOTP(totp).at(clock.time()),
            },
            follow_redirects=False,
        )
        assert answer.status_code != 303 or answer.headers["location"] != "/account", "signed in a gone account"
    assert signed_in_as(app, browser) is None
    with svc.sessions() as db:
        assert db.scalar(select(func.count()).select_from(IdpSession).where(IdpSession.ended_at.is_(None))) == 0


# =================================================================================================
# races: only one browser owns a link, only one password wins
# =================================================================================================


def post_together(clients: list[TestClient], path: str, forms: list[dict[str, str]]) -> list[Any]:
    """Each browser POSTs its form to `path` at the same instant (one thread each)."""
    start_line = threading.Barrier(len(clients))
    answers: list[Any] = [None] * len(clients)

    def go(i: int) -> None:
        start_line.wait(5)
        answers[i] = clients[i].post(path, data=forms[i], follow_redirects=False)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return answers


@pytest.mark.parametrize("kind", ["reset", "invite"], ids=["a reset", "an invitation to an account with a password"])
def test_two_browsers_racing_to_confirm_one_link_only_one_owns_it(
    app: Starlette, browsers: Callable[[], TestClient], kind: Kind
) -> None:
    """Two browsers (the user's and whoever else has the mail) POST the confirmation at the
    same instant, a few times over. Exactly one is bound (an invitation to an account with a
    password is used by its confirmation: one chain only); the other is refused, and its
    binding never reaches the row."""
    for _ in range(4):
        secret = issue(app, "alice", kind)
        pair = [browsers(), browsers()]
        tokens = [form_value(b.get(f"/link?t={secret}").text, "csrf_token") for b in pair]
        answers = post_together(pair, "/link", [{"csrf_token": token, "t": secret} for token in tokens])

        statuses = sorted(a.status_code for a in answers)
        assert statuses in ([303, 403], [303, 410]), f"both or neither confirmed: {statuses}"
        winner = pair[[a.status_code for a in answers].index(303)]
        loser = pair[1 - pair.index(winner)]
        location = next(a.headers["location"] for a in answers if a.status_code == 303)
        assert loser.get(location).status_code in (400, 403, 410)
        assert winner.get(location).status_code == 200
        assert link_row(app, secret).browser is not None
        assert (
            len([a for a in audits(app, "link.confirmed") if a.detail["link_id"] == link_row(app, secret).link_id]) == 1
        )


def test_two_password_posts_racing_on_one_confirmed_link_one_wins(
    app: Starlette, browser: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two password POSTs of one confirmed link (a double submit, two tabs): the second is sent
    while the first is being hashed, after both passed the link check. Only one password is
    set, one session starts, the link is used once; the loser is refused."""
    location = confirmed(browser, issue(app, "alice", "reset"))
    link_id = link_id_of(location)
    hashing = services(app).hashing
    original = hashing.hash
    second: list[Any] = []

    def racing(password: str) -> str:
        if not second:
            second.append(None)
            second[0] = post_password(browser, link_id, OTHER_PASSWORD)  # the other tab, meanwhile
        return original(password)

    monkeypatch.setattr(hashing, "hash", racing)
    first = post_password(browser, link_id, NEW_PASSWORD)
    monkeypatch.undo()

    statuses = sorted((first.status_code, second[0].status_code))
    assert statuses == [303, 410], f"expected one winner and one refusal, got {statuses}"
    winner = NEW_PASSWORD if first.status_code == 303 else OTHER_PASSWORD
    assert has_password(app, "alice", winner)
    assert len(live_sessions(app, "alice")) == 1
    assert len(audits(app, "link.used")) == 1 and len(audits(app, "password.reset")) == 1


# =================================================================================================
# one user's link, another user's account
# =================================================================================================


def test_another_users_link_id_acts_on_nothing(app: Starlette, browser: TestClient, attacker: TestClient) -> None:
    """Link id swapping: bob confirms his own reset link (so his browser owns a link), then
    posts alice's confirmed link id (read off her screen, a log, `idp user links`) and
    asks for its page. Refused; alice's password and link are untouched, and bob's own
    link still sets only bob's password."""
    alice_location = confirmed(browser, issue(app, "alice", "reset"))
    alice_secret_row = link_row_by_id(app, link_id_of(alice_location))
    bob_location = confirmed(attacker, issue(app, "bob", "reset"))

    assert attacker.get(alice_location).status_code in (403, 404)
    stolen = post_password(attacker, link_id_of(alice_location), ATTACKER_PASSWORD)
    assert stolen.status_code in (403, 404), stolen.text
    assert has_password(app, "alice", PASSWORD)
    assert link_row_by_id(app, link_id_of(alice_location)).used_at is None
    assert link_row_by_id(app, link_id_of(alice_location)).browser == alice_secret_row.browser

    own = post_password(attacker, link_id_of(bob_location), ATTACKER_PASSWORD)
    assert own.status_code == 303
    assert has_password(app, "bob", ATTACKER_PASSWORD) and has_password(app, "alice", PASSWORD)
    assert signed_in_as(app, attacker) == "bob"
    # alice still finishes with her link
    assert post_password(browser, link_id_of(alice_location)).status_code == 303
    assert signed_in_as(app, browser) == "alice"


def link_row_by_id(app: Starlette, link_id: str) -> OneTimeLink:
    with services(app).sessions() as db:
        row = db.scalar(select(OneTimeLink).where(OneTimeLink.link_id == link_id))
        assert row is not None
        db.expunge(row)
        return row


def test_an_unconfirmed_link_ids_page_tells_nobody_whose_it_is(
    app: Starlette, browser: TestClient, attacker: TestClient, clock: ManualClock
) -> None:
    """Link id before confirmation, read: the id is public (the admin's `idp user links`, the
    audit trail, the CLI's output over a shoulder), the secret is not. Alice's recovery
    link is pending; another browser asks for /link/password?l=<its id>. It must be refused
    like an unknown link: not the choose-a-password form naming alice and listing the
    factors she holds (which tells an attacker what to phish next)."""
    enrol_totp(app, "alice", clock)
    secret = issue(app, "alice", "recover")
    link_id = link_row(app, secret).link_id

    page = attacker.get(f"/link/password?l={link_id}")

    assert page.status_code == 404, (
        f"GET /link/password?l=<pending link id> from a browser that never confirmed the link answered "
        f"{page.status_code}: records.bound() accepts an unconfirmed link for any browser (_refusal returns None "
        f"for confirmed_at IS NULL before looking at the browser), so redeem.password_page renders the form"
    )
    assert "alice" not in page.text, "the page names the account the link id belongs to"
    assert 'name="remove_totp"' not in page.text, "the page lists the factors the account holds"
    assert row_state(app, secret) == (None, None, None, None, None)


@pytest.mark.parametrize("binding", ["no login binding", "its own login binding"])
def test_an_unconfirmed_link_id_cannot_be_claimed_by_another_browser(
    app: Starlette, browser: TestClient, attacker: TestClient, monkeypatch: pytest.MonkeyPatch, binding: str
) -> None:
    """Link id before confirmation, posted: someone posts a new password for alice's pending
    reset link id (never confirmed, so nobody owns it yet). It must be refused as an unknown
    link (404, the failure budget spent), without an Argon2 hash made for the stranger and
    never a 500; the link stays alice's to confirm and use."""
    secret = issue(app, "alice", "reset")
    link_id = link_row(app, secret).link_id
    if binding == "its own login binding":
        confirmed(attacker, issue(app, "bob", "reset"))  # the attacker's browser owns a link of its own
    hashing = services(app).hashing
    hashed: list[str] = []
    original = hashing.hash
    monkeypatch.setattr(hashing, "hash", lambda password: hashed.append(password) or original(password))

    posted = post_password(attacker, link_id, ATTACKER_PASSWORD)

    assert posted.status_code == 404, (
        f"POST /link/password for another user's unconfirmed link id answered {posted.status_code} "
        f"(expected 404 unknown): records.bound() lets an unconfirmed link through for any browser, "
        f"redeem.choose_password then hashes the stranger's password and reaches "
        f"`assert attempt.browser is not None` (a 500 without a login binding) or records.use() "
        f"(a misleading 410 'already used')"
    )
    assert hashed == [], "an Argon2 hash was computed for a password posted to a link this browser does not own"
    assert has_password(app, "alice", PASSWORD)
    assert row_state(app, secret) == (None, None, None, None, None)
    assert post_password(browser, link_id_of(confirmed(browser, secret))).status_code == 303
    assert has_password(app, "alice", NEW_PASSWORD)


def test_a_handed_over_transaction_is_worthless_in_another_browser(
    app: Starlette, browser: TestClient, attacker: TestClient, clock: ManualClock
) -> None:
    """The tx id a reset hands over (in the URL of the second-factor page: history, a
    screenshot, a Referer) presented by another browser, with the right code even: refused,
    no session there, and the rightful browser still finishes."""
    totp = enrol_totp(app, "alice", clock)
    done = post_password(browser, link_id_of(confirmed(browser, issue(app, "alice", "reset"))))
    location = done.headers["location"]
    assert location.startswith("/login/totp?tx="), location
    tx = tx_of(location)
    clock.advance(30)

    assert attacker.get(location).status_code in (400, 403, 404, 410)
    assert attacker.get(f"/login?tx={tx}", follow_redirects=False).status_code != 303
    stolen = attacker.post(
        "/login/totp",
        data={"csrf_token": csrf_of(attacker), "tx": tx, "code": pyotp.TOTP(totp).at(clock.time())},
        follow_redirects=False,
    )
    assert stolen.status_code != 303, stolen.headers
    assert signed_in_as(app, attacker) is None and live_sessions(app, "alice") == []

    finished = submit_code(browser, location, pyotp.TOTP(totp).at(clock.time()))
    assert finished.status_code == 303 and finished.headers["location"] == "/account", finished.text


def test_an_invitation_chain_refuses_another_users_passkey(
    app: Starlette, browser: TestClient, clock: ManualClock
) -> None:
    """Identity swap on the handed-over chain: alice's invitation (she has a password) asks
    for it on /login?tx=...; the browser answers with bob's passkey instead (the usernameless
    passkey button on the same page). Refused: nobody is signed in with alice's link, and
    the link's chain still takes only alice."""
    bobs_key = give_passkey(app, "bob")
    location = confirmed(browser, issue(app, "alice", "invite"))
    assert location.startswith("/login?tx="), location
    tx = tx_of(location)

    swapped = passkey_ceremony(browser, bobs_key, csrf_token(browser), tx)

    assert swapped.status_code in (400, 401), swapped.text
    assert signed_in_as(app, browser) is None
    assert live_sessions(app, "bob") == [] and live_sessions(app, "alice") == []
    right = browser.post(
        "/login",
        data={"csrf_token": csrf_of(browser), "tx": tx, "username": "alice", "password": PASSWORD},
        follow_redirects=False,
    )
    assert right.status_code == 303 and right.headers["location"] == "/account", right.text
    assert signed_in_as(app, browser) == "alice"


# =================================================================================================
# the `enrolling` allowance: only a link's chain, only for its own user
# =================================================================================================


def enrol_options(client: TestClient, tx: str) -> Any:
    return client.post("/login/enrol_passkey/options", json={"csrf_token": csrf_token(client), "tx": tx})


def enrol_verify(client: TestClient, tx: str, challenge_id: str, credential: object) -> Any:
    return client.post(
        "/login/enrol_passkey/verify",
        json={
            "csrf_token": csrf_token(client),
            "tx": tx,
            "challenge_id": challenge_id,
            "credential": credential,
            "name": "Planted",
        },
    )


def test_a_normal_sign_in_never_gets_the_enrolment(app: Starlette, browser: TestClient) -> None:
    """The allowance without a link: alice (a phr group, no passkey) knows her password and
    signs in the usual way. The chain ends unmet (403: she cannot sign in at that level),
    and its tx opens no passkey enrolment: the password alone plants
    nothing."""
    set_group(app, "staff", "phr", "alice")
    page = browser.get("/login")
    answer = sign_in(browser)

    assert answer.status_code == 403 and "cannot sign in" in answer.text, (answer.status_code, answer.headers)
    candidates = {form_value(page.text, "tx")} if 'name="tx"' in page.text else set()
    candidates |= set(re.findall(r"tx=([A-Za-z0-9_-]{8,64})", answer.text))
    for tx in candidates:
        assert enrol_options(browser, tx).status_code == 400
        assert browser.get(f"/login/enrol_passkey?tx={tx}").status_code in (400, 403, 404, 410)
    assert passkeys_of(app, "alice") == [] and signed_in_as(app, browser) is None


def test_a_step_up_never_gets_the_enrolment(app: Starlette, browser: TestClient) -> None:
    """The allowance by a step-up: alice has a pwd session (from before her group required
    phr); an RP asks for phr, so her session would be stepped up. It must end unmet (the
    page, or the RP's error), never at the passkey enrolment."""
    assert sign_in(browser).status_code == 303
    set_group(app, "staff", "phr", "alice")

    answer = start(browser, AuthRequest(extra={"acr_values": "phr"}))

    location = answer.headers.get("location", "")
    assert answer.status_code == 403 or "error=unmet_authentication_requirements" in location, (
        answer.status_code,
        location,
    )
    assert "enrol_passkey" not in location and "enrol_passkey" not in answer.text
    for tx in set(re.findall(r"tx=([A-Za-z0-9_-]{8,64})", location + answer.text)):
        assert enrol_options(browser, tx).status_code == 400
    assert passkeys_of(app, "alice") == []


def test_a_reset_chain_never_gets_the_enrolment(app: Starlette, browser: TestClient) -> None:
    """The allowance by Forgot password?: a reset link (the mailbox is all it proves) for a
    phr-group user without a passkey. The new password is set, but the chain must not
    offer the passkey enrolment: that is for an admin's invitation or recovery."""
    set_group(app, "staff", "phr", "alice")
    done = post_password(browser, link_id_of(confirmed(browser, issue(app, "alice", "reset"))))
    location = done.headers.get("location", "")
    assert "enrol_passkey" not in location, f"a reset link reached the passkey enrolment: {location}"
    assert signed_in_as(app, browser) is None and passkeys_of(app, "alice") == []


def test_an_enrolling_chain_enrols_only_its_own_user(app: Starlette, browsers: Callable[[], TestClient]) -> None:
    """Cross-account planting: carol's invitation chain (a phr group: she enrols a passkey)
    and bob's /account (signed in now). Bob's registration challenge answered on carol's
    chain, and carol's chain's challenge answered on bob's /account: both refused, and
    nobody gets a passkey of the other's ceremony. Carol's chain registers for carol only."""
    add_invitee(app)
    set_group(app, "staff", "phr", "carol")
    carol, bob = browsers(), browsers()
    done = post_password(carol, link_id_of(confirmed(carol, issue(app, "carol", "invite"))))
    location = done.headers["location"]
    assert location.startswith("/login/enrol_passkey?tx="), location
    tx = tx_of(location)
    assert sign_in(bob, "bob").status_code == 303

    bobs = bob.post("/account/passkeys/options", json={"csrf_token": csrf_token(bob, "/account")}).json()
    carols = enrol_options(carol, tx).json()
    assert carols["publicKey"]["user"]["name"] == "carol"

    on_carols_chain = enrol_verify(carol, tx, bobs["challenge_id"], SoftAuthenticator().create(bobs["publicKey"]))
    on_bobs_account = bob.post(
        "/account/passkeys",
        json={
            "csrf_token": csrf_token(bob, "/account"),
            "challenge_id": carols["challenge_id"],
            "credential": SoftAuthenticator().create(carols["publicKey"]),
            "name": "Planted",
        },
    )
    assert on_carols_chain.status_code == 400, on_carols_chain.text
    assert on_bobs_account.status_code == 400, on_bobs_account.text
    assert passkeys_of(app, "bob") == [] and passkeys_of(app, "carol") == []

    fresh = enrol_options(carol, tx).json()
    assert (
        enrol_verify(carol, tx, fresh["challenge_id"], SoftAuthenticator().create(fresh["publicKey"])).status_code
        == 200
    )
    assert [p.user_id for p in passkeys_of(app, "carol")] == [uid_of(app, "carol")] and passkeys_of(app, "bob") == []


# =================================================================================================
# recovery: what the lost device (or the thief) kept
# =================================================================================================


def shop_tokens(client: TestClient) -> dict[str, Any]:
    """alice signs in to the shop (offline_access too): its refresh and access tokens."""
    request = AuthRequest()
    location = follow_to_client(client, start(client, request))
    code = query_of(location)["code"]
    tokens = redeem_code(client, request, code)
    assert tokens.status_code == 200, tokens.text
    return dict(tokens.json())


def token_alive(client: TestClient, tokens: dict[str, Any]) -> dict[str, bool]:
    userinfo = client.get("/userinfo", headers={"authorization": f"Bearer {tokens['access_token']}"})
    introspected = client.post("/introspect", data={"token": tokens["access_token"]}, auth=SHOP)
    refreshed = refresh(client, tokens["refresh_token"])
    return {
        "userinfo": userinfo.status_code == 200,
        "introspection": introspected.status_code == 200 and introspected.json().get("active") is True,
        "refresh": refreshed.status_code == 200,
    }


@pytest.mark.parametrize("kind", ["recover", "reset"])
def test_a_recovery_or_reset_kills_every_session_and_token_the_thief_holds(
    app: Starlette, browsers: Callable[[], TestClient], kind: Kind
) -> None:
    """What the thief kept: alice's session on a lost device, and the shop's refresh and
    access tokens issued from it (offline_access). After a recovery or a reset in another
    browser, none of them works any more."""
    thief = browsers()
    tokens = shop_tokens(thief)
    assert token_alive(thief, tokens) == {"userinfo": True, "introspection": True, "refresh": True}
    # the refresh above rotated the refresh token: keep the newest one, as a thief would
    tokens = {**tokens, **refresh(thief, tokens["refresh_token"]).json()}

    owner = browsers()
    done = post_password(owner, link_id_of(confirmed(owner, issue(app, "alice", kind))))
    assert done.status_code == 303 and done.headers["location"] == "/account", done.headers

    assert token_alive(thief, tokens) == {"userinfo": False, "introspection": False, "refresh": False}
    assert thief.get("/account", follow_redirects=False).status_code != 200
    assert signed_in_as(app, thief) is None
    assert len(live_sessions(app, "alice")) == 1, "only the session the link's own sign-in started"


def test_a_removed_authenticator_app_never_works_again(
    app: Starlette, browsers: Callable[[], TestClient], clock: ManualClock
) -> None:
    """The lost phone's secret: alice recovers and removes her authenticator app, then sets
    up a new one. A code from the old secret (the thief's copy) is refused at sign-in; the
    new one works."""
    old_secret = enrol_totp(app, "alice", clock)
    owner = browsers()
    done = post_password(owner, link_id_of(confirmed(owner, issue(app, "alice", "recover"))), remove_totp="yes")
    assert done.headers["location"] == "/account", done.headers
    setup = owner.post("/account/totp/setup", data={"csrf_token": csrf_of(owner, "/account")}, follow_redirects=False)
    new_secret = re.search(r'data-totp-secret="([A-Z2-7]+)"', setup.text).group(1)  # type: ignore[union-attr]
    assert new_secret != old_secret
    enabled = owner.post(
        "/account/totp/confirm",
        data={"csrf_token": csrf_of(owner, "/account"), "code": pyotp.TOTP(new_secret).at(clock.time())},
        follow_redirects=False,
    )
    assert enabled.status_code == 200, enabled.text
    clock.advance(30)

    thief = browsers()
    step = sign_in(thief, password=NEW_PASSWORD)
    assert step.headers["location"].startswith("/login/totp?tx="), step.headers
    refused = submit_code(thief, step.headers["location"], pyotp.TOTP(old_secret).at(clock.time()))
    assert refused.status_code == 401, "a code of the removed authenticator app was accepted"
    assert signed_in_as(app, thief) is None
    accepted = submit_code(thief, step.headers["location"], pyotp.TOTP(new_secret).at(clock.time()))
    assert accepted.headers["location"] == "/account"


def test_a_recovered_session_cannot_step_itself_up_with_nothing(
    app: Starlette, browser: TestClient, clock: ManualClock
) -> None:
    """The recovered pwd session asks for mfa (an RP's acr_values) after removing the only
    second factor: no code is issued to the RP on the recovered password alone, and the
    step-up chain is not an enrolling one (no passkey planted on the password)."""
    enrol_totp(app, "alice", clock)
    done = post_password(browser, link_id_of(confirmed(browser, issue(app, "alice", "recover"))), remove_totp="yes")
    assert done.headers["location"] == "/account"
    for acr in ("mfa", "phr"):
        answer = start(browser, AuthRequest(extra={"acr_values": acr}))
        location = answer.headers.get("location", "")
        assert "code=" not in location, f"the recovered pwd session got a code for acr_values={acr}: {location}"
        assert "enrol_passkey" not in location


def test_a_recovery_of_a_phr_user_signs_in_only_with_a_new_passkey(
    app: Starlette, browsers: Callable[[], TestClient]
) -> None:
    """A recovery for a user whose group requires phr, who lost the passkey: the chain
    enrols a new one and signs in with it (phr). No session before that; the removed
    passkey (the thief's device) no longer signs in."""
    set_group(app, "staff", "phr", "alice")
    lost = give_passkey(app, "alice")
    owner = browsers()
    done = post_password(owner, link_id_of(confirmed(owner, issue(app, "alice", "recover"))), remove_passkeys="yes")
    location = done.headers["location"]
    assert location.startswith("/login/enrol_passkey?tx="), location
    assert signed_in_as(app, owner) is None and owner.get("/account", follow_redirects=False).status_code != 200
    assert passkeys_of(app, "alice") == []

    thief = browsers()
    stolen = passkey_ceremony(thief, lost, csrf_token(thief))
    assert stolen.status_code in (400, 401) and signed_in_as(app, thief) is None, stolen.text

    tx = tx_of(location)
    new_key = SoftAuthenticator()
    offered = enrol_options(owner, tx).json()
    enrolled = enrol_verify(owner, tx, offered["challenge_id"], new_key.create(offered["publicKey"]))
    assert enrolled.json() == {"redirect": f"/login/passkey?tx={tx}"}, enrolled.text
    assert signed_in_as(app, owner) is None, "the enrolment itself must not sign in"
    finished = passkey_ceremony(owner, new_key, csrf_token(owner), tx)
    assert finished.json() == {"redirect": "/account"}, finished.text
    (session,) = live_sessions(app, "alice")
    assert session.acr == "phr"


def test_a_recovery_session_has_no_grace(app: Starlette, browser: TestClient, clock: ManualClock) -> None:
    """The grace through a recovery: a recovery's session (not an invitation's) past the
    re-authentication age asks to add a passkey: refused like any stale session."""
    post_password(browser, link_id_of(confirmed(browser, issue(app, "alice", "recover"))))
    clock.advance(PAST_REAUTH)
    options = browser.post("/account/passkeys/options", json={"csrf_token": csrf_token(browser, "/account")})
    assert options.status_code in (401, 403), options.text
    assert passkeys_of(app, "alice") == []


# =================================================================================================
# reset: the second factor, the lock, the browser
# =================================================================================================


def test_a_reset_never_bypasses_a_passkey(app: Starlette, browser: TestClient) -> None:
    """A reset (the mailbox only) of a user whose second factor is a passkey: the new
    password alone must not sign in; the chain asks for the passkey."""
    give_passkey(app, "alice")
    done = post_password(browser, link_id_of(confirmed(browser, issue(app, "alice", "reset"))))
    assert done.status_code == 303 and done.headers["location"].startswith("/login/passkey?tx="), done.headers
    assert signed_in_as(app, browser) is None and live_sessions(app, "alice") == []


@pytest.mark.parametrize("kind", ["reset", "invite"])
def test_only_a_recovery_removes_factors(app: Starlette, browser: TestClient, clock: ManualClock, kind: Kind) -> None:
    """Factor removal smuggled into another kind: a reset's (or an invitation's) password form
    posted with remove_totp=yes and remove_passkeys=yes, as a recovery's is. Nothing is
    removed, and the chain still asks for the code."""
    username = "alice"
    if kind == "invite":
        add_invitee(app)
        username = "carol"
    enrol_totp(app, username, clock)
    give_passkey(app, username)
    uid = uid_of(app, username)

    done = post_password(
        browser,
        link_id_of(confirmed(browser, issue(app, username, kind))),
        remove_totp="yes",
        remove_passkeys="yes",
        remove_backup_codes="yes",
    )

    assert done.status_code == 303 and done.headers["location"] != "/account", done.headers
    with services(app).sessions() as db:
        assert db.scalar(select(TotpCredential.id).where(TotpCredential.user_id == uid)) is not None
    assert len(passkeys_of(app, username)) == 1
    assert signed_in_as(app, browser) is None


def test_a_reset_link_is_refused_in_another_browser_at_every_step(
    app: Starlette, browser: TestClient, attacker: TestClient
) -> None:
    """The reset link forwarded (or read off the mail by someone else) after alice confirmed
    it: the other browser is refused at the confirmation, the password page and the POST,
    and gets no cookie that signs in."""
    secret = issue(app, "alice", "reset")
    location = confirmed(browser, secret)

    assert post_confirm(attacker, secret).status_code == 403
    assert attacker.get(location).status_code == 403
    assert post_password(attacker, link_id_of(location), ATTACKER_PASSWORD).status_code == 403
    assert "idp_session" not in attacker.cookies
    assert has_password(app, "alice", PASSWORD) and link_row(app, secret).used_at is None


def test_a_reset_of_a_locked_account_with_a_second_factor_stays_locked(
    app: Starlette, browser: TestClient, clock: ManualClock
) -> None:
    """The lock and a reset: a locked account with an authenticator app. The reset sets the
    password, but the right code does not sign in while the lock lasts."""
    totp = enrol_totp(app, "alice", clock)
    with services(app).sessions.begin() as db:
        db.execute(update(User).where(User.username == "alice").values(locked_until=clock.now() + timedelta(hours=1)))
    done = post_password(browser, link_id_of(confirmed(browser, issue(app, "alice", "reset"))))
    clock.advance(30)
    if done.status_code == 303 and done.headers["location"].startswith("/login/totp"):
        answer = submit_code(browser, done.headers["location"], pyotp.TOTP(totp).at(clock.time()))
        assert answer.status_code == 401, answer.headers
    else:
        assert done.status_code == 401
    assert signed_in_as(app, browser) is None and live_sessions(app, "alice") == []


# =================================================================================================
# Forgot password?: nothing observable says which names are accounts
# =================================================================================================

_CSRF_VALUE = re.compile(r'(name="csrf_token" value=")[^"]*(")')
_REQUEST_ID = re.compile(r'(<code class="request-id-value">)[^<]*(</code>)')
_VOLATILE_HEADERS = {"date", "set-cookie", "x-request-id", "server-timing"}


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with smtp_server("plain") as server:
        yield server


@pytest.fixture
def mail_app(settings: Settings, clock: ManualClock, smtp: SmtpServer) -> Iterator[Starlette]:
    """Mail on: alice (verified address), bob (unverified), carol (disabled), dave (deleted)."""
    configured = dataclasses.replace(
        settings,
        smtp_url=smtp.url(starttls=False),
        mail_from="id@example.com",
        rate_limit_reset_ip="off",
        rate_limit_reset_account="off",
    )
    app = create_app(configured, store=MemoryStore(), clock=clock, mail_retry_delays_seconds=(0.01, 0.02))
    seed(app.state.services)
    with app.state.services.sessions.begin() as db:
        db.execute(update(User).where(User.username == "alice").values(email_verified=True))
        for name in ("carol", "dave"):
            add_user(db, username=name, email=f"{name}@example.com", name=name, password_hash=None, email_verified=True)
        db.execute(update(User).where(User.username == "carol").values(disabled=True))
        db.execute(update(User).where(User.username == "dave").values(deleted_at=clock.now()))
    yield app
    app.state.services.mail.close(5.0)


def observed(response: Any) -> tuple[Any, ...]:
    """Everything a requester sees of an answer, less what differs on every request anyway."""
    headers = sorted((k, v) for k, v in response.headers.items() if k not in _VOLATILE_HEADERS)
    cookies = sorted(c.split("=", 1)[0] for c in response.headers.get_list("set-cookie"))
    body = _REQUEST_ID.sub(r"\1…\2", _CSRF_VALUE.sub(r"\1…\2", response.text))
    return response.status_code, headers, cookies, body


@pytest.mark.parametrize("fresh_browser", [True, False], ids=["a fresh browser", "one browser asking again"])
def test_forgot_password_answers_every_name_alike(mail_app: Starlette, fresh_browser: bool) -> None:
    """Account enumeration through Forgot password?: the answer for a name with a verified
    address, an unverified one, a disabled or deleted account, no account, and the known
    name in another case must be the same: status, body, headers, the cookies set (names
    and count), no redirect; and the requester's browser is bound to nothing."""
    names = ["alice", "bob", "carol", "dave", "nobody", "ALICE", "alice@example.com"]
    seen: dict[str, tuple[Any, ...]] = {}
    with TestClient(mail_app, base_url=ISSUER) as client:  # one app lifetime: the outbox keeps running
        for name in names:
            if fresh_browser:
                client.cookies.clear()
            csrf = form_value(client.get("/login/forgot").text, "csrf_token")
            answer = client.post("/login/forgot", data={"csrf_token": csrf, "username": name}, follow_redirects=False)
            assert "idp_login" not in client.cookies and "idp_session" not in client.cookies
            seen[name] = observed(answer)
        assert mail_app.state.services.mail.wait_idle(10.0)
    reference = seen["alice"]
    assert reference[0] == 200
    for name in names:
        assert seen[name] == reference, f"Forgot password? answers {name!r} differently from a real account"
    with mail_app.state.services.sessions() as db:
        issued = list(db.scalars(select(OneTimeLink)))
    assert [(link.kind, link.browser, link.confirmed_at) for link in issued] == [("reset", None, None)] * 2
    assert {link.user_id for link in issued} == {uid_of(mail_app, "alice")}, "a link for anyone but alice"


def test_forgot_password_reflects_nothing_executable(mail_app: Starlette) -> None:
    """The tx parameter Forgot password? carries back to /login is attacker-chosen: it must
    come back escaped (no markup, no attribute break-out), in the form and in the link."""
    evil = '"><script>alert(1)</script><a href="javascript:x'
    with TestClient(mail_app, base_url=ISSUER) as client:
        page = client.get("/login/forgot", params={"tx": evil})
        posted = client.post(
            "/login/forgot",
            data={"csrf_token": form_value(page.text, "csrf_token"), "username": "alice", "tx": evil},
        )
    for response in (page, posted):
        assert response.status_code == 200
        assert "<script>alert(1)" not in response.text and 'href="javascript:' not in response.text


def test_a_reset_request_alone_changes_nothing_for_the_account(mail_app: Starlette) -> None:
    """A stranger asks Forgot password? for alice while she is signed in: until the mailed
    link is used, her password, her session and her sign-in stay as they were."""
    with TestClient(mail_app, base_url=ISSUER) as alice, TestClient(mail_app, base_url=ISSUER) as stranger:
        assert sign_in(alice).status_code == 303
        csrf = form_value(stranger.get("/login/forgot").text, "csrf_token")
        for _ in range(3):
            assert stranger.post("/login/forgot", data={"csrf_token": csrf, "username": "alice"}).status_code == 200
        assert alice.get("/account").status_code == 200
        assert has_password(mail_app, "alice", PASSWORD) and len(live_sessions(mail_app, "alice")) == 1
        assert sign_in(stranger, password=PASSWORD).status_code == 303  # the password still signs in
        assert mail_app.state.services.mail.wait_idle(10.0)


_MAILED_LINK = re.compile(re.escape(ISSUER) + r"/link\?t=([A-Za-z0-9_-]+)")


def test_links_mailed_to_the_old_address_die_when_it_changes(mail_app: Starlette, smtp: SmtpServer) -> None:
    """The old mailbox keeps a link: alice's mailbox was taken over, so the admin changes her
    address. Whoever reads the old mailbox holds a reset link (Forgot password?, asked for
    by that reader) and an admin's recovery link, both mailed there. Both must die with the
    address (update_user revokes "every open link mailed to another address, whatever its
    kind"), as a mailed invitation does."""
    from idp.cli_links import _issue_for

    svc = services(mail_app)
    with TestClient(mail_app, base_url=ISSUER) as reader:
        csrf = form_value(reader.get("/login/forgot").text, "csrf_token")
        assert reader.post("/login/forgot", data={"csrf_token": csrf, "username": "alice"}).status_code == 200
        assert svc.mail.wait_idle(10.0)
        (mail,) = smtp.wait_for(1)
        assert mail.rcpt_tos == ("alice@example.com",)
        reset = _MAILED_LINK.search(mail.part("text/plain")).group(1)  # type: ignore[union-attr]
        with svc.sessions.begin() as db:
            user = db.scalar(select(User).where(User.username == "alice"))
            handover = _issue_for(svc.settings, db, svc.keyring, user, "recover", lifetime=None, asked_to_print=False)
        assert handover.to == "alice@example.com", "the admin's recovery link is mailed to the old address"
        recovery = handover.issued.secret

        with svc.sessions.begin() as db:
            update_user(db, "alice", UserChanges(email="alice@new.example"), keyring=svc.keyring)

        alive = {
            name: reader.get(f"/link?t={secret}").status_code
            for name, secret in (("reset", reset), ("recover", recovery))
        }
    assert alive == {"reset": 410, "recover": 410}, (
        f"links mailed to alice's old address still answer {alive} after it changed: the Forgot password? "
        f"reset (records.issue_if_reachable) and the CLI's mailed recovery (cli_links._issue_for) record no "
        f"`email`, and records.revoke_sent_to_old_address keeps every link without one ('printed')"
    )


# =================================================================================================
# the verification link
# =================================================================================================


def set_email(app: Starlette, username: str, email: str, *, verified: bool = False) -> None:
    with services(app).sessions.begin() as db:
        db.execute(update(User).where(User.username == username).values(email=email, email_verified=verified))


def test_a_verification_link_cannot_take_an_address_another_account_verified(
    app: Starlette, browser: TestClient
) -> None:
    """Address theft by verification: alice has alice@example.com verified; bob's address on
    file is set to the same (in another case) and a verification link is sent for it. Its
    use must verify nothing for bob (a verified address is one user's), and never a 500."""
    set_email(app, "alice", "alice@example.com", verified=True)
    set_email(app, "bob", "Alice@Example.COM")
    secret = issue(app, "bob", "verify", email="Alice@Example.COM")

    answer = post_confirm(browser, secret)

    assert answer.status_code == 410, answer.status_code
    assert not user_row(app, "bob").email_verified and user_row(app, "alice").email_verified


@pytest.mark.parametrize("kind", ["verify", "invite"])
def test_a_link_cannot_verify_a_deleted_users_retired_address(app: Starlette, browser: TestClient, kind: Kind) -> None:
    """Address reuse after deletion: alice (address verified) is deleted, which retires her
    address so that no one is given it again (an RP linking accounts by verified email would
    hand the new holder alice's data). Whoever now controls that mailbox gets an account
    with it on file (unverified: the admin may set that), then a verification link or an
    invitation mailed to it. Using the link must not verify the retired address: the admin's
    own `idp user set --email-verified` refuses it."""
    from idp.user_lifecycle import delete_user

    set_email(app, "alice", "alice@example.com", verified=True)
    svc = services(app)
    with svc.sessions.begin() as db:
        delete_user(db, svc.keyring, "alice", allow_reuse=False)
    username = "bob"
    if kind == "invite":
        username = "mallory"
        with svc.sessions.begin() as db:
            add_user(db, username=username, email=None, name="M", password_hash=None)
    with svc.sessions.begin() as db:
        update_user(db, username, UserChanges(email="alice@example.com"), keyring=svc.keyring)
    secret = issue(app, username, kind, email="alice@example.com")

    answer = post_confirm(browser, secret)
    if kind == "invite":
        post_password(browser, link_id_of(answer.headers["location"]))

    assert not user_row(app, username).email_verified, (
        f"the {kind} link verified alice@example.com for {username}, an address retired when alice was deleted: "
        f"redeem._verify_address checks only live users holding the address verified, never "
        f"retired_names.is_retired (users._check_verified_address_free does)"
    )


def test_get_and_head_of_a_valid_link_change_nothing(app: Starlette, browser: TestClient) -> None:
    """Mail scanners and link previews: GET and HEAD of every kind's valid link (a
    verification's too) bind nothing, use nothing, verify nothing, and spend nothing."""
    add_invitee(app)
    secrets = {
        "invite": issue(app, "carol", "invite"),
        "recover": issue(app, "alice", "recover"),
        "reset": issue(app, "bob", "reset"),
        "verify": issue(app, "bob", "verify", email="bob@example.com"),
    }
    for kind, secret in secrets.items():
        for method in ("GET", "HEAD"):
            response = browser.request(method, f"/link?t={secret}")
            assert response.status_code == 200, (kind, method, response.status_code)
        assert row_state(app, secret) == (None, None, None, None, None), kind
    assert not user_row(app, "bob").email_verified and not user_row(app, "carol").email_verified
    assert audits(app, "link.confirmed") == [] and audits(app, "link.used") == []


def test_a_verification_links_id_opens_no_password_page(app: Starlette, browser: TestClient) -> None:
    """Kind confusion: a used verification link's id on /link/password (GET and POST) sets no
    password."""
    secret = issue(app, "bob", "verify", email="bob@example.com")
    assert post_confirm(browser, secret).status_code == 200
    link_id = link_row(app, secret).link_id
    assert browser.get(f"/link/password?l={link_id}").status_code in (403, 404, 410)
    assert post_password(browser, link_id, ATTACKER_PASSWORD).status_code in (403, 404, 410)
    assert has_password(app, "bob", PASSWORD)


def test_two_accounts_racing_to_verify_one_address(
    app: Starlette, browsers: Callable[[], TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two accounts with the same unverified address, each with a verification link, confirmed
    at the same instant (both past their link's use, neither committed). At most one is
    verified, and the loser is refused with a page, never a 500."""
    add_invitee(app, "carol", "shared@example.com")
    set_email(app, "bob", "shared@example.com")
    secrets = [
        issue(app, "bob", "verify", email="shared@example.com"),
        issue(app, "carol", "verify", email="shared@example.com"),
    ]
    pair = [browsers(), browsers()]
    tokens = [form_value(b.get(f"/link?t={s}").text, "csrf_token") for b, s in zip(pair, secrets, strict=True)]
    meet = threading.Barrier(2)
    original = redeem._verify_address

    def both_here(*args: Any, **kwargs: Any) -> bool:
        try:
            meet.wait(2)
        except threading.BrokenBarrierError:
            pass  # the database serialized the two (SQLite's one writer): no overlap to force
        return original(*args, **kwargs)

    monkeypatch.setattr(redeem, "_verify_address", both_here)
    answers = post_together(pair, "/link", [{"csrf_token": tokens[i], "t": secrets[i]} for i in range(2)])

    verified = [user_row(app, name).email_verified for name in ("bob", "carol")]
    statuses = sorted(a.status_code for a in answers)
    assert verified.count(True) <= 1
    assert statuses == [200, 410], (
        f"two verification links racing for one address answered {statuses}: the loser should be refused "
        f"(410, its link left unspent), not a 500 from the uq_users_verified_email index that "
        f"redeem._verify_address's check-then-set does not handle"
    )


# =================================================================================================
# the invitation's grace: one credential, for the invitation's own session, for 15 minutes
# =================================================================================================


def invited_session(app: Starlette, client: TestClient) -> None:
    """carol, invited (no password yet), chooses one: her session is the invitation's."""
    add_invitee(app)
    done = post_password(client, link_id_of(confirmed(client, issue(app, "carol", "invite"))))
    assert done.status_code == 303 and done.headers["location"] == "/account", done.headers
    assert signed_in_as(app, client) == "carol"


def account_options(client: TestClient) -> Any:
    return client.post("/account/passkeys/options", json={"csrf_token": csrf_token(client, "/account")})


def account_register(client: TestClient, options: dict[str, Any], name: str) -> Any:
    return client.post(
        "/account/passkeys",
        json={
            "csrf_token": csrf_token(client, "/account"),
            "challenge_id": options["challenge_id"],
            "credential": SoftAuthenticator().create(options["publicKey"]),
            "name": name,
        },
    )


def test_the_grace_adds_one_credential_even_with_two_challenges_in_hand(
    app: Starlette, browser: TestClient, clock: ManualClock
) -> None:
    """Two credentials in the grace, one after the other: carol's invitation session (past the
    re-authentication age) asks for two registration challenges before using either, then
    registers both. Only the first may be added."""
    invited_session(app, browser)
    clock.advance(PAST_REAUTH)
    first, second = account_options(browser), account_options(browser)
    assert first.status_code == 200 and second.status_code == 200

    assert account_register(browser, first.json(), "One").status_code == 200
    refused = account_register(browser, second.json(), "Two")

    assert refused.status_code in (401, 403), refused.text
    assert [p.name for p in passkeys_of(app, "carol")] == ["One"]


def test_the_grace_adds_one_credential_when_two_requests_race(
    app: Starlette, browser: TestClient, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two credentials in the grace, at once: two registrations of carol's invitation session
    (two tabs, or whoever holds the fresh cookie) arrive together: the second is admitted
    after the first passed its re-authentication check and before it stored its passkey.
    Only one credential may come of the grace."""
    import idp.account.passkeys as account_passkeys
    import idp.account.reauth as reauth

    invited_session(app, browser)
    clock.advance(PAST_REAUTH)
    first, second = account_options(browser).json(), account_options(browser).json()
    admit = reauth.admit
    raced: list[Any] = []

    def admitted_then_raced(svc: Any, caller: Any, action: Any = None) -> Any:
        who = admit(svc, caller, action)
        if action is reauth.PASSKEY_REGISTER and not raced:
            raced.append(action)
            try:  # the other request, admitted meanwhile and stored first
                account_passkeys.register(
                    svc,
                    caller,
                    {
                        "challenge_id": second["challenge_id"],
                        "credential": SoftAuthenticator().create(second["publicKey"]),
                        "name": "Two",
                    },
                )
                raced.append("stored")
            except Exception as refusal:  # noqa: BLE001 - refused: what the safe outcome is
                raced.append(refusal)
        return who

    monkeypatch.setattr(reauth, "admit", admitted_then_raced)
    answer = account_register(browser, first, "One")
    monkeypatch.undo()

    names = sorted(p.name for p in passkeys_of(app, "carol"))
    assert len(names) <= 1, (
        f"two racing registrations in carol's invitation grace (past reauth_seconds) both stored a passkey "
        f"{names} (first answered {answer.status_code}): reauth.admit() checks link_records.in_grace() in its own "
        f"unit of work and the passkey is stored in another, so 'no credential added since the session began' "
        f"is checked before either writes (a time-of-check/time-of-use gap)"
    )


def test_a_session_not_started_by_the_invitation_has_no_grace(
    app: Starlette, browsers: Callable[[], TestClient], clock: ManualClock
) -> None:
    """The grace moved to another session: carol finishes her invitation in one browser, then
    signs in with her new password in another (or a stolen cookie's copy would be; the
    grace is the invitation's session's, not the user's). Past the re-authentication age
    the other session is refused."""
    mine, other = browsers(), browsers()
    invited_session(app, mine)
    assert sign_in(other, "carol", NEW_PASSWORD).status_code == 303
    clock.advance(PAST_REAUTH)

    assert account_options(other).status_code in (401, 403)
    assert account_options(mine).status_code == 200
    assert passkeys_of(app, "carol") == []


def test_the_grace_does_not_survive_a_reset_session(app: Starlette, browser: TestClient, clock: ManualClock) -> None:
    """The grace by a reset: Forgot password? then its link's sign-in, past the
    re-authentication age: no credential without signing in again."""
    assert post_password(browser, link_id_of(confirmed(browser, issue(app, "alice", "reset")))).status_code == 303
    clock.advance(PAST_REAUTH)
    assert account_options(browser).status_code in (401, 403)


def test_the_grace_ends_after_fifteen_minutes(app: Starlette, browser: TestClient, clock: ManualClock) -> None:
    """The grace, late: carol's invitation session asks for its one credential at minute 15."""
    invited_session(app, browser)
    clock.advance(records.GRACE.total_seconds())
    assert account_options(browser).status_code in (401, 403)
    assert passkeys_of(app, "carol") == []


# =================================================================================================
# input: garbled, oversized, repeated, the wrong method; never a 500
# =================================================================================================

GARBLED_SECRETS = [
    "",
    " ",
    "A" * 39,
    "A" * 65,
    "A" * 5000,
    "\u00e4" * 43,
    "\uff21" * 43,  # fullwidth A: no ASCII class in Unicode disguise
    "\u0661" * 43,  # Arabic-Indic digits
    "A" * 42 + "\n",
    "A" * 42 + "\x00",
    "../../etc/passwd",
    "%00" * 20,
    "\ud800" * 43,
]
GARBLED_IDS = [
    "",
    "ABCDEF123456",
    "abcdef12345",
    "abcdef1234567",
    "\uff11" * 12,
    "a" * 5000,
    "abcdef12345\n",
    "' OR 1=1 --",
]


def assert_private(response: Any) -> None:
    assert response.headers.get("referrer-policy") == "no-referrer", (response.request.url, response.headers)
    assert "no-store" in response.headers.get("cache-control", ""), (response.request.url, response.headers)


def test_garbled_secrets_and_link_ids_are_refused_never_a_500(app: Starlette, browser: TestClient) -> None:
    """Fuzzed `t` and `l`: empty, short, long, oversized, non-ASCII look-alikes, control
    characters, lone surrogates, SQL. Every answer is a refusal page (never a 500) that
    sends no referrer and is not stored."""
    csrf = csrf_of(browser)
    for value in GARBLED_SECRETS:
        raw = value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        for response in (
            browser.get("/link", params={"t": raw}),
            browser.post("/link", data={"csrf_token": csrf, "t": raw}, follow_redirects=False),
        ):
            assert response.status_code in (400, 404), (repr(value[:20]), response.status_code)
            assert_private(response)
    for value in GARBLED_IDS:
        for response in (
            browser.get("/link/password", params={"l": value}),
            browser.post(
                "/link/password",
                data={"csrf_token": csrf, "l": value, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD},
                follow_redirects=False,
            ),
        ):
            assert response.status_code in (400, 404), (repr(value[:20]), response.status_code)
            assert_private(response)


def test_raw_malformed_bodies_are_refused_never_a_500(app: Starlette, browser: TestClient) -> None:
    """Hand-made bodies: a repeated `t` (the valid one and another), invalid UTF-8, the wrong
    content type, JSON, no body: refused, the valid link untouched."""
    secret = issue(app, "alice", "reset")
    csrf = csrf_of(browser)
    bodies = [
        (f"csrf_token={csrf}&t={secret}&t={'B' * 43}".encode(), "application/x-www-form-urlencoded"),
        (f"csrf_token={csrf}&t=".encode() + b"\xff\xfe" * 22, "application/x-www-form-urlencoded"),
        (f"csrf_token={csrf}&t={secret}".encode(), "text/plain"),
        (json.dumps({"csrf_token": csrf, "t": secret}).encode(), "application/json"),
        (b"", "application/x-www-form-urlencoded"),
    ]
    for path in ("/link", "/link/password"):
        for body, content_type in bodies:
            response = browser.post(path, content=body, headers={"content-type": content_type}, follow_redirects=False)
            assert response.status_code in (400, 403, 404), (path, body[:40], response.status_code)
            assert_private(response)
    assert row_state(app, secret) == (None, None, None, None, None)


def test_a_missing_or_foreign_csrf_token_changes_nothing(
    app: Starlette, browser: TestClient, attacker: TestClient
) -> None:
    """Cross-site posting: the confirmation and the password form posted without a CSRF token,
    or with the attacker's own (valid for the attacker's cookie, not the victim's). Refused;
    the link stays unconfirmed, then unused."""
    secret = issue(app, "alice", "reset")
    foreign = csrf_of(attacker)
    browser.get(f"/link?t={secret}")
    for data in ({"t": secret}, {"t": secret, "csrf_token": foreign}):
        refused = browser.post("/link", data=data, follow_redirects=False)
        assert refused.status_code == 403
        assert_private(refused)
    assert row_state(app, secret) == (None, None, None, None, None)

    location = confirmed(browser, secret)
    typed = {"l": link_id_of(location), "new_password": ATTACKER_PASSWORD, "confirm_password": ATTACKER_PASSWORD}
    for data in (typed, {**typed, "csrf_token": foreign}):
        refused = browser.post("/link/password", data=data, follow_redirects=False)
        assert refused.status_code == 403
        assert_private(refused)
    assert link_row(app, secret).used_at is None and has_password(app, "alice", PASSWORD)


def test_other_methods_are_refused_and_change_nothing(app: Starlette, browser: TestClient) -> None:
    """PUT, PATCH, DELETE and OPTIONS with a valid secret or link id: 405 (never a 500, never
    a change), with the link pages' headers; HEAD is a GET without a body."""
    secret = issue(app, "alice", "reset")
    location = confirmed(browser, secret)
    before = row_state(app, secret)
    for method in ("PUT", "PATCH", "DELETE", "OPTIONS"):
        for url, body in ((f"/link?t={secret}", {"t": secret}), (location, {"l": link_id_of(location)})):
            response = browser.request(method, url, data=body)
            assert response.status_code == 405, (method, url, response.status_code)
            assert_private(response)
    head = browser.head(location)
    assert head.status_code == 200 and head.content == b""
    assert_private(head)
    assert row_state(app, secret) == before and has_password(app, "alice", PASSWORD)


# =================================================================================================
# headers: every /link answer, success or refusal
# =================================================================================================


def test_every_link_answer_sends_no_referrer_and_is_not_stored(
    app: Starlette, browser: TestClient, attacker: TestClient, clock: ManualClock
) -> None:
    """The secret is in the URL: every /link answer (the confirmation page, its POST, the
    password page, its errors, the 410 of a spent link, the 403 of another browser, the 400
    of a weak password, the hand-over to the chain) carries Referrer-Policy: no-referrer and
    Cache-Control: no-store."""
    add_invitee(app)
    enrol_totp(app, "alice", clock)
    seen: list[Any] = []
    secret = issue(app, "alice", "reset")
    seen.append(browser.get(f"/link?t={secret}"))
    seen.append(browser.head(f"/link?t={secret}"))
    seen.append(post_confirm(browser, secret))
    location = seen[-1].headers["location"]
    seen.append(browser.get(location))
    seen.append(attacker.get(location))
    seen.append(post_confirm(attacker, secret))
    seen.append(post_password(browser, link_id_of(location), "short"))
    seen.append(post_password(browser, link_id_of(location), NEW_PASSWORD, confirm_password="mismatch mismatch"))
    seen.append(post_password(browser, link_id_of(location)))  # handed over to the code step
    seen.append(browser.get(f"/link?t={secret}"))
    seen.append(post_confirm(browser, secret))
    seen.append(browser.get(location))
    seen.append(browser.get("/link?t=" + "B" * 43))
    invite = issue(app, "carol", "invite")
    seen.append(post_confirm(browser, invite))
    seen.append(post_password(browser, link_id_of(seen[-1].headers["location"])))  # signed in: the session cookie
    alice_invite = issue(app, "alice", "invite")
    seen.append(post_confirm(attacker, alice_invite))  # an account with a password: on to /login?tx=
    clock.advance(records.LIFETIMES["reset"].total_seconds() + 1)
    seen.append(browser.get(f"/link?t={issue(app, 'bob', 'reset')}"))
    for response in seen:
        assert_private(response)


# =================================================================================================
# the failure budget: guessing links
# =================================================================================================


@pytest.fixture
def budget_app(settings: Settings, clock: ManualClock) -> Starlette:
    """The failure budget on: 5 refused links (or wrong passwords) an hour per client IP."""
    app = create_app(
        dataclasses.replace(settings, rate_limit_login_failures_ip="5/hour"), store=MemoryStore(), clock=clock
    )
    seed(app.state.services)
    return app


def test_guessing_secrets_by_post_spends_the_budget(budget_app: Starlette) -> None:
    """Brute force on the confirmation: wrong secrets POSTed until the budget is spent: the
    next POST, even with the right secret, gets the too-many page (429, the link pages'
    headers) and confirms nothing."""
    secret = issue(budget_app, "alice", "reset")
    with TestClient(budget_app, base_url=ISSUER) as client:
        for _ in range(5):
            assert post_confirm(client, "B" * 43).status_code == 404
        refused = post_confirm(client, secret)
    assert refused.status_code == 429, refused.status_code
    assert_private(refused)
    assert row_state(budget_app, secret) == (None, None, None, None, None)


def test_a_client_over_its_budget_gets_no_answer_about_links(budget_app: Starlette) -> None:
    """The GET oracles: GET /link?t= answers 200 for a valid secret and 404 for a wrong one;
    GET /link/password?l= answers 403, 410 or 404 by the state of the link with that id.
    Each refusal spends the client's failure budget, so a client past it must get the
    too-many page on these GETs too, not a free oracle for further guesses."""
    secret = issue(budget_app, "alice", "reset")
    with TestClient(budget_app, base_url=ISSUER) as owner, TestClient(budget_app, base_url=ISSUER) as guesser:
        location = confirmed(owner, secret)
        for _ in range(6):
            guesser.get("/link?t=" + "B" * 43)
        assert post_confirm(guesser, "C" * 43).status_code == 429, "the budget is spent"
        by_secret = guesser.get(f"/link?t={secret}")
        by_id = guesser.get(location)
    assert (by_secret.status_code, by_id.status_code) == (429, 429), (
        f"a client past its failure budget still learns that a secret is valid (GET /link answered "
        f"{by_secret.status_code}) and the state of another browser's link (GET /link/password answered "
        f"{by_id.status_code}): web/links.py show_confirmation and show_password spend the budget on a "
        f"refusal but never check it (only the POSTs call _admitted)"
    )
