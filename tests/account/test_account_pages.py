"""/account (DESIGN.md §3, §4): TOTP set-up shows the key and a QR code and stores the key
encrypted; confirming enables TOTP and shows 10 backup codes once; turning it off and new
backup codes need the password and a fresh code; a code is accepted once; admin-enforced
MFA cannot be turned off; CSRF, rate limits (before Argon2) and no-store on every answer.

Time comes from the app's injected clock (the `clock` fixture): no test waits for a TOTP window."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

import pyotp
import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from idp.app import create_app
from idp.db.models import AuditEvent, BackupCode, TotpCredential, User
from idp.settings import Settings
from idp.state.memory import MemoryStore
from tests.account.support import sign_in_with_code
from tests.conftest import ISSUER
from tests.support.clock import ManualClock
from tests.support.rp import form_value
from tests.support.seed import PASSWORD, seed

CODE_FORMAT = re.compile(r"^[A-Z0-9]{4}-[A-Z0-9]{4}$")


# ---- a scripted browser -------------------------------------------------------------------------


def sign_in(client: TestClient, username: str = "alice") -> None:
    csrf = form_value(client.get("/login").text, "csrf_token")
    response = client.post(
        "/login", data={"csrf_token": csrf, "username": username, "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    assert "idp_session" in client.cookies


def csrf_of(client: TestClient) -> str:
    return form_value(client.get("/account").text, "csrf_token")


def post(client: TestClient, path: str, **fields: str):  # type: ignore[no-untyped-def]
    response = client.post(path, data={"csrf_token": csrf_of(client), **fields}, follow_redirects=False)
    assert response.headers["cache-control"] == "no-store", path
    return response


def begin_setup(client: TestClient) -> str:
    response = post(client, "/account/totp/setup")
    assert response.status_code == 200, response.text
    return secret_on(response.text)


def secret_on(html: str) -> str:
    match = re.search(r'data-totp-secret="([A-Z2-7]+)"', html)
    assert match, "no data-totp-secret on the page"
    return match.group(1)


def code(secret: str, clock: ManualClock) -> str:
    return pyotp.TOTP(secret).at(clock.time())


def codes_on(html: str) -> list[str]:
    return re.findall(r'class="backup-code">([^<]*)<', html)


def enable_totp(client: TestClient, clock: ManualClock) -> tuple[str, list[str]]:
    """Signed in as alice, TOTP set up and confirmed at the clock's time: (secret, backup codes).
    Then alice signs in again with her password and a code, as she must before adding a
    credential now that she has a second factor (new backup codes need an mfa session)."""
    sign_in(client)
    secret = begin_setup(client)
    response = post(client, "/account/totp/confirm", code=code(secret, clock))
    assert response.status_code == 200, response.text
    clock.advance(30)  # the confirming code is used up
    sign_in_with_code(client, secret, clock.time())
    clock.advance(30)
    return secret, codes_on(response.text)


# ---- the database, read directly ------------------------------------------------------------------


def db_of(client: TestClient):  # type: ignore[no-untyped-def]
    return client.app.state.services.sessions()  # type: ignore[attr-defined]


def alice_id(client: TestClient) -> int:
    with db_of(client) as db:
        return db.scalar(select(User.id).where(User.username == "alice"))  # type: ignore[no-any-return]


def totp_row(client: TestClient) -> TotpCredential | None:
    with db_of(client) as db:
        return db.scalar(select(TotpCredential).where(TotpCredential.user_id == alice_id(client)))


def totp_enabled(client: TestClient) -> bool:
    row = totp_row(client)
    return row is not None and row.confirmed_at is not None


def backup_rows(client: TestClient) -> list[tuple[int, str, str]]:
    with db_of(client) as db:
        return [
            tuple(r)
            for r in db.execute(
                select(BackupCode.id, BackupCode.lookup, BackupCode.code_hash).where(
                    BackupCode.user_id == alice_id(client)
                )
            )
        ]


def audit_kinds(client: TestClient) -> list[str]:
    with db_of(client) as db:
        return list(
            db.scalars(select(AuditEvent.kind).where(AuditEvent.kind.startswith("mfa.")).order_by(AuditEvent.id))
        )


# ---- the account page -----------------------------------------------------------------------------


def test_the_account_page_needs_a_session(client):
    response = client.get("/account", follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert response.headers["cache-control"] == "no-store"


def test_the_account_page_shows_the_user_and_offers_set_up(client):
    sign_in(client)
    response = client.get("/account")

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert "alice" in response.text
    assert "not set up" in response.text
    assert 'action="/account/totp/setup"' in response.text
    assert 'action="/account/totp/disable"' not in response.text


# ---- set-up and confirmation ----------------------------------------------------------------------


def test_set_up_shows_the_key_and_a_qr_code_and_stores_the_key_encrypted(client):
    sign_in(client)
    response = post(client, "/account/totp/setup")

    html = response.text
    secret = secret_on(html)
    assert len(secret) == 32
    assert " ".join(secret[i : i + 4] for i in range(0, 32, 4)) in html  # typed in groups of four
    assert re.search(r'<img[^>]+src="data:image/svg\+xml[^"]+"[^>]+alt="QR code for your authenticator app"', html)
    field = re.search(r"<input[^>]*name=\"code\"[^>]*>", html)
    assert field and 'autocomplete="one-time-code"' in field.group(0) and 'inputmode="numeric"' in field.group(0)
    assert 'action="/account/totp/confirm"' in html
    row = totp_row(client)
    assert row is not None and row.confirmed_at is None
    assert secret.encode() not in row.secret_encrypted
    assert secret.lower().encode() not in row.secret_encrypted


def test_setting_up_again_before_confirming_replaces_the_key(client, clock):
    sign_in(client)
    first = begin_setup(client)
    second = begin_setup(client)
    assert first != second

    assert post(client, "/account/totp/confirm", code=code(first, clock)).status_code == 401
    assert not totp_enabled(client)
    assert post(client, "/account/totp/confirm", code=code(second, clock)).status_code == 200
    assert totp_enabled(client)


def test_a_wrong_code_does_not_enable_totp(client, clock):
    sign_in(client)
    secret = begin_setup(client)
    wrong = f"{(int(code(secret, clock)) + 1) % 1_000_000:06d}"

    response = post(client, "/account/totp/confirm", code=wrong)

    assert response.status_code == 401
    assert "That code is not right." in response.text
    assert secret_on(response.text) == secret  # the same set-up, to try again
    assert not totp_enabled(client)
    assert backup_rows(client) == []
    assert "mfa.totp.enabled" not in audit_kinds(client)


def test_confirming_without_a_code_is_bad_input(client, clock):
    sign_in(client)
    begin_setup(client)

    assert post(client, "/account/totp/confirm").status_code == 400
    assert not totp_enabled(client)


def test_confirming_enables_totp_and_shows_ten_backup_codes_once(client, clock):
    sign_in(client)
    secret = begin_setup(client)

    response = post(client, "/account/totp/confirm", code=code(secret, clock))

    assert response.status_code == 200
    assert "Save your backup codes" in response.text
    codes = codes_on(response.text)
    assert len(codes) == len(set(codes)) == 10
    assert all(CODE_FORMAT.match(c) for c in codes), codes
    assert totp_enabled(client)
    rows = backup_rows(client)
    assert len(rows) == 10
    assert all(h.startswith("$argon2id$") for _, _, h in rows)
    assert not any(c in h or c in lookup for c in codes for _, lookup, h in rows)
    # each addition audited: the set-up, the authenticator, its first backup codes
    assert audit_kinds(client) == ["mfa.totp.setup_started", "mfa.totp.enabled", "mfa.backup_codes.generated"]

    page = client.get("/account").text
    assert "enabled" in page and "not set up" not in page
    assert re.search(r'class="backup-codes-left">10<', page)
    assert not any(c in page for c in codes)


def test_set_up_is_refused_once_totp_is_enabled(client, clock):
    enable_totp(client, clock)

    assert post(client, "/account/totp/setup").status_code == 409
    assert totp_enabled(client)


@pytest.mark.parametrize(
    "used, warning",
    [
        (6, None),
        (7, "Only 3 backup codes left."),
        (9, "Only 1 backup code left."),
        (10, "You have no backup codes left."),
    ],
    ids=["4 left: no warning", "3 left", "1 left", "none left"],
)
def test_the_page_urges_new_codes_when_few_are_left(client, clock, used, warning):
    enable_totp(client, clock)
    ids = [i for i, _, _ in backup_rows(client)][:used]
    with client.app.state.services.sessions.begin() as db:  # type: ignore[attr-defined]
        db.execute(update(BackupCode).where(BackupCode.id.in_(ids)).values(used_at=clock.now()))

    page = " ".join(client.get("/account").text.split())

    assert re.search(rf'class="backup-codes-left">{10 - used}<', page)
    if warning is None:
        assert "Generate new ones now" not in page
    else:
        assert warning in page and "Generate new ones now" in page


# ---- turning it off, new backup codes -------------------------------------------------------------


def test_a_code_is_accepted_only_once(client, clock):
    sign_in(client)
    secret = begin_setup(client)
    used = code(secret, clock)
    assert post(client, "/account/totp/confirm", code=used).status_code == 200

    # the same code at the same instant: a replay
    response = post(client, "/account/totp/disable", password=PASSWORD, code=used)

    assert response.status_code == 401
    assert totp_enabled(client)


@pytest.mark.parametrize("path", ["/account/totp/disable", "/account/backup-codes"], ids=["disable", "regenerate"])
@pytest.mark.parametrize("case", ["wrong password", "wrong code", "no password", "no code"])
def test_password_and_code_are_both_required(client, clock, path, case):
    secret, codes = enable_totp(client, clock)
    before = backup_rows(client)
    right = code(secret, clock)
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    fields = {
        "wrong password": {"password": PASSWORD + "x", "code": right},
        "wrong code": {"password": PASSWORD, "code": wrong},
        "no password": {"code": right},
        "no code": {"password": PASSWORD},
    }[case]

    response = post(client, path, **fields)

    assert response.status_code == (400 if case.startswith("no ") else 401)
    assert totp_enabled(client)
    assert backup_rows(client) == before
    assert not any(c in response.text for c in codes)


def test_a_wrong_password_does_not_use_up_the_code(client, clock):
    """The password is checked first and the code only after a right one: a refused
    attempt leaves the code for the user's next try."""
    secret, _ = enable_totp(client, clock)
    fresh = code(secret, clock)

    assert post(client, "/account/totp/disable", password="not it", code=fresh).status_code == 401
    assert post(client, "/account/totp/disable", password=PASSWORD, code=fresh).status_code == 303


