"""SecondFactors against the database (SQLite and PostgreSQL, through the app's services):
the TOTP secret encrypted and bound to its user, set-up and confirmation, replay refusal
with an injected clock, the lockout counter shared with the password step, and backup codes
(normalised lookup, single use, one Argon2 verification per attempt, per-user lookups)."""

from __future__ import annotations

import base64

import pyotp
import pytest
from sqlalchemy import event, select, update

from idp.db.models import BackupCode, TotpCredential, User
from idp.mfa import backup_codes
from idp.security.keyring import DecryptionFailed
from idp.web.services import Services
from tests.support.clock import START

T0 = START.timestamp() + 25  # 15 s into the step after the app clock's start
ATTEMPTS = 5  # the default lockout_attempts


@pytest.fixture
def services(app) -> Services:  # type: ignore[no-untyped-def]
    return app.state.services


def user_id(services: Services, username: str) -> int:
    with services.sessions() as db:
        uid = db.scalar(select(User.id).where(User.username == username))
        assert uid is not None
        return uid


def failed_logins(services: Services, uid: int) -> int:
    with services.sessions() as db:
        return int(db.scalar(select(User.failed_logins).where(User.id == uid)) or 0)


def totp_row(services: Services, uid: int) -> TotpCredential:
    with services.sessions() as db:
        row = db.scalar(select(TotpCredential).where(TotpCredential.user_id == uid))
        assert row is not None
        db.expunge(row)
        return row


def code_at(secret: str, now: float) -> str:
    return pyotp.TOTP(secret, digits=6, interval=30).at(now)


def wrong_code(secret: str, now: float) -> str:
    window = {code_at(secret, now + d * 30) for d in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in window)


def begin(services: Services, uid: int) -> str:
    with services.sessions.begin() as db:
        return services.factors.begin_totp(db, uid)


def enable_totp(services: Services, uid: int, now: float = T0) -> str:
    secret = begin(services, uid)
    services.clock.set(now)
    with services.sessions.begin() as db:
        assert services.factors.confirm_totp(db, uid, code_at(secret, now)).ok
    return secret


def check(services: Services, uid: int, code: object, now: float):  # type: ignore[no-untyped-def]
    services.clock.set(now)
    with services.sessions.begin() as db:
        return services.factors.check_totp(db, uid, code)


def store_backup_codes(services: Services, uid: int, codes: list[str]) -> None:
    hashed = [(code, services.hashing.hash(code)) for code in codes]
    with services.sessions.begin() as db:
        services.factors.replace_backup_codes(db, uid, hashed)


def find_backup(services: Services, uid: int, typed: object) -> tuple[int, str] | None:
    with services.sessions() as db:
        return services.factors.backup_code_hash(db, uid, typed)


def try_backup(services: Services, uid: int, typed: str):  # type: ignore[no-untyped-def]
    """What the login code step does: one lookup, one Argon2 verification (a dummy one when
    nothing was found), then claim the code or count the failure."""
    found = find_backup(services, uid, typed)
    verified = (
        services.hashing.verify(found[1], backup_codes.normalize(typed) or typed)
        if found
        else services.hashing.verify_dummy(typed)
    )
    with services.sessions.begin() as db:
        return services.factors.use_backup_code(db, uid, found[0] if found else None, verified)


# ---- the secret at rest ------------------------------------------------------------------


def test_secret_is_stored_encrypted(services):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    secret = begin(services, alice)
    stored = bytes(totp_row(services, alice).secret_encrypted)
    assert secret.encode() not in stored
    assert secret.lower().encode() not in stored
    assert base64.b32decode(secret) not in stored  # nor the raw key bytes
    with services.sessions() as db:
        assert services.factors.pending_secret(db, alice) == secret


def test_secret_is_bound_to_its_user(services):  # type: ignore[no-untyped-def]
    alice, bob = user_id(services, "alice"), user_id(services, "bob")
    alice_secret = enable_totp(services, alice)
    enable_totp(services, bob)
    # someone with write access to the database copies alice's authenticator onto bob
    with services.sessions.begin() as db:
        sealed = db.scalar(select(TotpCredential.secret_encrypted).where(TotpCredential.user_id == alice))
        db.execute(update(TotpCredential).where(TotpCredential.user_id == bob).values(secret_encrypted=sealed))
    with pytest.raises(DecryptionFailed):
        services.keyring.decrypt("totp-secret", bytes(sealed), context=f"user:{bob}")
    # alice's code must not let anyone in as bob: refused, or a hard decryption error
    later = T0 + 300
    try:
        result = check(services, bob, code_at(alice_secret, later), later)
    except DecryptionFailed:
        pass
    else:
        assert not result.ok
    # alice's own row still works
    assert check(services, alice, code_at(alice_secret, later), later).ok


