"""Login rate limits that fit an office without helping a sprayer (issue 14, item 10): failed
credential checks per client IP (per /64 for IPv6) are a budget of their own, tested before
any Argon2 and spent only by a failure; passkey options have their own generous count; each
login transaction holds one live passkey challenge. Built with the real default limits (the
shared `settings` fixture turns them off); the limits' clock is simulated, so "ten minutes"
takes seconds."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from types import SimpleNamespace

import limits.storage.memory
import pyotp
import pytest
from httpx import Response
from sqlalchemy import select
from starlette.testclient import TestClient

import idp.security.rate_limits
from idp.app import create_app
from idp.db.models import User
from idp.security.rate_limits import RateLimits, ip_bucket
from idp.settings import Settings, load_settings
from idp.state.memory import MemoryStore
from idp.users import add_user
from tests.conftest import ISSUER, unavailable
from tests.support.argon2_calls import count_verifications
from tests.support.authenticator import SoftAuthenticator
from tests.support.clock import START, ManualClock
from tests.support.rp import AuthRequest, form_value, query_of, start
from tests.support.seed import PASSWORD, seed

T0 = START.timestamp()  # the app's clock (a step boundary plus 20 s), as tests/login/test_chain.py
CODE_TIME = T0 + 30  # enrolment used T0's step: sign-ins use the next one (replay protection)
WRONG = PASSWORD + " but wrong"
REAL_LIMITS = {f.name: f.default for f in dataclasses.fields(Settings) if f.name.startswith("rate_limit_")}
REDIS_URL = "redis://127.0.0.1:6379/14"  # the rate-limit tests' database (tests/security/test_rate_limits.py)
OFFICE_SIZE = 200
TEN_MINUTES = 600.0

MakeClient = Callable[..., TestClient]


class SimulatedClock:
    """The clock of the in-process limits (the `limits` memory storage and RateLimits'
    Retry-After arithmetic): starts at the real time and moves only when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def limits_clock(monkeypatch: pytest.MonkeyPatch) -> SimulatedClock:
    simulated = SimulatedClock()
    fake_time = SimpleNamespace(time=simulated.time, monotonic=simulated.monotonic)
    monkeypatch.setattr(limits.storage.memory, "time", fake_time)
    monkeypatch.setattr(idp.security.rate_limits, "time", fake_time)
    return simulated


@pytest.fixture
def make_client(settings: Settings, limits_clock: SimulatedClock, clock: ManualClock) -> Iterator[MakeClient]:
    """An app with the real default rate limits (some replaced if asked), seeded, and a
    TestClient on it (`client` is the direct peer, as in tests/security/test_rate_limits.py)."""
    with ExitStack() as stack:

        def make(*, client: tuple[str, int] = ("198.51.100.7", 40000), **overrides: object) -> TestClient:
            real = dataclasses.replace(settings, **{**REAL_LIMITS, **overrides})
            app = create_app(real, store=MemoryStore(), clock=clock)
            seed(app.state.services)
            clock.set(CODE_TIME)
            return stack.enter_context(TestClient(app, base_url=ISSUER, client=client))

        yield make


def add_users(client: TestClient, count: int, *, totp: bool = False) -> dict[str, str]:
    """`count` users straight through the database layer (one cheap Argon2 hash for all);
    with totp, each with a confirmed authenticator. Returns username -> TOTP secret ("")."""
    services = client.app.state.services  # type: ignore[attr-defined]
    password_hash = services.hashing.hash(PASSWORD)
    names = [f"user{n:03}" for n in range(count)]
    with services.sessions.begin() as db:
        ids = [add_user(db, username=name, email=None, name=None, password_hash=password_hash).id for name in names]
    secrets = dict.fromkeys(names, "")
    if totp:
        services.clock.set(T0)
        with services.sessions.begin() as db:
            for name, uid in zip(names, ids, strict=True):
                secrets[name] = services.factors.begin_totp(db, uid)
                assert services.factors.confirm_totp(db, uid, pyotp.TOTP(secrets[name]).at(T0)).ok
        services.clock.set(CODE_TIME)
    return secrets


# ---- a browser, as idp/static/passkeys.js and the hosted forms drive it ----------------------


def login_page(client: TestClient, location: str = "/login") -> tuple[str, str | None]:
    """Loads the login page (csrf token, transaction) and, as the page's script does on
    every load (conditional mediation), asks for passkey options."""
    page = client.get(location)
    assert page.status_code == 200, page.text
    csrf = form_value(page.text, "csrf_token")
    tx = form_value(page.text, "tx") if 'name="tx"' in page.text else None
    options = passkey_options(client, csrf, tx)
    assert options.status_code == 200, options.text
    return csrf, tx