def test_failures_count_toward_the_lockout(client, clock):
    secret, _ = enable_totp(client, clock)

    post(client, "/account/totp/disable", password="not it", code=code(secret, clock))
    post(client, "/account/backup-codes", password=PASSWORD, code="000000")

    with db_of(client) as db:
        assert db.scalar(select(User.failed_logins).where(User.username == "alice")) == 2


def test_password_and_code_turn_totp_off(client, clock):
    secret, _ = enable_totp(client, clock)

    response = post(client, "/account/totp/disable", password=PASSWORD, code=code(secret, clock))

    assert response.status_code == 303
    assert response.headers["location"] == "/account"
    assert totp_row(client) is None
    assert backup_rows(client) == []
    assert "mfa.totp.disabled" in audit_kinds(client)
    assert "not set up" in client.get("/account").text


def test_new_backup_codes_replace_every_old_one(client, clock):
    secret, old_codes = enable_totp(client, clock)
    old_rows = backup_rows(client)

    response = post(client, "/account/backup-codes", password=PASSWORD, code=code(secret, clock))

    assert response.status_code == 200
    new_codes = codes_on(response.text)
    assert len(set(new_codes)) == 10 and all(CODE_FORMAT.match(c) for c in new_codes)
    assert not set(new_codes) & set(old_codes)
    new_rows = backup_rows(client)
    assert len(new_rows) == 10
    assert not {lookup for _, lookup, _ in new_rows} & {lookup for _, lookup, _ in old_rows}
    assert "mfa.backup_codes.regenerated" in audit_kinds(client)
    assert totp_enabled(client)


