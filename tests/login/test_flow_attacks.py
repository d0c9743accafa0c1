"""Attacks on every state transition of the login flow (idp/login/flow.py: LoginFlow.page,
submit, challenge, where_next, step_for, and the finish), over HTTP, one cookie jar per
browser. For each piece of state (a transaction, its step list, the finish marker, a passkey
challenge, the session and binding cookies, a TOTP step, a backup code, the enrolment's
pending secret, the lockout counter) a test asks who else could present it, from which
browser, in which order, and twice.

Each test pins a defence. Ten of them were written failing, by a review of the new flow,
and pass since their fixes: a step-up bound to the cookie value it began from, a refused
finish that rolls back its step's writes, the enrolment page never showing another chain's
pending secret nor failing after a double submit, a stale step-up asking for the password
before enrolment, phantom counters for unregistered passkey credentials, short-lived
transactions from passkey options, unmet step-ups answered at once, and no 500 for hostile
usernames or credentials."""

from __future__ import annotations

import html
import inspect
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.app import create_app
from idp.db.models import AuditEvent, IdpSession, TotpCredential, User
from idp.login.transaction import find_transaction
from idp.mfa import backup_codes
from idp.mfa.passkeys import CHALLENGE_TTL_SECONDS
from idp.settings import Settings
from idp.state.memory import MemoryStore
from tests.conftest import ISSUER
from tests.login.test_chain import error_of, user_id
from tests.login.test_lockout import comparable
from tests.login.test_passkey_login import (
    csrf_token,
    passkey_ceremony,
    password_sign_in_to_account,
    register_on_account,
    sign_in_options,
    with_passkey,
)
from tests.login.test_transaction_binding import (
    login_page_url,
    post_password,
    require_mfa_for_shop,
    sets_session,
    tx_of,
)
from tests.support.argon2_calls import count_verifications
from tests.support.authenticator import SoftAuthenticator
from tests.support.rp import SHOP_REDIRECT, AuthRequest, query_of, start
from tests.support.seed import PASSWORD, seed

WRONG = "not the password at all"
EXPIRED = "This sign-in request has expired or was already used."
SIGN_IN_FAILED = "That passkey could not sign you in."
try:  # the app's manual clock starts there (tests/support/clock.py): a TOTP step boundary plus 20 s
    from tests.support.clock import START

    T0 = START.timestamp()
except ImportError:  # before the clock was injected: the second factors' own clock is pinned there
    T0 = 1_900_000_020.0
SECRET_ON_PAGE = re.compile(r'data-totp-secret="([A-Z2-7]+)"')
CODES_ON_PAGE = re.compile(r"\b[A-Z0-9]{4}-[A-Z0-9]{4}\b")


# ---- time: the app's clock (injected) or, before that lands, the second factors' own ----------


def app_time(client: TestClient) -> float:
    services = client.app.state.services  # type: ignore[attr-defined]
    clock = getattr(services, "clock", None)
    if clock is not None:
        return float(clock.time())
    return float(services.factors.clock())


def app_now(client: TestClient) -> datetime:
    clock = getattr(client.app.state.services, "clock", None)  # type: ignore[attr-defined]
    return clock.now() if clock is not None else datetime.now(UTC)  # type: ignore[no-any-return]


def use_time(client: TestClient, at: float) -> float:
    """Pins the time the code checks see (the app's manual clock, or the factors' clock)."""
    services = client.app.state.services  # type: ignore[attr-defined]
    clock = getattr(services, "clock", None)
    if clock is not None and hasattr(clock, "set"):
        clock.set(at)
    else:
        services.factors.clock = lambda: at
    return at


def next_code(client: TestClient, secret: str) -> str:
    """A code of the next time step (each step is accepted once)."""
    return pyotp.TOTP(secret).at(use_time(client, app_time(client) + 30))


# ---- the user's factors and state, straight from the database -----------------------------------


def enrol_totp(client: TestClient, username: str = "alice") -> str:
    """A confirmed authenticator, as /account would leave it; the secret."""
    services = client.app.state.services  # type: ignore[attr-defined]
    uid = user_id(client, username)
    with services.sessions.begin() as db:
        secret = services.factors.begin_totp(db, uid)
        assert services.factors.confirm_totp(db, uid, pyotp.TOTP(secret).at(app_time(client))).ok
    return str(secret)


def give_backup_codes(client: TestClient, username: str = "alice") -> list[str]:
    services = client.app.state.services  # type: ignore[attr-defined]
    codes = backup_codes.generate()
    hashed = [(code, services.hashing.hash(code)) for code in codes]
    uid = user_id(client, username)
    with services.sessions.begin() as db:
        services.factors.replace_backup_codes(db, uid, hashed)
    return codes


def backup_codes_left(client: TestClient, username: str = "alice") -> int:
    services = client.app.state.services  # type: ignore[attr-defined]
    uid = user_id(client, username)
    with services.sessions() as db:
        return int(services.factors.backup_codes_left(db, uid))


def totp_row(client: TestClient, username: str = "alice") -> TotpCredential | None:
    uid = user_id(client, username)
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        row = db.scalar(select(TotpCredential).where(TotpCredential.user_id == uid))
        if row is not None:
            db.expunge(row)
        return row


def has_totp(client: TestClient, username: str = "alice") -> bool:
    row = totp_row(client, username)
    return row is not None and row.confirmed_at is not None


def user_row(client: TestClient, username: str) -> User:
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        user = db.scalar(select(User).where(User.username == username))
        assert user is not None
        db.expunge(user)
        return user


def lock(client: TestClient, username: str) -> None:
    settings, now = client.app.state.services.settings, app_now(client)  # type: ignore[attr-defined]
    with client.app.state.services.sessions.begin() as db:  # type: ignore[attr-defined]
        db.execute(
            update(User)
            .where(User.username == username)
            .values(
                failed_logins=settings.lockout_attempts,
                failures_since=now,
                locked_until=now + timedelta(seconds=settings.lockout_seconds),
            )
        )


def is_locked(client: TestClient, username: str) -> bool:
    until = user_row(client, username).locked_until
    return until is not None and until > app_now(client)


def disable(client: TestClient, username: str) -> None:
    with client.app.state.services.sessions.begin() as db:  # type: ignore[attr-defined]
        db.execute(update(User).where(User.username == username).values(disabled=True))


def live_sessions(client: TestClient, username: str) -> list[IdpSession]:
    uid = user_id(client, username)
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        rows = list(db.scalars(select(IdpSession).where(IdpSession.user_id == uid, IdpSession.ended_at.is_(None))))
        for row in rows:
            db.expunge(row)
        return rows


def audit_count(client: TestClient, kind: str) -> int:
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        return len(db.scalars(select(AuditEvent.id).where(AuditEvent.kind == kind)).all())


# ---- the browser -----------------------------------------------------------------------------------


