"""Lockout (predecessor fix F-02, improved): a shared failure counter per account, a lock
that answers exactly like a bad credential (401, same page, same work), warnings from 3
attempts left and on the locking attempt, the same warnings for names with no account, and
counting that cannot overshoot the limit under concurrency."""

from __future__ import annotations

import re
import threading

from sqlalchemy import select

from idp.db.models import AuditEvent, User
from idp.lockout import Lockout
from tests.support.rp import AuthRequest, form_value, start, submit_login
from tests.support.seed import PASSWORD

ATTEMPTS = 5  # the default IDP_LOCKOUT_ATTEMPTS


def login_url(client) -> str:
    return start(client, AuthRequest()).headers["location"]


def error_of(html: str) -> str:
    match = re.search(r'<p class="error" role="alert">(.*?)</p>', html)
    return match.group(1) if match else ""


def comparable(html: str, username: str) -> str:
    """The page minus what legitimately differs: the CSRF token, the transaction id and the
    username echoed back into the form."""
    html = re.sub(r'name="csrf_token" value="[^"]*"', 'name="csrf_token" value="*"', html)
    html = re.sub(r'name="tx" value="[^"]*"', 'name="tx" value="*"', html)
    return html.replace(f'value="{username}"', 'value="*"')


def user_row(client, username: str) -> User:
    with client.app.state.services.sessions() as db:
        user = db.scalar(select(User).where(User.username == username))
        assert user is not None
        db.expunge(user)
        return user


def audit_kinds(client, kind: str) -> list[AuditEvent]:
    with client.app.state.services.sessions() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.kind == kind)))


def test_warnings_from_three_attempts_left_then_a_lock_that_answers_like_a_bad_password(client):
    url = login_url(client)
    messages = []
    for _ in range(ATTEMPTS):
        response = submit_login(client, url, password="wrong password")
        assert response.status_code == 401
        messages.append(error_of(response.text))
    assert messages[0] == "The username or password is incorrect."
    assert "3 attempts left" in messages[1]
    assert "2 attempts left" in messages[2]
    assert "1 attempt left" in messages[3]
    assert "paused for 30 minutes" in messages[4] and "attempts left" not in messages[4]

    # Locked: the right password gets exactly the bad-password answer, no session, never 423.
    response = submit_login(client, url, password=PASSWORD)
    assert response.status_code == 401
    assert error_of(response.text) == "The username or password is incorrect."
    assert "idp_session" not in response.headers.get("set-cookie", "")
    assert user_row(client, "alice").locked_until is not None
    locks = audit_kinds(client, "account.locked")
    assert len(locks) == 1 and locks[0].user_id == user_row(client, "alice").id


def test_unknown_names_get_the_same_sequence_of_pages_as_a_real_account(client):
    url = login_url(client)
    for attempt in range(ATTEMPTS + 2):
        known = submit_login(client, url, username="alice", password="wrong password")
        unknown = submit_login(client, url, username="nobody", password="wrong password")
        assert known.status_code == unknown.status_code == 401, attempt
        assert comparable(known.text, "alice") == comparable(unknown.text, "nobody"), f"attempt {attempt + 1}"
    # the phantom lock is audited too, without a user
    assert {e.user_id is None for e in audit_kinds(client, "account.locked")} == {True, False}


def test_a_locked_account_still_pays_for_the_password_check(client):
    """Same work as a bad password: Argon2 runs for the locked account's attempts too."""
    services = client.app.state.services
    url = login_url(client)
    for _ in range(ATTEMPTS):
        submit_login(client, url, password="wrong password")
    calls = []
    original = services.hashing.verify

    def counting(stored, password):
        calls.append(stored is not None)
        return original(stored, password)

    services.hashing.verify = counting
    try:
        assert submit_login(client, url, password=PASSWORD).status_code == 401
        assert submit_login(client, url, password="wrong password").status_code == 401
    finally:
        services.hashing.verify = original
    assert calls == [True, True]


def test_a_success_resets_the_counter(client):
    url = login_url(client)
    for _ in range(ATTEMPTS - 1):
        submit_login(client, url, password="wrong password")
    assert user_row(client, "alice").failed_logins == ATTEMPTS - 1
    assert submit_login(client, url, password=PASSWORD).status_code == 303
    assert user_row(client, "alice").failed_logins == 0
    with client.app.state.services.sessions() as db:
        record = client.app.state.services.lockout.record_failure(db, user_row(client, "alice").id)
    assert record.remaining == ATTEMPTS - 1 and not record.locked_now


def test_the_lock_ends_after_its_time_and_the_count_starts_again(client, clock):
    url = login_url(client)
    for _ in range(ATTEMPTS):
        submit_login(client, url, password="wrong password")
    clock.advance(client.app.state.services.settings.lockout_seconds)  # 30 minutes pass
    response = submit_login(client, url, password="wrong password")
    assert error_of(response.text) == "The username or password is incorrect."  # 4 left: no warning
    assert user_row(client, "alice").failed_logins == 1
    assert submit_login(client, url, password=PASSWORD).status_code == 303


def test_disabled_accounts_count_and_lock_like_any_other(client):
    from idp.users import disable_user

    with client.app.state.services.sessions.begin() as db:
        disable_user(db, "bob")
    url = login_url(client)
    for _ in range(ATTEMPTS):
        assert submit_login(client, url, username="bob", password=PASSWORD).status_code == 401
    assert user_row(client, "bob").locked_until is not None


def test_concurrent_failures_never_count_past_the_limit(client):
    """Fifty failures at once on one account: exactly one takes the lock and the counter
    stops at the limit (the parallel-request lockout bypass)."""
    services = client.app.state.services
    user_id = user_row(client, "alice").id
    records, barrier = [], threading.Barrier(10)

    def fail_five_times():
        barrier.wait()
        for _ in range(5):
            with services.sessions.begin() as db:
                records.append(services.lockout.record_failure(db, user_id))

    threads = [threading.Thread(target=fail_five_times) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(records) == 50
    assert sum(r.locked_now for r in records) == 1
    assert sum(not r.was_locked for r in records) == ATTEMPTS
    assert user_row(client, "alice").failed_logins == ATTEMPTS
    with services.sessions.begin() as db:  # and a correct password is refused from then on
        assert services.lockout.record_success(db, user_id) is False


def test_phantom_counters_lock_once_under_concurrency(client):
    lockout: Lockout = client.app.state.services.lockout
    records, barrier = [], threading.Barrier(10)

    def fail():
        barrier.wait()
        for _ in range(5):
            records.append(lockout.record_phantom_failure("digest-of-a-name-nobody-has"))

    threads = [threading.Thread(target=fail) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.locked_now for r in records) == 1
    assert sum(not r.was_locked for r in records) <= ATTEMPTS


def test_unlock_clears_the_lock_and_is_audited(client):
    from idp.users import unlock_user

    url = login_url(client)
    for _ in range(ATTEMPTS):
        submit_login(client, url, password="wrong password")
    with client.app.state.services.sessions.begin() as db:
        unlock_user(db, "alice")
    user = user_row(client, "alice")
    assert (user.failed_logins, user.locked_until) == (0, None)
    assert submit_login(client, url, password=PASSWORD).status_code == 303
    unlocked = audit_kinds(client, "account.unlocked")
    assert len(unlocked) == 1 and unlocked[0].detail["was_locked"] is True


def test_the_login_form_keeps_its_fields_after_a_failure(client):
    response = submit_login(client, login_url(client), password="wrong password")
    assert re.search(r'<input[^>]*name="username"[^>]*value="alice"', response.text)
    assert 'name="password"' in response.text and form_value(response.text, "csrf_token")