def passkey_options(client: TestClient, csrf: str, tx: str | None = None) -> Response:
    return client.post("/login/passkey/options", json={"csrf_token": csrf, **({"tx": tx} if tx else {})})


def post_password(client: TestClient, csrf: str, tx: str | None, username: str, password: str) -> Response:
    data = {"csrf_token": csrf, "username": username, "password": password, **({"tx": tx} if tx else {})}
    return client.post("/login", data=data, follow_redirects=False)


def post_code(client: TestClient, location: str, code: str) -> Response:
    page = client.get(location)
    assert page.status_code == 200, page.text
    data = {"csrf_token": form_value(page.text, "csrf_token"), "tx": form_value(page.text, "tx"), "code": code}
    return client.post("/login/totp", data=data, follow_redirects=False)


def to_client(client: TestClient, response: Response, statuses: Counter[int]) -> str:
    """Follows resume and consent (Allow) to the redirect back to the RP."""
    for _ in range(6):
        location = response.headers["location"]
        if not location.startswith("/"):
            return location
        if location.startswith("/consent"):
            page = client.get(location)
            statuses[page.status_code] += 1
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
        statuses[response.status_code] += 1
    raise AssertionError("too many redirects")


def office_sign_in(client: TestClient, username: str, secret: str, *, typo: bool, statuses: Counter[int]) -> None:
    """A person at their desk: the RP sends them to idp, the login page loads (and asks for
    passkey options), maybe a typo first, the password, the code, consent, back to the RP."""
    client.cookies.clear()  # everyone has a browser of their own
    request = AuthRequest()
    started = start(client, request)
    statuses[started.status_code] += 1
    csrf, tx = login_page(client, started.headers["location"])
    if typo:
        mistyped = post_password(client, csrf, tx, username, WRONG)
        statuses[mistyped.status_code] += 1
        assert mistyped.status_code == 401, mistyped.text
    signed = post_password(client, csrf, tx, username, PASSWORD)
    statuses[signed.status_code] += 1
    assert signed.status_code == 303 and signed.headers["location"].startswith("/login/totp?"), signed.text
    coded = post_code(client, signed.headers["location"], pyotp.TOTP(secret).at(CODE_TIME))
    statuses[coded.status_code] += 1
    assert coded.status_code == 303, coded.text
    params = query_of(to_client(client, coded, statuses))
    assert "code" in params and params["state"] == request.state, params


def spend_budget(client: TestClient, count: int, *, prefix: str = "nobody") -> list[int]:
    """`count` wrong passwords, each for another name (a sprayer's pattern)."""
    csrf, _ = login_page(client)
    return [post_password(client, csrf, None, f"{prefix}{n}", WRONG).status_code for n in range(count)]


def retry_after_of(response: Response) -> int:
    value = response.headers.get("retry-after", "")
    assert value.isdigit() and int(value) > 0, value
    return int(value)


# ---- an office behind one address ------------------------------------------------------------


def test_two_hundred_people_behind_one_ipv4_address_sign_in_with_password_and_code_in_ten_minutes(
    make_client, limits_clock
):
    client = make_client(client=("198.51.100.7", 40000))  # the office's NAT, the direct peer
    secrets = add_users(client, OFFICE_SIZE, totp=True)
    statuses: Counter[int] = Counter()

    for n, (username, secret) in enumerate(secrets.items()):
        limits_clock.advance(TEN_MINUTES / OFFICE_SIZE)  # one arrives every three seconds
        office_sign_in(client, username, secret, typo=n % 10 == 0, statuses=statuses)

    assert statuses[429] == 0, statuses
    assert statuses[401] == OFFICE_SIZE // 10  # the typos, answered as typos


def test_two_hundred_people_in_one_ipv6_64_behind_a_trusted_proxy_sign_in_in_ten_minutes(make_client, limits_clock):
    client = make_client(client=("10.0.0.5", 40000), trusted_proxies=("10.0.0.0/8",))
    secrets = add_users(client, OFFICE_SIZE, totp=True)
    statuses: Counter[int] = Counter()

    for n, (username, secret) in enumerate(secrets.items()):
        limits_clock.advance(TEN_MINUTES / OFFICE_SIZE)
        client.headers["X-Forwarded-For"] = f"2001:db8:85a3:42:{n:x}:8a2e:370:{n + 1:x}"  # each its own address
        office_sign_in(client, username, secret, typo=n % 10 == 0, statuses=statuses)

    assert statuses[429] == 0, statuses
    assert statuses[401] == OFFICE_SIZE // 10