def post_step(browser: TestClient, step: str, tx: str | None, **fields: str) -> Any:
    """A step's form, with this browser's CSRF token (no `tx` field when tx is None)."""
    data = {"csrf_token": csrf_token(browser), **fields}
    if tx is not None:
        data["tx"] = tx
    return browser.post(f"/login/{step}", data=data, follow_redirects=False)


def post_login(browser: TestClient, username: str, password: str = PASSWORD) -> Any:
    """The login form without a transaction (signing in to idp itself)."""
    return browser.post(
        "/login",
        data={"csrf_token": csrf_token(browser), "username": username, "password": password},
        follow_redirects=False,
    )


def at_code_step(browser: TestClient, username: str = "alice", request: AuthRequest | None = None) -> str:
    """A transaction of this browser whose password step passed; its id."""
    tx = tx_of(login_page_url(browser, request))
    response = post_password(browser, tx, username)
    assert response.status_code == 303 and response.headers["location"].startswith("/login/"), response.text[:300]
    return tx


def location_of(response: Any) -> str:
    return str(response.headers.get("location", ""))


def step_up(browser: TestClient, acr: str | None = None) -> Any:
    extra = {"acr_values": acr} if acr else {}
    return start(browser, AuthRequest(extra=extra))


def return_link(page: str) -> str | None:
    match = re.search(r'<a class="button" href="([^"]+)">Return to the application</a>', page)
    return html.unescape(match.group(1)) if match else None


def without_noise(page: str) -> str:
    """A page minus what differs on every request: the CSRF token and the request id."""
    page = re.sub(r'(name="csrf_token" value=|data-passkey-csrf=)"[^"]*"', r'\1"*"', page)
    return re.sub(r'<code class="request-id-value">[^<]*</code>', "<code>*</code>", page)


def concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Runs each call in its own thread, released together; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