# ---- set-up ------------------------------------------------------------------------------


def test_begin_twice_replaces_the_pending_secret(services):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    first = begin(services, alice)
    second = begin(services, alice)
    assert first != second
    with services.sessions() as db:
        assert services.factors.pending_secret(db, alice) == second
        assert len(db.scalars(select(TotpCredential).where(TotpCredential.user_id == alice)).all()) == 1
        assert services.factors.factors_of(db, db.get(User, alice)).totp is False
    services.clock.set(T0)
    assert code_at(first, T0) != code_at(second, T0)
    with services.sessions.begin() as db:
        assert not services.factors.confirm_totp(db, alice, code_at(first, T0)).ok
    with services.sessions() as db:
        assert services.factors.factors_of(db, db.get(User, alice)).totp is False
    with services.sessions.begin() as db:
        assert services.factors.confirm_totp(db, alice, code_at(second, T0)).ok
    with services.sessions() as db:
        assert services.factors.factors_of(db, db.get(User, alice)).totp is True
        assert services.factors.pending_secret(db, alice) is None
    assert totp_row(services, alice).confirmed_at is not None


def test_unconfirmed_secret_does_not_pass_the_login_check(services):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    secret = begin(services, alice)
    assert not check(services, alice, code_at(secret, T0), T0).ok


def test_begin_refused_once_enabled(services):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    secret = enable_totp(services, alice)
    with services.sessions() as db, pytest.raises(ValueError):
        services.factors.begin_totp(db, alice)
    with services.sessions() as db:
        assert (
            services.factors._secret(db.scalar(select(TotpCredential).where(TotpCredential.user_id == alice))) == secret
        )


def test_confirm_with_a_wrong_code_fails_and_counts(services):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    secret = begin(services, alice)
    services.clock.set(T0)
    with services.sessions.begin() as db:
        result = services.factors.confirm_totp(db, alice, wrong_code(secret, T0))
    assert not result.ok and result.failure is not None and result.failure.remaining == ATTEMPTS - 1
    assert failed_logins(services, alice) == 1
    assert totp_row(services, alice).confirmed_at is None


# ---- the login check: replay -------------------------------------------------------------


def test_check_accepts_a_code_once_then_the_next_step(services):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    secret = enable_totp(services, alice, T0)
    # the confirmation's code was used: it does not log in afterwards within its step
    assert not check(services, alice, code_at(secret, T0), T0).ok
    later = T0 + 600
    code = code_at(secret, later)
    assert check(services, alice, code, later).ok
    assert totp_row(services, alice).last_used_step == int(later) // 30
    assert not check(services, alice, code, later).ok  # replay, same step
    assert not check(services, alice, code, later + 30).ok  # still within the window: still a replay
    assert check(services, alice, code_at(secret, later + 30), later + 30).ok  # the next step's code
    assert totp_row(services, alice).last_used_step == int(later) // 30 + 1
    # an earlier (still in-window) code after a later one was used: refused
    assert not check(services, alice, code_at(secret, later), later + 30).ok


def test_check_with_spaces_and_dashes(services):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    secret = enable_totp(services, alice, T0)
    later = T0 + 300
    code = code_at(secret, later)
    assert check(services, alice, f" {code[:3]} {code[3:]} ", later).ok


@pytest.mark.parametrize("typed", ["١٢٣٤٥٦", "１２３４５６"], ids=["arabic-indic", "fullwidth"])
def test_non_ascii_digits_are_a_counted_failure_not_an_error(services, typed):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    enable_totp(services, alice, T0)
    result = check(services, alice, typed, T0 + 300)
    assert not result.ok
    assert failed_logins(services, alice) == 1


# ---- the shared lockout ------------------------------------------------------------------


def test_failed_check_counts_toward_the_lockout(services):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    secret = enable_totp(services, alice, T0)
    later = T0 + 300
    for expected in (1, 2):
        result = check(services, alice, wrong_code(secret, later), later)
        assert not result.ok
        assert result.failure is not None and result.failure.remaining == ATTEMPTS - expected
        assert failed_logins(services, alice) == expected
    assert not check(services, alice, "abc", later).ok  # malformed counts too
    assert failed_logins(services, alice) == 3