# ---- a sprayer -------------------------------------------------------------------------------


def test_thirty_one_wrong_passwords_across_thirty_one_accounts_from_one_address_end_in_429(make_client):
    client = make_client()
    names = list(add_users(client, 31))
    csrf, _ = login_page(client)

    statuses = [post_password(client, csrf, None, name, WRONG).status_code for name in names]

    assert statuses == [401] * 30 + [429]
    refused = post_password(client, csrf, None, "alice", PASSWORD)  # even the right password, meanwhile
    assert refused.status_code == 429
    assert 540 <= retry_after_of(refused) <= 600  # the ten-minute window
    assert "Wait 10 minutes and try again." in refused.text
    assert refused.headers["content-type"].startswith("text/html")


def test_the_budget_is_per_ipv6_64_not_per_address(make_client):
    client = make_client(client=("10.0.0.5", 40000), trusted_proxies=("10.0.0.0/8",))
    csrf, _ = login_page(client)

    def attempt(address: str, name: str) -> int:
        headers = {"X-Forwarded-For": address}
        return client.post(
            "/login",
            data={"csrf_token": csrf, "username": name, "password": WRONG},
            headers=headers,
            follow_redirects=False,
        ).status_code

    rotated = [attempt(f"2001:db8:bad:1:{n:x}::1", f"victim{n}") for n in range(31)]
    assert rotated == [401] * 30 + [429]  # a new address in the same /64 is the same client
    assert attempt("2001:db8:bad:2::1", "victim") == 401  # the next /64 is another subscriber
    assert attempt("198.51.100.99", "victim") == 401


def test_at_the_limit_a_known_and_an_unknown_name_get_the_same_answer(make_client):
    client = make_client()
    csrf, _ = login_page(client)
    known = post_password(client, csrf, None, "alice", WRONG)
    unknown = post_password(client, csrf, None, "nobody-here", WRONG)
    assert known.status_code == unknown.status_code == 401
    assert spend_budget(client, 28) == [401] * 28

    answers = [post_password(client, csrf, None, name, WRONG) for name in ("alice", "nobody-here")]

    assert [a.status_code for a in answers] == [429, 429]
    assert answers[0].headers["retry-after"] == answers[1].headers["retry-after"]
    assert answers[0].headers["content-type"] == answers[1].headers["content-type"]
    assert without_per_request_values(answers[0]) == without_per_request_values(answers[1])


def without_per_request_values(response: Response) -> str:
    text = response.text
    for value in (response.headers.get("x-request-id"), *re.findall(r'nonce="([^"]+)"', text)):
        if value:
            text = text.replace(value, "…")
    return text


def test_a_refused_attempt_runs_no_argon2_and_counts_nowhere(make_client, monkeypatch):
    client = make_client()
    assert spend_budget(client, 30) == [401] * 30
    hashing = client.app.state.services.hashing  # type: ignore[attr-defined]
    calls: list[object] = []
    count_verifications(monkeypatch, hashing, calls)
    csrf, _ = login_page(client)

    for _ in range(3):
        assert post_password(client, csrf, None, "alice", WRONG).status_code == 429

    assert calls == []
    with client.app.state.services.sessions() as db:  # type: ignore[attr-defined]
        assert db.scalar(select(User.failed_logins).where(User.username == "alice")) == 0


def test_the_budget_window_ends_and_the_address_may_try_again(make_client, limits_clock):
    client = make_client()
    assert spend_budget(client, 31) == [401] * 30 + [429]
    limits_clock.advance(TEN_MINUTES + 1)

    assert spend_budget(client, 1, prefix="later") == [401]


# ---- what spends the budget, and what does not -----------------------------------------------


def test_successful_steps_do_not_spend_the_budget(make_client, limits_clock):
    client = make_client()
    secrets = add_users(client, 20, totp=True)
    assert spend_budget(client, 29) == [401] * 29
    statuses: Counter[int] = Counter()

    for username, secret in secrets.items():  # 40 successful steps from the same address
        limits_clock.advance(3)
        office_sign_in(client, username, secret, typo=False, statuses=statuses)

    assert statuses[429] == 0
    assert spend_budget(client, 2, prefix="again") == [401, 429]  # one failure was left, no more