class HeldRequest:
    """A request sent in the background and held at its first call of hashing.<method>
    (made in its worker thread, after its reads and before its write transaction) until
    `release()`: the request that loses a race, parked at the worst moment while another
    one runs to the end."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hashing: Any, method: str, send: Callable[[], Any]) -> None:
        self.entered, self.released = threading.Event(), threading.Event()
        self.response: Any = None
        original, first, guard = getattr(hashing, method), [True], threading.Lock()

        def held(*args: Any, **kwargs: Any) -> Any:
            with guard:
                hold, first[0] = first[0], False
            if hold:
                self.entered.set()
                self.released.wait(30)
            return original(*args, **kwargs)

        monkeypatch.setattr(hashing, method, held)

        def run() -> None:
            self.response = send()

        self.thread = threading.Thread(target=run)
        self.thread.start()
        assert self.entered.wait(30), "the held request never reached its Argon2 work"

    def release(self) -> Any:
        self.released.set()
        self.thread.join(60)
        return self.response


@pytest.fixture
def browsers(app: Starlette) -> Iterator[Callable[..., TestClient]]:
    """More browsers for the app; `like=` copies another's cookies (the same browser: a second
    tab or a double-click); `tolerant=True` answers a server error with a 500 response."""
    with ExitStack() as stack:

        def open_browser(*, like: TestClient | None = None, tolerant: bool = False) -> TestClient:
            browser = stack.enter_context(TestClient(app, base_url=ISSUER, raise_server_exceptions=not tolerant))
            for name, value in like.cookies.items() if like is not None else []:
                browser.cookies.set(name, value)
            return browser

        yield open_browser


def build_app(settings: Settings, store: MemoryStore | None = None, **overrides: object) -> Starlette:
    kwargs: dict[str, Any] = {}
    if "clock" in inspect.signature(create_app).parameters:  # the injected clock, once it is there
        from tests.support.clock import ManualClock  # type: ignore[import-not-found,unused-ignore]

        kwargs["clock"] = ManualClock()
    app = create_app(replace(settings, **overrides), store=store if store is not None else MemoryStore(), **kwargs)
    seed(app.state.services)
    return app


@pytest.fixture
def app_with(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """A browser on a seeded app with some settings replaced (e.g. a rate limit turned on)."""
    with ExitStack() as stack:

        def make(store: MemoryStore | None = None, **overrides: object) -> TestClient:
            return stack.enter_context(TestClient(build_app(settings, store, **overrides), base_url=ISSUER))

        yield make


# ==== _accepts: which step may be posted when ============================================================


def test_code_steps_posted_before_any_user_is_named_are_refused_unchecked(client, monkeypatch):
    use_time(client, T0)
    enrol_totp(client)
    codes = give_backup_codes(client)
    used_step = totp_row(client).last_used_step  # type: ignore[union-attr]
    tx = tx_of(login_page_url(client))
    calls: list[Any] = []
    count_verifications(monkeypatch, client.app.state.services.hashing, calls)
    attempts = {"totp": {"code": "123456"}, "backup_code": {"backup_code": codes[0]}, "enrol_totp": {"code": "1"}}
    for step, fields in attempts.items():
        for on in (tx, None):  # the parked request's transaction, and none at all
            posted = post_step(client, step, on, **fields)
            assert posted.status_code == 400 and not sets_session(posted), (step, on)
        assert client.get(f"/login/{step}?tx={tx}").status_code == 400
        assert client.get(f"/login/{step}").status_code == 400
    assert calls == [] and backup_codes_left(client) == 10
    assert user_row(client, "alice").failed_logins == 0 and totp_row(client).last_used_step == used_step  # type: ignore[union-attr]


def test_codes_posted_on_a_step_up_to_phr_are_refused_and_spend_nothing(client):
    """alice holds TOTP, backup codes and a passkey; her session is mfa. A step-up to phr
    accepts only the passkey: her right code and backup code are refused unchecked."""
    authenticator = SoftAuthenticator()
    use_time(client, T0)
    password_sign_in_to_account(client)
    register_on_account(client, authenticator)  # before TOTP: a password session may add it then
    secret = enrol_totp(client)
    codes = give_backup_codes(client)
    client.cookies.clear()
    tx = at_code_step(client)
    assert post_step(client, "totp", tx, code=next_code(client, secret)).status_code == 303  # an mfa session

    stepped = step_up(client, "phr")
    assert location_of(stepped).startswith("/login/passkey?tx=")
    tx = tx_of(location_of(stepped))
    code = next_code(client, secret)
    attempts = {"totp": {"code": code}, "backup_code": {"backup_code": codes[0]}, "enrol_totp": {"code": code}}
    for step, fields in attempts.items():
        posted = post_step(client, step, tx, **fields)
        assert posted.status_code == 400 and not sets_session(posted), step
        shown = client.get(f"/login/{step}?tx={tx}", follow_redirects=False)
        assert shown.status_code == 303 and location_of(shown) == f"/login/passkey?tx={tx}", step
    assert backup_codes_left(client) == 10 and user_row(client, "alice").failed_logins == 0
    assert sorted(s.acr for s in live_sessions(client, "alice")) == ["mfa", "pwd"]  # none stepped up to phr
    # the code was not claimed by the refused post: it still works where a code is asked
    client.cookies.clear()
    assert post_step(client, "totp", at_code_step(client), code=code).status_code == 303


def test_a_user_without_totp_cannot_post_codes_and_is_sent_to_enrol(client):
    require_mfa_for_shop(client)  # bob, with no factor, must enrol during the chain
    tx = at_code_step(client, "bob")
    for step, fields in (("totp", {"code": "123456"}), ("backup_code", {"backup_code": "ABCD-EFGH"})):
        posted = post_step(client, step, tx, **fields)
        assert posted.status_code == 400 and not sets_session(posted), step
    for step in ("totp", "backup_code", "passkey"):  # a page out of turn: where the chain is instead
        shown = client.get(f"/login/{step}?tx={tx}", follow_redirects=False)
        assert shown.status_code == 303 and location_of(shown) == f"/login/enrol_totp?tx={tx}", step
    assert user_row(client, "bob").failed_logins == 0


def test_enrolment_out_of_turn_is_refused_and_touches_the_authenticator_not(client):
    use_time(client, T0)
    secret = enrol_totp(client)
    before = totp_row(client)
    tx = at_code_step(client)
    posted = post_step(client, "enrol_totp", tx, code=next_code(client, secret))
    assert posted.status_code == 400 and not sets_session(posted)
    shown = client.get(f"/login/enrol_totp?tx={tx}", follow_redirects=False)
    assert shown.status_code == 303 and location_of(shown) == f"/login/totp?tx={tx}"
    after = totp_row(client)
    assert after is not None and before is not None
    assert (after.id, after.secret_encrypted, after.confirmed_at) == (
        before.id,
        before.secret_encrypted,
        before.confirmed_at,
    )


def test_a_passkey_only_user_is_never_offered_enrolment_or_codes(client):
    with_passkey(client, SoftAuthenticator())  # alice: a passkey, no TOTP, so mfa is required
    tx = at_code_step(client)
    for step in ("enrol_totp", "totp", "backup_code"):
        shown = client.get(f"/login/{step}?tx={tx}", follow_redirects=False)
        assert shown.status_code == 303 and location_of(shown) == f"/login/passkey?tx={tx}", step
        assert post_step(client, step, tx, code="123456", backup_code="ABCD-EFGH").status_code == 400
    assert totp_row(client) is None, "an out-of-turn enrolment page must not begin a secret"


@pytest.mark.parametrize("name", ["nosuch", "done", "unmet", "Password", "__init__", "STEP", "password.html"])
def test_a_step_name_that_is_not_registered_is_a_404_never_a_500(app, browsers, name: str):
    browser = browsers(tolerant=True)
    tx = tx_of(login_page_url(browser))
    assert browser.get(f"/login/{name}?tx={tx}").status_code == 404
    assert post_step(browser, name, tx, code="1").status_code == 404
    assert browser.post(f"/login/{name}", data={"tx": tx}).status_code == 403  # the CSRF check comes first


# ==== first steps (password, passkey) on a transaction that already named its user =====================


def test_the_password_again_mid_chain_skips_no_code_and_resets_no_counter(client):
    use_time(client, T0)
    secret = enrol_totp(client)
    tx = at_code_step(client)
    for _ in range(2):
        assert post_step(client, "totp", tx, code="000000").status_code == 401
    again = post_password(client, tx, "alice")
    assert again.status_code == 303 and location_of(again) == f"/login/totp?tx={tx}" and not sets_session(again)
    assert user_row(client, "alice").failed_logins == 2, "a right password mid-chain must not buy more guesses"
    assert client.get(f"/authorize/resume?tx={tx}", follow_redirects=False).status_code == 400
    other = post_password(client, tx, "bob")  # another identity: refused like a wrong password, counted for bob
    assert other.status_code == 401 and user_row(client, "bob").failed_logins == 1
    done = post_step(client, "totp", tx, code=next_code(client, secret))
    assert done.status_code == 303 and [len(live_sessions(client, u)) for u in ("alice", "bob")] == [1, 0]


def test_the_password_on_a_step_up_neither_finishes_it_nor_changes_its_user(client):
    use_time(client, T0)
    password_sign_in_to_account(client)  # a pwd session
    secret = enrol_totp(client)
    stepped = step_up(client, "mfa")
    assert location_of(stepped).startswith("/login/totp?tx=")
    tx, cookie = tx_of(location_of(stepped)), client.cookies["idp_session"]

    again = post_password(client, tx, "alice")
    assert again.status_code == 303 and location_of(again) == f"/login/totp?tx={tx}" and not sets_session(again)
    other = post_password(client, tx, "bob")
    assert other.status_code == 401 and not sets_session(other)
    assert location_of(client.get(f"/login?tx={tx}", follow_redirects=False)) == f"/login/totp?tx={tx}"
    assert [s.acr for s in live_sessions(client, "alice")] == ["pwd"] and client.cookies["idp_session"] == cookie

    done = post_step(client, "totp", tx, code=next_code(client, secret))
    assert done.status_code == 303 and sets_session(done)
    (session,) = live_sessions(client, "alice")
    assert session.acr == "mfa" and live_sessions(client, "bob") == []


# ==== the lock, and passkeys that are not lockable ======================================================


def test_another_users_passkey_on_a_chain_signs_in_nobody_and_clears_no_lock(client):
    """bob's passkey on alice's chain: with a usernameless challenge fetched before her
    password named her (it verifies, as bob: another identity), and with one fetched after
    (bound to her). Both accounts are locked: neither lock is cleared, nobody signs in."""
    bobs = SoftAuthenticator()
    use_time(client, T0)
    with_passkey(client, bobs, "bob")
    enrol_totp(client)
    sessions_before = [len(live_sessions(client, u)) for u in ("alice", "bob")]
    tx = tx_of(login_page_url(client))
    token = csrf_token(client)
    early = sign_in_options(client, token, tx).json()
    post_password(client, tx, "alice")
    lock(client, "alice")
    lock(client, "bob")

    def verify(options: dict[str, Any]) -> Any:
        assertion = bobs.get({**options["publicKey"], "allowCredentials": []})
        body = {"csrf_token": token, "tx": tx, "challenge_id": options["challenge_id"], "credential": assertion}
        return client.post("/login/passkey/verify", json=body)

    answers = [verify(early)]
    late = sign_in_options(client, token, tx, username="bob").json()  # bound to alice, whatever is typed
    assert bobs.credential().b64id not in [d["id"] for d in late["publicKey"]["allowCredentials"]]
    answers.append(verify(late))
    for answer in answers:
        assert answer.status_code == 401 and answer.json() == {"error": SIGN_IN_FAILED} and not sets_session(answer)
    assert is_locked(client, "alice") and is_locked(client, "bob")
    assert [len(live_sessions(client, u)) for u in ("alice", "bob")] == sessions_before


def test_an_unverified_or_forged_assertion_leaves_the_lock_and_a_verified_one_clears_it(client):
    authenticator = SoftAuthenticator()
    with_passkey(client, authenticator)
    lock(client, "alice")
    token, successes = csrf_token(client), audit_count(client, "login.succeeded")
    unverified = passkey_ceremony(client, authenticator, token, user_verified=False)
    forged = passkey_ceremony(client, authenticator, token, signature=bytes.fromhex("3006020101020101"))
    for refused in (unverified, forged):
        assert refused.status_code == 401 and not sets_session(refused)
    assert is_locked(client, "alice") and audit_count(client, "login.succeeded") == successes
    signed_in = passkey_ceremony(client, authenticator, token)  # DESIGN.md §4: a passkey through a lock
    assert signed_in.status_code == 200 and not is_locked(client, "alice")


def test_on_a_locked_account_a_step_up_refuses_right_codes_and_spends_no_backup_code(client):
    """The lock covers the code steps of a step-up too; the user's own passkey still signs
    in through it (DESIGN.md §4), on the same transaction, upgrading the same session."""
    authenticator = SoftAuthenticator()
    use_time(client, T0)
    password_sign_in_to_account(client)
    register_on_account(client, authenticator)
    secret = enrol_totp(client)
    codes = give_backup_codes(client)
    (session,) = live_sessions(client, "alice")
    stepped = step_up(client)  # her passkey and TOTP make mfa her minimum; the session is pwd
    assert location_of(stepped).startswith("/login/totp?tx=")
    tx = tx_of(location_of(stepped))
    lock(client, "alice")
    for step, fields in (("totp", {"code": next_code(client, secret)}), ("backup_code", {"backup_code": codes[0]})):
        refused = post_step(client, step, tx, **fields)
        assert refused.status_code == 401 and not sets_session(refused), step
    assert backup_codes_left(client) == 10 and is_locked(client, "alice")
    verify = passkey_ceremony(client, authenticator, csrf_token(client), tx)
    assert verify.status_code == 200 and verify.json()["redirect"] == f"/authorize/resume?tx={tx}"
    (after,) = live_sessions(client, "alice")
    assert (after.sid, after.acr) == (session.sid, "phr") and not is_locked(client, "alice")


def test_a_passkey_challenge_of_one_transaction_is_refused_on_another_and_is_spent(client):
    authenticator = SoftAuthenticator()
    with_passkey(client, authenticator)
    sessions_before = len(live_sessions(client, "alice"))
    first, second = tx_of(login_page_url(client)), tx_of(login_page_url(client))
    token = csrf_token(client)
    options = sign_in_options(client, token, first).json()
    assertion = authenticator.get(options["publicKey"])
    body = {"csrf_token": token, "challenge_id": options["challenge_id"], "credential": assertion}
    elsewhere = client.post("/login/passkey/verify", json={**body, "tx": second})
    assert elsewhere.status_code == 401 and not sets_session(elsewhere)
    replayed = client.post("/login/passkey/verify", json={**body, "tx": first})  # single use, whatever happened
    assert replayed.status_code == 401 and not sets_session(replayed)
    assert len(live_sessions(client, "alice")) == sessions_before


# ==== races on Passed.claim and the finish ===========================================================


def test_one_totp_code_from_four_browsers_at_once_signs_in_exactly_one(client, browsers):
    use_time(client, T0)
    secret = enrol_totp(client)
    people = [browsers() for _ in range(4)]
    forms = [{"csrf_token": csrf_token(b), "tx": at_code_step(b), "code": ""} for b in people]
    code = next_code(client, secret)
    answers = concurrently(
        *[
            lambda b=b, f=f: b.post("/login/totp", data={**f, "code": code}, follow_redirects=False)
            for b, f in zip(people, forms, strict=True)
        ]
    )
    assert sorted(a.status_code for a in answers) == [303, 401, 401, 401]
    assert sum(sets_session(a) for a in answers) == 1 and len(live_sessions(client, "alice")) == 1


def test_one_backup_code_from_two_browsers_at_once_is_spent_once(client, browsers):
    use_time(client, T0)
    enrol_totp(client)
    code = give_backup_codes(client)[0]
    people = [browsers() for _ in range(2)]
    forms = [{"csrf_token": csrf_token(b), "tx": at_code_step(b), "backup_code": code} for b in people]
    answers = concurrently(
        *[
            lambda b=b, f=f: b.post("/login/backup_code", data=f, follow_redirects=False)
            for b, f in zip(people, forms, strict=True)
        ]
    )
    assert sorted(a.status_code for a in answers) == [200, 401]  # 200: the "codes left" notice
    (won,) = [a for a in answers if a.status_code == 200]
    assert "9</strong> backup codes left" in won.text and won.headers["cache-control"] == "no-store"
    assert backup_codes_left(client) == 9 and len(live_sessions(client, "alice")) == 1


def test_a_double_submitted_code_on_one_transaction_starts_one_session(client, browsers):
    use_time(client, T0)
    secret = enrol_totp(client)
    tx = at_code_step(client)
    tab = browsers(like=client)
    form = {"csrf_token": csrf_token(client), "tx": tx, "code": next_code(client, secret)}
    answers = concurrently(
        lambda: client.post("/login/totp", data=form, follow_redirects=False),
        lambda: tab.post("/login/totp", data=form, follow_redirects=False),
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses in ([303, 400], [303, 401]), statuses  # the loser: already used, or a finished transaction
    assert sum(sets_session(a) for a in answers) == 1 and len(live_sessions(client, "alice")) == 1


def test_a_double_submitted_enrolment_code_answers_the_second_post_with_a_page_not_a_500(client, browsers, monkeypatch):
    require_mfa_for_shop(client)
    use_time(client, T0)
    tx = at_code_step(client, "bob")
    page = client.get(f"/login/enrol_totp?tx={tx}")
    secret = SECRET_ON_PAGE.search(page.text).group(1)  # type: ignore[union-attr]
    form = {"csrf_token": csrf_token(client), "tx": tx, "code": next_code(client, secret)}
    tab = browsers(like=client, tolerant=True)
    second = HeldRequest(
        monkeypatch,
        client.app.state.services.hashing,
        "hash",  # the ten new backup codes are hashed after the code matched, before the write
        lambda: tab.post("/login/enrol_totp", data=form, follow_redirects=False),
    )
    first = client.post("/login/enrol_totp", data=form, follow_redirects=False)
    assert first.status_code == 200 and len(set(CODES_ON_PAGE.findall(first.text))) == 10
    late = second.release()
    assert late.status_code < 500, late.text[:300]
    assert has_totp(client, "bob") and len(live_sessions(client, "bob")) == 1


def test_a_request_that_loses_the_race_to_the_end_of_the_chain_spends_no_backup_code(client, browsers, monkeypatch):
    use_time(client, T0)
    enrol_totp(client)
    codes = give_backup_codes(client)
    tx = at_code_step(client)
    tab = browsers(like=client)
    token = csrf_token(client)
    second = HeldRequest(
        monkeypatch,
        client.app.state.services.hashing,
        "verify",  # the one Argon2 verification of the typed backup code
        lambda: tab.post(
            "/login/backup_code", data={"csrf_token": token, "tx": tx, "backup_code": codes[1]}, follow_redirects=False
        ),
    )
    first = client.post(
        "/login/backup_code", data={"csrf_token": token, "tx": tx, "backup_code": codes[0]}, follow_redirects=False
    )
    assert first.status_code == 200 and sets_session(first)
    late = second.release()
    assert late.status_code in (400, 401) and not sets_session(late)
    assert backup_codes_left(client) == 9, "the refused request must not have spent its code"


# ==== the finish, the resume, and the page of a transaction that is gone ==============================


def test_a_finished_transaction_offers_only_the_verified_redirect_uri_with_access_denied(client):
    state = 'st"><b>x</b>&code=stolen'
    request = AuthRequest(state=state)
    tx = tx_of(login_page_url(client, request))
    finished = post_password(client, tx, "bob")
    assert location_of(finished) == f"/authorize/resume?tx={tx}"  # not followed
    for gone in (
        client.get(f"/login?tx={tx}", follow_redirects=False),
        post_password(client, tx, "bob"),
        client.get(f"/login/totp?tx={tx}"),
        post_step(client, "totp", tx, code="123456"),
    ):
        assert gone.status_code == 400 and EXPIRED in gone.text and not sets_session(gone)
        assert "<b>x</b>" not in gone.text, "the state is escaped"
        link = return_link(gone.text)
        assert link is not None and link.startswith(SHOP_REDIRECT + "?")
        assert query_of(link) == {
            "error": "access_denied",
            "error_description": "The sign-in was not completed.",
            "state": state,
            "iss": ISSUER,
        }


def test_another_browser_gets_the_unknown_transaction_page_for_a_finished_one(client, browsers):
    request = AuthRequest()
    tx = tx_of(login_page_url(client, request))
    post_password(client, tx, "bob")
    other = browsers()
    for url in (f"/login?tx={tx}", f"/login/totp?tx={tx}"):
        seen = other.get(url)
        unknown = other.get(url.replace(tx, "x" * len(tx)))
        assert seen.status_code == unknown.status_code == 400
        assert without_noise(seen.text) == without_noise(unknown.text)
        assert return_link(seen.text) is None and "shop.example" not in seen.text and request.state not in seen.text
    assert client.get(f"/authorize/resume?tx={tx}", follow_redirects=False).status_code == 303  # still hers, once


def test_a_finished_sign_in_to_idp_itself_leaves_nothing_to_come_back_to(client):
    use_time(client, T0)
    secret = enrol_totp(client)
    code_step = post_login(client, "alice")
    tx = tx_of(location_of(code_step))
    done = post_step(client, "totp", tx, code=next_code(client, secret))
    assert location_of(done) == "/account"
    for gone in (client.get(f"/login?tx={tx}"), post_step(client, "totp", tx, code="123456")):
        assert gone.status_code == 400 and return_link(gone.text) is None
    assert find_transaction(client.app.state.services.store, tx) is None


def test_a_step_up_begun_before_another_user_signed_in_here_is_gone_and_upgrades_nobody(client):
    use_time(client, T0)
    password_sign_in_to_account(client)
    secret = enrol_totp(client)
    tx = tx_of(location_of(step_up(client, "mfa")))
    assert post_login(client, "bob").status_code == 303  # another user in this browser: alice's session ends
    bobs_cookie = client.cookies["idp_session"]
    shown = client.get(f"/login/totp?tx={tx}")
    assert shown.status_code == 400 and (return_link(shown.text) or "").startswith(SHOP_REDIRECT)
    posted = post_step(client, "totp", tx, code=next_code(client, secret))
    assert posted.status_code == 400 and not sets_session(posted)
    assert live_sessions(client, "alice") == [] and [s.acr for s in live_sessions(client, "bob")] == ["pwd"]
    assert client.cookies["idp_session"] == bobs_cookie


def test_a_step_up_begun_from_a_cookie_value_renewed_since_upgrades_nothing(client, browsers):
    """A copy of alice's cookie starts a step-up; she then signs in again (a new cookie value,
    so the copy dies); a code posted on the copy's step-up upgrades nothing and issues no
    cookie for her session: a step-up is bound to the cookie value it began from."""
    use_time(client, T0)
    victim, attacker = client, browsers()
    assert post_login(victim, "alice").status_code == 303  # alice, password only
    secret = enrol_totp(client)  # then an authenticator: her session stays at pwd
    attacker.cookies.set("idp_session", victim.cookies["idp_session"])  # a copy of her cookie
    location = location_of(step_up(attacker, "mfa"))
    assert location.startswith("/login/totp?tx="), location
    phished = next_code(client, secret)  # say the copy's holder also tricked her out of one code
    again = post_login(victim, "alice")  # she signs in again, password and code
    renewed = post_step(victim, "totp", tx_of(location_of(again)), code=next_code(client, secret))
    assert renewed.status_code == 303 and sets_session(renewed)
    assert attacker.get("/account", follow_redirects=False).status_code == 303  # the copy is dead

    done = post_step(attacker, "totp", tx_of(location), code=phished)
    assert done.status_code == 400 and not sets_session(done)
    assert victim.get("/account", follow_redirects=False).status_code == 200


def test_a_transaction_of_another_browser_answers_exactly_like_an_unknown_one(client, browsers):
    use_time(client, T0)
    enrol_totp(client)
    tx = at_code_step(client)
    other = browsers()
    token = csrf_token(other)
    made_up = "y" * len(tx)
    for make in (
        lambda t: other.get(f"/login?tx={t}"),
        lambda t: other.get(f"/login/totp?tx={t}"),
        lambda t: other.post("/login/totp", data={"csrf_token": token, "tx": t, "code": "123456"}),
        lambda t: other.post("/login", data={"csrf_token": token, "tx": t, "username": "alice", "password": PASSWORD}),
    ):
        real, unknown = make(tx), make(made_up)
        assert real.status_code == unknown.status_code == 400
        assert without_noise(real.text) == without_noise(unknown.text)
    verify = {"csrf_token": token, "challenge_id": "c" * 32, "credential": {}}
    real = other.post("/login/passkey/verify", json={**verify, "tx": tx})
    unknown = other.post("/login/passkey/verify", json={**verify, "tx": made_up})
    assert (real.status_code, real.json()) == (unknown.status_code, unknown.json()) and real.status_code == 400


# ==== passkey options and the transactions they create ============================================


def test_a_transaction_made_by_passkey_options_cannot_be_fixated_into_another_browser(client, browsers):
    attacker, victim = client, browsers()
    made = sign_in_options(attacker, csrf_token(attacker)).json()
    planted = made["tx"]
    assert victim.get(f"/login?tx={planted}").status_code == 400
    assert post_password(victim, planted, "alice").status_code == 400
    own = sign_in_options(victim, csrf_token(victim), planted).json()
    assert own["tx"] != planted and own["publicKey"].get("allowCredentials") in (None, [])
    assert (
        victim.post(
            "/login/passkey/verify",
            json={
                "csrf_token": csrf_token(victim),
                "tx": planted,
                "challenge_id": made["challenge_id"],
                "credential": {},
            },
        ).status_code
        == 400
    )
    kept = find_transaction(client.app.state.services.store, planted)
    assert kept is not None and kept.user_id is None and kept.steps_done == ()


def test_passkey_options_on_a_finished_or_named_transaction_never_widen_it(client):
    alices = SoftAuthenticator()
    with_passkey(client, alices)
    token = csrf_token(client)
    finished = tx_of(login_page_url(client))
    assert location_of(post_password(client, finished, "bob")) == f"/authorize/resume?tx={finished}"
    fresh = sign_in_options(client, token, finished).json()
    assert fresh["tx"] != finished and not fresh["publicKey"].get("allowCredentials")

    client.cookies.delete("idp_session")  # bob's, from the chain that finished
    named = at_code_step(client, "alice")  # alice's chain, waiting for her passkey
    bound = sign_in_options(client, token, named, username="bob").json()
    assert bound["tx"] == named
    assert [d["id"] for d in bound["publicKey"]["allowCredentials"]] == [alices.credential().b64id]


def test_a_transaction_made_by_passkey_options_lives_no_longer_than_an_untouched_one(app_with):
    class Clock:
        now = 1000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    browser = app_with(store=MemoryStore(clock=clock))
    settings = browser.app.state.services.settings  # type: ignore[attr-defined]
    tx = sign_in_options(browser, csrf_token(browser)).json()["tx"]
    clock.now += max(settings.login_untouched_ttl_seconds, CHALLENGE_TTL_SECONDS) + 1  # its challenge is gone too
    assert find_transaction(browser.app.state.services.store, tx) is None  # type: ignore[attr-defined]


# ==== the enrolment's pending secret ==============================================================


def test_the_pending_enrolment_secret_is_never_shown_to_a_second_browser(client, browsers):
    require_mfa_for_shop(client)  # alice, with no factor, must enrol during the chain
    victim, attacker = client, browsers()
    victims = SECRET_ON_PAGE.search(victim.get(f"/login/enrol_totp?tx={at_code_step(victim)}").text)
    attackers = SECRET_ON_PAGE.search(attacker.get(f"/login/enrol_totp?tx={at_code_step(attacker)}").text)
    assert victims is not None and attackers is not None
    assert attackers.group(1) != victims.group(1)


def test_reloading_the_enrolment_page_keeps_its_secret_and_a_wrong_code_enables_nothing(client, monkeypatch):
    require_mfa_for_shop(client)
    tx = at_code_step(client, "bob")
    first = SECRET_ON_PAGE.search(client.get(f"/login/enrol_totp?tx={tx}").text)
    again = SECRET_ON_PAGE.search(client.get(f"/login/enrol_totp?tx={tx}").text)
    assert first is not None and again is not None and first.group(1) == again.group(1)
    hashes: list[str] = []
    original = client.app.state.services.hashing.hash
    monkeypatch.setattr(client.app.state.services.hashing, "hash", lambda p: hashes.append(p) or original(p))
    wrong = post_step(client, "enrol_totp", tx, code="000000")
    assert wrong.status_code == 401 and not CODES_ON_PAGE.findall(error_of(wrong.text))
    assert hashes == [] and not has_totp(client, "bob") and user_row(client, "bob").failed_logins == 1
    assert SECRET_ON_PAGE.search(wrong.text).group(1) == first.group(1)  # type: ignore[union-attr]


def test_a_stale_session_cannot_enrol_a_second_factor_through_a_step_up(client):
    use_time(client, T0)
    password_sign_in_to_account(client)  # alice, password only, no factor
    stale = app_now(client) - timedelta(seconds=client.app.state.services.settings.reauth_seconds + 3600)
    with client.app.state.services.sessions.begin() as db:
        db.execute(update(IdpSession).values(auth_time=stale))
    location = location_of(step_up(client, "mfa"))
    page = client.get(location, follow_redirects=False)
    secret = SECRET_ON_PAGE.search(page.text)
    if secret is not None:  # the enrolment page, reached on the old session's credit alone
        post_step(client, "enrol_totp", tx_of(location), code=pyotp.TOTP(secret.group(1)).at(app_time(client)))
    assert not has_totp(client, "alice"), "an authenticator was enrolled without a recent sign-in"


# ==== notices: the pages between a step and the rest of the chain =====================================


def test_new_backup_codes_are_shown_once_uncached_to_the_enrolling_browser_only(client, browsers):
    require_mfa_for_shop(client)
    use_time(client, T0)
    request = AuthRequest()
    tx = at_code_step(client, "bob", request)
    secret = SECRET_ON_PAGE.search(client.get(f"/login/enrol_totp?tx={tx}").text).group(1)  # type: ignore[union-attr]
    form = {"csrf_token": csrf_token(client), "tx": tx, "code": next_code(client, secret)}
    shown = client.post("/login/enrol_totp", data=form, follow_redirects=False)
    codes = set(CODES_ON_PAGE.findall(shown.text))
    assert shown.status_code == 200 and len(codes) == 10 and sets_session(shown)
    assert shown.headers["cache-control"] == "no-store" and shown.headers["pragma"] == "no-cache"
    onward = re.search(r'href="(/authorize/resume\?tx=[^"]+)"', shown.text).group(1)  # type: ignore[union-attr]

    resent = client.post("/login/enrol_totp", data=form, follow_redirects=False)  # back, and submit again
    assert resent.status_code == 400 and not codes & set(CODES_ON_PAGE.findall(resent.text))
    other = browsers()
    assert other.get(onward, follow_redirects=False).status_code == 400
    assert other.get(f"/login/enrol_totp?tx={tx}").status_code == 400
    back = client.get(onward, follow_redirects=False)
    assert back.status_code == 303 and not location_of(back).startswith("/login")


# ==== the rate limits and the failure budget around the one hop ====================================


def _failure_setups() -> dict[str, Callable[[TestClient], Callable[[], Any]]]:
    """Each: prepares a browser (spending nothing) and returns one failing attempt (a 401)."""

    def wrong_password(c: TestClient) -> Callable[[], Any]:
        return lambda: post_login(c, "alice", WRONG)

    def unknown_name(c: TestClient) -> Callable[[], Any]:
        return lambda: post_login(c, "nobody", WRONG)

    def disabled_account(c: TestClient) -> Callable[[], Any]:
        disable(c, "alice")
        return lambda: post_login(c, "alice")

    def locked_account(c: TestClient) -> Callable[[], Any]:
        lock(c, "alice")
        return lambda: post_login(c, "alice")

    def another_identity(c: TestClient) -> Callable[[], Any]:
        use_time(c, T0)
        enrol_totp(c)
        tx = at_code_step(c)
        return lambda: post_password(c, tx, "bob")

    def wrong_code(c: TestClient) -> Callable[[], Any]:
        use_time(c, T0)
        enrol_totp(c)
        tx = at_code_step(c)
        return lambda: post_step(c, "totp", tx, code="000000")

    def wrong_backup_code(c: TestClient) -> Callable[[], Any]:
        use_time(c, T0)
        enrol_totp(c)
        give_backup_codes(c)
        tx = at_code_step(c)
        return lambda: post_step(c, "backup_code", tx, backup_code="ZZZZ-ZZZZ")

    def wrong_enrolment_code(c: TestClient) -> Callable[[], Any]:
        require_mfa_for_shop(c)
        tx = at_code_step(c)
        return lambda: post_step(c, "enrol_totp", tx, code="000000")

    def failed_passkey(c: TestClient) -> Callable[[], Any]:
        authenticator = SoftAuthenticator()
        with_passkey(c, authenticator)
        return lambda: passkey_ceremony(c, authenticator, csrf_token(c), user_verified=False)

    def unknown_passkey(c: TestClient) -> Callable[[], Any]:
        stranger = SoftAuthenticator()
        stranger.new_credential(user_handle=b"h" * 32)
        return lambda: passkey_ceremony(c, stranger, csrf_token(c))

    return {f.__name__: f for f in (wrong_password, unknown_name, disabled_account, locked_account,
                                     another_identity, wrong_code, wrong_backup_code, wrong_enrolment_code,
                                     failed_passkey, unknown_passkey)}  # fmt: skip


FAILURES = _failure_setups()


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_every_401_spends_the_failure_budget_and_a_spent_budget_runs_no_argon2(app_with, monkeypatch, kind: str):
    browser = app_with(rate_limit_login_failures_ip="3/minute")
    fail = FAILURES[kind](browser)
    for _ in range(3):
        failed = fail()
        assert failed.status_code == 401, (kind, failed.text[:300])
    calls: list[Any] = []
    count_verifications(monkeypatch, browser.app.state.services.hashing, calls)  # type: ignore[attr-defined]
    refused = post_login(browser, "bob")  # the right password of an untouched account
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert calls == [] and not sets_session(refused)


def test_refusals_that_check_no_credential_spend_no_budget(app_with):
    browser = app_with(rate_limit_login_failures_ip="1/minute")
    token = csrf_token(browser)
    tx = tx_of(login_page_url(browser))
    refusals = [
        browser.post("/login", data={"csrf_token": token, "username": "alice"}),  # a form missing its password
        post_step(browser, "totp", tx, code="123456"),  # a step out of turn
        post_step(browser, "totp", tx),  # and without its field
        post_step(browser, "totp", "z" * 32, code="123456"),  # an unknown transaction
        post_step(browser, "nosuch", tx, code="1"),  # an unknown step
        browser.post("/login/passkey/verify", json={"csrf_token": token, "tx": "z" * 32, "credential": {}}),
    ]
    assert [r.status_code for r in refusals] == [400, 400, 400, 400, 404, 400]
    assert post_login(browser, "bob").status_code == 303  # the budget is whole
    assert post_login(browser, "alice", WRONG).status_code == 401
    assert post_login(browser, "alice").status_code == 429


def test_the_per_account_limit_answers_unknown_and_known_names_alike_before_any_argon2(app_with, monkeypatch):
    browser = app_with(rate_limit_login_account="2/minute")
    calls: list[Any] = []
    count_verifications(monkeypatch, browser.app.state.services.hashing, calls)  # type: ignore[attr-defined]
    for name in ("alice", "nobody"):
        assert [post_login(browser, name, WRONG).status_code for _ in range(2)] == [401, 401]
        del calls[:]
        limited = post_login(browser, name, WRONG)
        assert limited.status_code == 429 and calls == [], name
    assert post_login(browser, "bob").status_code == 303  # another name is not affected


# ==== enumeration: unknown, known and disabled names ================================================


def test_unknown_wrong_and_disabled_get_the_same_pages_for_the_same_argon2_work(client, monkeypatch):
    disable(client, "bob")
    calls: list[Any] = []
    count_verifications(monkeypatch, client.app.state.services.hashing, calls)
    tries = {"nobody": WRONG, "alice": WRONG, "bob": PASSWORD}  # unknown; known, wrong; disabled, right
    for attempt in range(client.app.state.services.settings.lockout_attempts + 1):
        pages, work = {}, {}
        for name, password in tries.items():
            del calls[:]
            answer = post_login(client, name, password)
            assert answer.status_code == 401 and not sets_session(answer), (name, attempt)
            pages[name], work[name] = comparable(answer.text, name), [entry for entry, _ in calls]
        assert pages["nobody"] == pages["alice"] == pages["bob"], f"attempt {attempt + 1}"
        assert work == {"nobody": ["verify_unknown"], "alice": ["verify"], "bob": ["verify"]}, attempt


def test_junk_assertions_on_a_real_or_an_unknown_credential_id_answer_alike_for_every_name(client):
    """Options list no credential before a step proves the user, but an id can leak elsewhere:
    junk assertions on alice's real id answer like those on ids no account has."""
    authenticator = SoftAuthenticator()
    with_passkey(client, authenticator)  # alice has a passkey; bob has none; nobody does not exist
    known = {"alice": authenticator.credential().b64id, "bob": "b" * 43, "nobody": "n" * 43}
    token = csrf_token(client)
    answers: dict[str, list[tuple[int, str]]] = {}
    for name in ("alice", "bob", "nobody"):
        answers[name] = []
        for _ in range(3):
            options = sign_in_options(client, token, username=name).json()
            junk = {
                "id": known[name],
                "rawId": known[name],
                "type": "public-key",
                "response": {"clientDataJSON": "e30", "authenticatorData": "AAAA", "signature": "AAAA"},
            }
            body = {
                "csrf_token": token,
                "tx": options["tx"],
                "challenge_id": options["challenge_id"],
                "credential": junk,
            }
            verify = client.post("/login/passkey/verify", json=body)
            answers[name].append((verify.status_code, verify.json()["error"]))
    assert answers["alice"] == answers["bob"] == answers["nobody"], answers