def test_mixed_failures_lock_the_account_and_then_a_right_code_is_refused(services):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    secret = enable_totp(services, alice, T0)
    codes = backup_codes.generate()
    store_backup_codes(services, alice, codes)
    later = T0 + 300
    wrong_backup = next(c for c in ("2222-2222", "3333-3333") if c not in codes)

    def wrong_password():  # type: ignore[no-untyped-def]
        with services.sessions.begin() as db:
            return services.lockout.record_failure(db, alice)

    attempts = [
        wrong_password,
        lambda: check(services, alice, wrong_code(secret, later), later).failure,
        lambda: try_backup(services, alice, wrong_backup).failure,
        wrong_password,
        lambda: check(services, alice, wrong_code(secret, later), later).failure,
    ]
    assert len(attempts) == ATTEMPTS
    for count, attempt in enumerate(attempts, start=1):
        failure = attempt()
        assert failure is not None and not failure.was_locked
        assert failed_logins(services, alice) == count
        assert failure.remaining == ATTEMPTS - count
        assert failure.locked_now is (count == ATTEMPTS)
    with services.sessions() as db:
        assert services.lockout.is_locked(db, alice)

    refused = check(services, alice, code_at(secret, later), later)
    assert not refused.ok and refused.failure is not None and refused.failure.was_locked
    refused = try_backup(services, alice, codes[0])
    assert not refused.ok and refused.failure is not None and refused.failure.was_locked
    # nothing was consumed while locked: the step and the backup code are still unused
    assert totp_row(services, alice).last_used_step == int(T0) // 30
    with services.sessions() as db:
        assert services.factors.backup_codes_left(db, alice) == backup_codes.COUNT
    assert failed_logins(services, alice) == ATTEMPTS  # a lock counts nothing more
    # bob is untouched
    assert failed_logins(services, user_id(services, "bob")) == 0


def test_wrong_backup_codes_count_toward_the_lockout(services):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    codes = backup_codes.generate()
    store_backup_codes(services, alice, codes)
    wrong = next(c for c in ("2222-2222", "3333-3333") if c not in codes)
    assert not try_backup(services, alice, wrong).ok
    assert not try_backup(services, alice, "not a code").ok
    # a row found but a failed verification (the caller's Argon2 said no) counts as well
    found = find_backup(services, alice, codes[0])
    assert found is not None
    with services.sessions.begin() as db:
        assert not services.factors.use_backup_code(db, alice, found[0], False).ok
    assert failed_logins(services, alice) == 3
    with services.sessions() as db:
        assert services.factors.backup_codes_left(db, alice) == backup_codes.COUNT


# ---- backup codes ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["exact", "lower", "no-dash", "spaces", "lower-no-dash-spaces"])
def test_backup_code_lookup_normalises(services, variant):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    codes = backup_codes.generate()
    store_backup_codes(services, alice, codes)
    code = codes[3]
    typed = {
        "exact": code,
        "lower": code.lower(),
        "no-dash": code.replace("-", ""),
        "spaces": f"  {code}  ",
        "lower-no-dash-spaces": f" {code.replace('-', '').lower()}\t",
    }[variant]
    found = find_backup(services, alice, typed)
    assert found is not None
    code_id, code_hash = found
    with services.sessions() as db:
        row = db.get(BackupCode, code_id)
        assert row is not None and row.user_id == alice and row.code_hash == code_hash
    # the one candidate is the right code's row: it verifies, no other stored code does
    assert services.hashing.verify(code_hash, backup_codes.normalize(typed) or typed)
    assert not services.hashing.verify(code_hash, codes[4])


@pytest.mark.parametrize(
    "typed",
    ["2222-2222", "ABCD-EFG", "", None, "x" * 1000, "ABCD-EFGH-JKMN"],
    ids=["unknown", "short", "empty", "none", "long", "too-many-groups"],
)
def test_backup_code_lookup_misses(services, typed):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    codes = [c for c in backup_codes.generate() if c != "2222-2222"]
    store_backup_codes(services, alice, codes)
    assert find_backup(services, alice, typed) is None


def test_backup_code_is_single_use(services):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    codes = backup_codes.generate()
    store_backup_codes(services, alice, codes)
    found = find_backup(services, alice, codes[0])
    assert found is not None
    assert try_backup(services, alice, codes[0]).ok
    with services.sessions() as db:
        assert services.factors.backup_codes_left(db, alice) == backup_codes.COUNT - 1
    assert find_backup(services, alice, codes[0]) is None
    assert not try_backup(services, alice, codes[0].lower()).ok
    # claiming the used row directly (a request that raced past the lookup) is refused too
    with services.sessions.begin() as db:
        assert not services.factors.use_backup_code(db, alice, found[0], True).ok
    assert failed_logins(services, alice) == 2
    # the others still work
    assert try_backup(services, alice, codes[1]).ok


def test_replacing_backup_codes_drops_the_old_ones(services):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    old = backup_codes.generate()
    store_backup_codes(services, alice, old)
    new = [c for c in backup_codes.generate() if c not in old]
    store_backup_codes(services, alice, new)
    assert find_backup(services, alice, old[0]) is None
    assert find_backup(services, alice, new[0]) is not None
    with services.sessions() as db:
        assert services.factors.backup_codes_left(db, alice) == len(new)