def test_passkey_options_loads_do_not_spend_the_budget_and_have_their_own_limit(make_client, limits_clock):
    client = make_client()
    assert spend_budget(client, 29) == [401] * 29
    csrf, _ = login_page(client)  # the 120 a minute: spend_budget's and this page load took two

    def load() -> int:
        limits_clock.advance(0.4)  # 118 loads in 47 s: under the site-wide 100 a second, within the minute
        return passkey_options(client, csrf).status_code

    assert [load() for _ in range(118)] == [200] * 118
    refused = passkey_options(client, csrf)
    assert refused.status_code == 429 and refused.json()["error"] == "too_many_requests"
    assert 0 < retry_after_of(refused) <= 60

    # the password step is counted apart: its one failure left is still there
    assert [post_password(client, csrf, None, name, WRONG).status_code for name in ("x1", "x2")] == [401, 429]


@pytest.mark.parametrize("kind", ["wrong code", "wrong backup code", "failed passkey assertion"])
def test_each_kind_of_failed_credential_check_spends_the_budget(make_client, kind: str):
    client = make_client(rate_limit_login_failures_ip="2/10minutes")
    secret = add_users(client, 1, totp=True)["user000"]
    csrf, tx = login_page(client, start(client, AuthRequest()).headers["location"])
    signed = post_password(client, csrf, tx, "user000", PASSWORD)
    assert signed.status_code == 303, signed.text
    if kind == "failed passkey assertion":
        options = passkey_options(client, csrf, tx).json()
        stranger = SoftAuthenticator()
        assertion = stranger.get(options["publicKey"], credential=stranger.new_credential())  # never registered
        failed = client.post(
            "/login/passkey/verify",
            json={"csrf_token": csrf, "tx": tx, "challenge_id": options["challenge_id"], "credential": assertion},
        )
    else:
        page = client.get(
            signed.headers["location"].replace(
                "/login/totp?", "/login/backup_code?" if kind == "wrong backup code" else "/login/totp?"
            )
        )
        field = "backup_code" if kind == "wrong backup code" else "code"
        wrong = "AAAA-AAAA" if field == "backup_code" else f"{(int(pyotp.TOTP(secret).at(CODE_TIME)) + 1) % 10**6:06}"
        failed = client.post(
            "/login/backup_code" if field == "backup_code" else "/login/totp",
            data={"csrf_token": form_value(page.text, "csrf_token"), "tx": tx, field: wrong},
            follow_redirects=False,
        )
    assert failed.status_code == 401, failed.text

    # one success (the password) and one failure so far: one failure left
    assert spend_budget(client, 2) == [401, 429]


def test_a_right_password_on_a_locked_account_spends_the_budget_like_a_wrong_one(make_client):
    client = make_client(rate_limit_login_failures_ip="7/10minutes", lockout_attempts=5)
    csrf, _ = login_page(client)
    assert [post_password(client, csrf, None, "alice", WRONG).status_code for _ in range(5)] == [401] * 5

    assert post_password(client, csrf, None, "alice", PASSWORD).status_code == 401  # locked: refused
    # else its cost would tell a sprayer that this was the password
    assert spend_budget(client, 2) == [401, 429]


# ---- one live passkey challenge per login transaction ----------------------------------------


def register_passkey(client: TestClient, authenticator: SoftAuthenticator, username: str = "alice") -> None:
    csrf, _ = login_page(client)
    signed = post_password(client, csrf, None, username, PASSWORD)
    assert signed.status_code == 303 and signed.headers["location"] == "/account", signed.text
    token = form_value(client.get("/account").text, "csrf_token")
    options = client.post("/account/passkeys/options", json={"csrf_token": token}).json()
    done = client.post(
        "/account/passkeys",
        json={
            "csrf_token": token,
            "challenge_id": options["challenge_id"],
            "credential": authenticator.create(options["publicKey"]),
        },
    )
    assert done.status_code == 200, done.text
    client.cookies.clear()