def test_a_backup_code_try_costs_one_argon2_whatever_is_typed(client, browsers, monkeypatch):
    use_time(client, T0)
    enrol_totp(client)
    codes = give_backup_codes(client)
    calls: list[Any] = []
    count_verifications(monkeypatch, client.app.state.services.hashing, calls)
    tx = at_code_step(client)
    for typed in ("ZZZZ-ZZZZ", "x", "9" * 4096, codes[0]):
        del calls[:]
        post_step(client, "backup_code", tx, backup_code=typed)
        assert len(calls) == 1, (typed[:20], calls)
    other = browsers()
    tx = at_code_step(other)
    del calls[:]
    used = post_step(other, "backup_code", tx, backup_code=codes[0])
    assert used.status_code == 401 and len(calls) == 1


# ==== 500s: malformed forms and JSON, values the database cannot hold ===================================


@pytest.mark.parametrize(
    "step,fields,status",
    [
        ("password", {"username": "a" * 4096, "password": "b" * 4096}, 401),
        ("password", {"username": "a" * 4097, "password": "b"}, 400),
        ("password", {"username": " ", "password": "x"}, 401),
        ("password", {"username": "\u212a" * 200, "password": "x"}, 401),  # KELVIN SIGN: casefolds to k
        ("totp", {"code": "9" * 4096}, 401),
        ("totp", {"code": "\uff11\uff12\uff13\uff14\uff15\uff16"}, 401),  # full-width digits
        ("totp", {"code": "-1"}, 401),
        ("backup_code", {"backup_code": "\u00e9" * 4096}, 401),
        ("passkey", {"challenge_id": "c" * 64, "credential": '{"id": 1}'}, 401),
        ("passkey", {"challenge_id": "c" * 64, "credential": "[" * 2000 + "]" * 2000}, 401),
        ("passkey", {"credential": "x"}, 401),
    ],
)
def test_malformed_step_forms_are_answered_without_a_500(app, browsers, step: str, fields: dict[str, str], status):
    browser = browsers(tolerant=True)
    use_time(browser, T0)
    enrol_totp(browser)
    give_backup_codes(browser)
    tx = at_code_step(browser)
    target = None if step == "password" else tx
    answer = post_step(browser, step, target, **fields)
    assert answer.status_code == status, (answer.status_code, answer.text[:300])
    for junk_tx in ("x" * 4096, "../../etc/passwd", " " * 20):
        assert post_step(browser, "totp", junk_tx, code="123456").status_code == 400