def test_one_argon2_verification_per_backup_code_attempt(services, monkeypatch):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    codes = backup_codes.generate()
    assert len(codes) == 10
    store_backup_codes(services, alice, codes)

    verifications: list[str] = []
    real_hasher = services.hashing._hasher
    real_verify = services.hashing.verify

    class CountingHasher:  # argon2's PasswordHasher has __slots__: wrap it instead
        def verify(self, stored_hash, password):  # type: ignore[no-untyped-def]
            verifications.append(stored_hash)
            return real_hasher.verify(stored_hash, password)

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(real_hasher, name)

    def counting_verify(stored_hash, password):  # type: ignore[no-untyped-def]
        verifications.append("PasswordHashing.verify")
        return real_verify(stored_hash, password)

    monkeypatch.setattr(services.hashing, "_hasher", CountingHasher())
    monkeypatch.setattr(services.hashing, "verify", counting_verify)
    services.hashing._get_dummy_hash()  # made beforehand: making it is a hash, not a verification

    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(services.engine, "before_cursor_execute", record)
    try:
        for typed in (codes[7].lower(), "2222-2222" if "2222-2222" not in codes else "3333-3333"):
            verifications.clear()
            statements.clear()
            found = find_backup(services, alice, typed)
            # the lookup: no Argon2 at all, one SELECT on backup_codes by (user_id, lookup)
            assert verifications == []
            selects = [s for s in statements if "backup_codes" in s and s.lstrip().upper().startswith("SELECT")]
            assert len(selects) == 1
            assert "lookup" in selects[0] and "user_id" in selects[0]
            assert found is None or isinstance(found[1], str)  # one hash, not a list of them
            verified = (
                services.hashing.verify(found[1], backup_codes.normalize(typed) or typed)
                if found
                else services.hashing.verify_dummy(typed)
            )
            with services.sessions.begin() as db:
                result = services.factors.use_backup_code(db, alice, found[0] if found else None, verified)
            assert result.ok is (found is not None)
            # one PasswordHashing.verify, which is one Argon2 verification
            assert verifications.count("PasswordHashing.verify") == 1
            assert len([v for v in verifications if v != "PasswordHashing.verify"]) == 1
    finally:
        event.remove(services.engine, "before_cursor_execute", record)


def test_same_backup_code_for_two_users_does_not_collide(services):  # type: ignore[no-untyped-def]
    alice, bob = user_id(services, "alice"), user_id(services, "bob")
    shared = "ABCD-EFGH"
    store_backup_codes(services, alice, [shared, "2345-6789"])
    store_backup_codes(services, bob, [shared, "3456-789A"])
    found_alice = find_backup(services, alice, shared)
    found_bob = find_backup(services, bob, shared)
    assert found_alice is not None and found_bob is not None
    assert found_alice[0] != found_bob[0]
    with services.sessions() as db:
        assert db.get(BackupCode, found_alice[0]).user_id == alice  # type: ignore[union-attr]
        assert db.get(BackupCode, found_bob[0]).user_id == bob  # type: ignore[union-attr]
        lookups = db.scalars(select(BackupCode.lookup).where(BackupCode.user_id.in_([alice, bob]))).all()
        assert len(set(lookups)) == 4  # the owner is part of the digest
    # each finds only their own: bob's other code is not alice's
    assert find_backup(services, alice, "3456-789A") is None
    assert find_backup(services, bob, "2345-6789") is None
    # alice using the shared code leaves bob's copy alone
    assert try_backup(services, alice, shared).ok
    assert find_backup(services, alice, shared) is None
    assert find_backup(services, bob, shared) == found_bob
    assert try_backup(services, bob, shared).ok
    assert failed_logins(services, alice) == 0 and failed_logins(services, bob) == 0


def test_disable_totp_removes_the_authenticator_and_backup_codes(services):  # type: ignore[no-untyped-def]
    alice = user_id(services, "alice")
    secret = enable_totp(services, alice, T0)
    codes = backup_codes.generate()
    store_backup_codes(services, alice, codes)
    with services.sessions.begin() as db:
        services.factors.disable_totp(db, alice)
    with services.sessions() as db:
        assert services.factors.factors_of(db, db.get(User, alice), count_backup_codes=True).totp is False
        assert services.factors.backup_codes_left(db, alice) == 0
    assert find_backup(services, alice, codes[0]) is None
    later = T0 + 300
    assert not check(services, alice, code_at(secret, later), later).ok


def test_provisioning_uses_the_issuer_host(services):  # type: ignore[no-untyped-def]
    uri, qr = services.factors.provisioning("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", "alice")
    assert uri.startswith("otpauth://totp/localhost:alice?")
    assert "issuer=localhost" in uri
    assert qr.startswith("data:image/svg+xml")