def test_a_new_passkey_challenge_on_a_transaction_replaces_the_previous_one(make_client):
    client = make_client()
    authenticator = SoftAuthenticator()
    register_passkey(client, authenticator)
    location = start(client, AuthRequest()).headers["location"]
    csrf, tx = login_page(client, location)  # the page's conditional request: one challenge
    first = passkey_options(client, csrf, tx).json()
    second = passkey_options(client, csrf, tx).json()  # the button: a new one replaces it
    assert first["tx"] == second["tx"] == tx and first["challenge_id"] != second["challenge_id"]
    store = client.app.state.services.store  # type: ignore[attr-defined]
    assert store.get(f"webauthn:{first['challenge_id']}") is None  # deleted, not left to expire

    def verify(options: dict[str, object]) -> Response:
        assertion = authenticator.get(options["publicKey"])  # type: ignore[arg-type]
        return client.post(
            "/login/passkey/verify",
            json={"csrf_token": csrf, "tx": tx, "challenge_id": options["challenge_id"], "credential": assertion},
        )

    assert verify(first).status_code == 401
    answer = verify(second)
    assert answer.status_code == 200 and "redirect" in answer.json(), answer.text


def test_a_replaced_challenge_left_in_the_store_by_a_race_is_still_refused(make_client):
    client = make_client()
    authenticator = SoftAuthenticator()
    register_passkey(client, authenticator)
    csrf, tx = login_page(client, start(client, AuthRequest()).headers["location"])
    store = client.app.state.services.store  # type: ignore[attr-defined]
    first = passkey_options(client, csrf, tx).json()
    record = store.get(f"webauthn:{first['challenge_id']}")
    passkey_options(client, csrf, tx)
    store.set(f"webauthn:{first['challenge_id']}", record, ttl_seconds=300)  # as if written after the swap

    assertion = authenticator.get(first["publicKey"])
    refused = client.post(
        "/login/passkey/verify",
        json={"csrf_token": csrf, "tx": tx, "challenge_id": first["challenge_id"], "credential": assertion},
    )
    assert refused.status_code == 401


# ---- the per-IP key ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        pytest.param("203.0.113.7", "203.0.113.7", id="IPv4 is counted per address"),
        pytest.param("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64", id="IPv6 is counted per /64"),
        pytest.param("2001:db8:1:2::9", "2001:db8:1:2::/64", id="another address of the same /64"),
        pytest.param("::ffff:198.51.100.1", "198.51.100.1", id="an IPv4-mapped address is its IPv4 address"),
        pytest.param("-", "-", id="no address known"),
    ],
)
def test_per_ip_limits_count_ipv4_addresses_and_ipv6_64s(address: str, bucket: str):
    assert ip_bucket(address) == bucket


# ---- the budget itself, and across processes ---------------------------------------------------


def rate_limits(**overrides: str) -> RateLimits:
    return RateLimits(
        load_settings(environ={}, **overrides), digest=lambda value: hashlib.sha256(value.encode()).hexdigest()
    )


def test_admitting_a_step_does_not_spend_the_budget_only_recording_a_failure_does():
    limits = rate_limits(rate_limit_login_failures_ip="2/10minutes")
    assert all(limits.admit("login_failures_ip", "192.0.2.1").allowed for _ in range(50))
    limits.record("login_failures_ip", "192.0.2.1")
    limits.record("login_failures_ip", "192.0.2.1")

    refused = limits.admit("login_failures_ip", "192.0.2.1")
    assert (refused.allowed, refused.scope) == (False, "login_failures_ip") and 0 < refused.retry_after <= 600
    assert limits.admit("login_failures_ip", "192.0.2.2").allowed
    assert limits.admit("login_ip", "192.0.2.1").allowed  # the flood guard is a count of its own


@pytest.fixture
def redis_db14() -> Iterator[object]:
    redis = pytest.importorskip("redis")
    connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        connection.flushdb()
    except redis.RedisError as exc:
        connection.close()
        unavailable(f"Redis is not reachable at {REDIS_URL}: {type(exc).__name__}")
    yield connection
    connection.flushdb()
    connection.close()


def test_the_failure_budget_is_shared_by_every_process_through_redis_per_64(redis_db14):
    first, second = (rate_limits(redis_url=REDIS_URL, rate_limit_login_failures_ip="3/10minutes") for _ in range(2))
    for _ in range(3):
        assert first.admit("login_failures_ip", "2001:db8:7:7::1").allowed
        first.record("login_failures_ip", "2001:db8:7:7::1")

    assert not second.admit("login_failures_ip", "2001:db8:7:7:ffff::2").allowed  # same /64, other process
    assert second.admit("login_failures_ip", "2001:db8:7:8::1").allowed
    keys = [k.decode("utf-8", "replace") for k in redis_db14.scan_iter("*")]  # type: ignore[attr-defined]
    assert keys and not [k for k in keys if "2001" in k or "db8" in k], keys  # digests, never addresses