@pytest.mark.parametrize(
    "credential",
    [
        {"id": "AAAA", "rawId": "A" * 1401},
        {"id": "AAAA", "rawId": "AAAA", "type": "public-key", "response": {"userHandle": "***", "clientDataJSON": "x"}},
        {"id": "AAAA", "rawId": "AAAA", "type": "public-key", "response": {"userHandle": ["a"]}},
        {"rawId": {"nested": True}},
        "{" * 100,
    ],
)
def test_garbage_assertions_on_a_chain_that_named_its_user_are_refused_as_json(app, browsers, credential):
    browser = browsers(tolerant=True)
    with_passkey(browser, SoftAuthenticator())
    tx = at_code_step(browser)
    token = csrf_token(browser)
    options = sign_in_options(browser, token, tx).json()
    verify = browser.post(
        "/login/passkey/verify",
        json={"csrf_token": token, "tx": tx, "challenge_id": options["challenge_id"], "credential": credential},
    )
    assert verify.status_code == 401 and verify.json() == {"error": SIGN_IN_FAILED}
    assert user_row(browser, "alice").failed_logins == 1  # blamed on the chain's user, once


def test_a_username_with_a_lone_surrogate_gets_passkey_options_not_a_500(app, browsers):
    browser = browsers(tolerant=True)
    body = json.dumps(
        {"csrf_token": csrf_token(browser), "username": "al\ud800ice"}
    )  # json.dumps escapes the surrogate
    answer = browser.post("/login/passkey/options", content=body.encode(), headers={"content-type": "application/json"})
    assert answer.status_code in (200, 400), answer.text[:200]