def test_an_enforced_second_factor_cannot_be_turned_off(client, clock):
    secret, _ = enable_totp(client, clock)
    with client.app.state.services.sessions.begin() as db:  # type: ignore[attr-defined]
        db.execute(update(User).where(User.username == "alice").values(require_mfa=True))

    page = client.get("/account").text
    response = post(client, "/account/totp/disable", password=PASSWORD, code=code(secret, clock))

    assert 'action="/account/totp/disable"' not in page
    assert "administrator requires a second factor" in page
    assert response.status_code == 403
    assert "administrator requires a second factor" in response.text
    assert totp_enabled(client)


# ---- every POST -----------------------------------------------------------------------------------

POSTS = ["/account/totp/setup", "/account/totp/confirm", "/account/totp/disable", "/account/backup-codes"]


@pytest.mark.parametrize("path", POSTS)
def test_every_form_needs_its_csrf_token(client, path):
    sign_in(client)
    client.get("/account")  # the browser has its CSRF cookie

    response = client.post(path, data={"password": PASSWORD, "code": "123456"}, follow_redirects=False)

    assert response.status_code == 403
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", POSTS)
def test_every_form_needs_a_session(client, path):
    csrf = form_value(client.get("/login").text, "csrf_token")

    response = client.post(path, data={"csrf_token": csrf}, follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"] == "/login"


@pytest.mark.parametrize("path", POSTS)
def test_an_oversized_form_is_bad_input(client, path):
    sign_in(client)

    response = client.post(path, data={"csrf_token": csrf_of(client), "password": "x" * 5000}, follow_redirects=False)

    assert response.status_code == 400


@pytest.fixture
def limited_client(settings: Settings, clock: ManualClock) -> Iterator[TestClient]:
    """One sign-in and two account attempts a minute for an account."""
    app = create_app(
        dataclasses.replace(settings, rate_limit_login_account="3/minute"), store=MemoryStore(), clock=clock
    )
    seed(app.state.services)
    with TestClient(app, base_url=ISSUER) as client:
        yield client


def test_the_account_rate_limit_refuses_before_argon2(limited_client, clock, monkeypatch):
    client = limited_client
    services = client.app.state.services  # type: ignore[attr-defined]
    sign_in(client)  # attempt 1 of 3 for alice
    user_id = alice_id(client)
    with services.sessions.begin() as db:  # enabled directly: the set-up's own POSTs would count
        secret = services.factors.begin_totp(db, user_id)
        assert services.factors.confirm_totp(db, user_id, code(secret, clock)).ok
    calls: list[object] = []
    original = services.hashing.verify_async

    async def counting_verify(stored_hash, password):  # type: ignore[no-untyped-def]
        calls.append(stored_hash)
        return await original(stored_hash, password)

    monkeypatch.setattr(services.hashing, "verify_async", counting_verify)
    statuses = [post(client, "/account/totp/disable", password="not it", code="000000").status_code for _ in range(3)]

    assert statuses == [401, 401, 429]
    assert len(calls) == 2, "a refused attempt must not reach Argon2"
    assert totp_enabled(client)