def test_a_username_with_a_nul_gets_passkey_options_not_a_500(app, browsers):
    browser = browsers(tolerant=True)
    answer = browser.post("/login/passkey/options", json={"csrf_token": csrf_token(browser), "username": "al\x00ice"})
    assert answer.status_code in (200, 400), answer.text[:200]


DEEP = "[" * 2000 + "]" * 2000  # within every size limit, deeper than the JSON parser recurses


def test_a_deeply_nested_credential_string_is_refused_not_a_500(app, browsers):
    browser = browsers(tolerant=True)
    token = csrf_token(browser)
    options = sign_in_options(browser, token).json()
    answers = [
        browser.post(
            "/login/passkey/verify",
            json={
                "csrf_token": token,
                "tx": options["tx"],
                "challenge_id": options["challenge_id"],
                "credential": DEEP,
            },
        ),
        post_step(browser, "passkey", None, challenge_id="c" * 32, credential=DEEP),  # the step's form, no transaction
    ]
    assert [a.status_code for a in answers] == [401, 401], [a.text[:100] for a in answers]


# ==== where_next / step_for: a chain that can go nowhere ================================================


def test_a_step_up_to_phr_without_a_passkey_answers_the_rp_with_unmet_requirements(client):
    assert post_login(client, "bob").status_code == 303  # bob: a pwd session, no passkey
    request = AuthRequest(extra={"acr_values": "phr"})
    response = start(client, request)
    for _ in range(4):  # idp's own redirects, followed as a browser would
        if response.status_code != 303 or not location_of(response).startswith("/"):
            break
        response = client.get(location_of(response), follow_redirects=False)
    assert response.status_code == 303 and location_of(response).startswith(SHOP_REDIRECT), response.text[:300]
    answer = parse_qs(urlsplit(location_of(response)).query)
    assert answer["error"] == ["unmet_authentication_requirements"] and answer["state"] == [request.state]


def test_where_next_sends_a_step_up_to_its_step_and_a_fresh_chain_to_the_password(client):
    use_time(client, T0)
    tx = tx_of(login_page_url(client))
    assert client.get(f"/login?tx={tx}", follow_redirects=False).status_code == 200
    password_sign_in_to_account(client)
    enrol_totp(client)
    stepped = tx_of(location_of(step_up(client, "mfa")))
    assert location_of(client.get(f"/login?tx={stepped}", follow_redirects=False)) == f"/login/totp?tx={stepped}"
    assert client.get(f"/login/password?tx={stepped}", follow_redirects=False).status_code == 303
