"""The login chain's policy as a table: what is asked (the request's acr_values, else the
client's default_acr_values) × what the session has done × the user's factors → the next
step. Pure functions, no app."""

from __future__ import annotations

import pytest

from idp.login.policy import (
    CODE,
    DONE,
    ENROL_PASSKEY,
    ENROL_TOTP,
    PASSKEY,
    PASSWORD,
    UNMET,
    UserFactors,
    acr_of,
    amr_of,
    next_step,
    requested_level,
    required_level,
    satisfies,
)

NONE = UserFactors()
TOTP = UserFactors(totp=True, backup_codes=10)
REQUIRED = UserFactors(require_mfa=True)
BACKUP_ONLY = UserFactors(backup_codes=10)  # codes left over without an authenticator: not a factor


def step_for(acr_values, client_default, methods, factors, can_enrol=True):  # type: ignore[no-untyped-def]
    required = required_level(requested_level(acr_values, client_default), factors)
    return next_step(required, methods, factors, can_enrol=can_enrol)


# (acr_values, client default_acr_values, methods done, user factors, can_enrol, next step)
TABLE = [
    pytest.param(None, (), [], None, True, PASSWORD, id="nothing-done-password"),
    pytest.param("mfa", (), [], None, True, PASSWORD, id="nothing-done-mfa-asked-password-first"),
    pytest.param("phr", (), [], None, True, PASSWORD, id="nothing-done-phr-asked-password-first"),
    pytest.param(None, (), ["otp"], TOTP, True, PASSWORD, id="otp-without-password-password"),
    pytest.param(None, (), ["pwd"], NONE, True, DONE, id="pwd-nothing-asked-no-factor-done"),
    pytest.param(None, (), ["pwd"], BACKUP_ONLY, True, DONE, id="pwd-nothing-asked-backup-codes-only-done"),
    pytest.param("pwd", (), ["pwd"], NONE, True, DONE, id="pwd-pwd-asked-no-factor-done"),
    pytest.param("mfa", (), ["pwd"], TOTP, True, CODE, id="pwd-mfa-asked-totp-code"),
    pytest.param("mfa", (), ["pwd"], NONE, True, ENROL_TOTP, id="pwd-mfa-asked-no-factor-enrol"),
    pytest.param("mfa", (), ["pwd"], NONE, False, UNMET, id="pwd-mfa-asked-no-factor-cannot-enrol-unmet"),
    pytest.param(None, (), ["pwd"], TOTP, True, CODE, id="pwd-nothing-asked-has-totp-code"),
    pytest.param("pwd", (), ["pwd"], TOTP, True, CODE, id="pwd-pwd-asked-has-totp-code"),
    pytest.param(None, (), ["pwd"], REQUIRED, True, ENROL_TOTP, id="pwd-require-mfa-no-factor-enrol"),
    pytest.param(None, (), ["pwd"], REQUIRED, False, UNMET, id="pwd-require-mfa-cannot-enrol-unmet"),
    pytest.param(
        None, (), ["pwd"], UserFactors(totp=True, require_mfa=True), True, CODE, id="pwd-require-mfa-with-totp-code"
    ),
    pytest.param("mfa", (), ["pwd", "otp"], TOTP, True, DONE, id="pwd-otp-mfa-asked-done"),
    pytest.param(None, (), ["pwd", "otp"], TOTP, True, DONE, id="pwd-otp-nothing-asked-done"),
    pytest.param(None, (), ["otp", "pwd"], TOTP, True, DONE, id="otp-pwd-any-order-done"),
    pytest.param("phr", (), ["pwd"], NONE, True, UNMET, id="phr-after-password-unmet"),
    pytest.param("phr", (), ["pwd"], TOTP, True, UNMET, id="phr-after-password-with-totp-unmet"),
    pytest.param("phr", (), ["pwd", "otp"], TOTP, True, UNMET, id="phr-after-pwd-otp-unmet"),
    pytest.param("mfa pwd", (), ["pwd"], NONE, True, DONE, id="mfa-pwd-lowest-wins-done"),
    pytest.param("phr mfa", (), ["pwd"], TOTP, True, CODE, id="phr-mfa-lowest-wins-code"),
    pytest.param("gold", (), ["pwd"], NONE, True, DONE, id="unknown-acr-ignored-done"),
    pytest.param("gold mfa", (), ["pwd"], NONE, True, ENROL_TOTP, id="unknown-acr-beside-mfa-enrol"),
    pytest.param(None, ("mfa",), ["pwd"], NONE, True, ENROL_TOTP, id="client-default-mfa-used-enrol"),
    pytest.param("", ("mfa",), ["pwd"], TOTP, True, CODE, id="empty-acr-values-client-default-code"),
    pytest.param("pwd", ("mfa",), ["pwd"], NONE, True, DONE, id="request-pwd-wins-over-client-default-done"),
    pytest.param("mfa", ("pwd",), ["pwd"], NONE, True, ENROL_TOTP, id="request-mfa-wins-over-client-default-enrol"),
    pytest.param("gold", ("mfa",), ["pwd"], NONE, True, ENROL_TOTP, id="only-unknown-in-request-client-default-used"),
]


@pytest.mark.parametrize(("acr_values", "client_default", "methods", "factors", "can_enrol", "expected"), TABLE)
def test_next_step(acr_values, client_default, methods, factors, can_enrol, expected):  # type: ignore[no-untyped-def]
    assert step_for(acr_values, client_default, methods, factors, can_enrol) == expected


PASSKEY_HELD = UserFactors(passkeys=1)

# An enrolling chain (an invitation's or a recovery's, LoginTransaction.enrolling) may add the
# passkey a phr level needs; any other chain cannot. (level, methods done, factors,
# can_enrol_passkey, next step)
PASSKEY_ENROLMENT = [
    pytest.param("phr", ["pwd"], NONE, True, ENROL_PASSKEY, id="phr-enrolling-no-passkey-enrol-passkey"),
    pytest.param("phr", ["pwd"], NONE, False, UNMET, id="phr-not-enrolling-no-passkey-unmet"),
    pytest.param("phr", ["pwd"], TOTP, True, CODE, id="phr-enrolling-with-totp-the-code-first"),
    pytest.param("phr", ["pwd", "otp"], TOTP, True, ENROL_PASSKEY, id="phr-enrolling-totp-proven-enrol-passkey"),
    pytest.param("phr", ["pwd", "otp"], TOTP, False, UNMET, id="phr-not-enrolling-totp-proven-unmet"),
    pytest.param("phr", ["pwd"], PASSKEY_HELD, True, PASSKEY, id="phr-enrolling-has-a-passkey-signs-in-with-it"),
    pytest.param("phr", ["pwd", "hwk", "user"], PASSKEY_HELD, True, DONE, id="phr-enrolled-then-signed-in-done"),
    pytest.param("phr", [], NONE, True, PASSWORD, id="phr-enrolling-password-first"),
    pytest.param("mfa", ["pwd"], NONE, True, ENROL_TOTP, id="mfa-enrolling-no-factor-still-totp"),
    pytest.param("pwd", ["pwd"], NONE, True, DONE, id="pwd-enrolling-nothing-to-enrol-done"),
]


@pytest.mark.parametrize(("required", "methods", "factors", "can_enrol_passkey", "expected"), PASSKEY_ENROLMENT)
def test_next_step_passkey_enrolment(required, methods, factors, can_enrol_passkey, expected):  # type: ignore[no-untyped-def]
    assert next_step(required, methods, factors, can_enrol_passkey=can_enrol_passkey) == expected


def test_next_step_enrols_no_passkey_unless_asked():
    assert next_step("phr", ["pwd"], NONE) == UNMET


@pytest.mark.parametrize(
    ("acr_values", "client_default", "expected"),
    [
        pytest.param(None, (), "pwd", id="nothing-asked"),
        pytest.param("", (), "pwd", id="empty"),
        pytest.param("pwd", (), "pwd", id="pwd"),
        pytest.param("mfa", (), "mfa", id="mfa"),
        pytest.param("phr", (), "phr", id="phr"),
        pytest.param("mfa pwd", (), "pwd", id="lowest-listed-wins"),
        pytest.param("phr mfa", (), "mfa", id="lowest-of-phr-mfa"),
        pytest.param("gold", (), "pwd", id="unknown-ignored"),
        pytest.param("gold phr", (), "phr", id="unknown-ignored-beside-known"),
        pytest.param(None, ("mfa",), "mfa", id="client-default"),
        pytest.param(None, ("gold",), "pwd", id="client-default-unknown-ignored"),
        pytest.param("pwd", ("mfa",), "pwd", id="request-wins-over-default"),
        pytest.param("phr", ("pwd",), "phr", id="request-phr-wins-over-default"),
    ],
)
def test_requested_level(acr_values, client_default, expected):  # type: ignore[no-untyped-def]
    assert requested_level(acr_values, client_default) == expected


@pytest.mark.parametrize(
    ("requested", "factors", "expected"),
    [
        pytest.param("pwd", None, "pwd", id="unknown-user"),
        pytest.param("pwd", NONE, "pwd", id="no-factor"),
        pytest.param("pwd", TOTP, "mfa", id="totp-raises-to-mfa"),
        pytest.param("pwd", REQUIRED, "mfa", id="require-mfa-raises-to-mfa"),
        pytest.param("mfa", NONE, "mfa", id="mfa-stays"),
        pytest.param("phr", TOTP, "phr", id="never-lowered"),
    ],
)
def test_required_level(requested, factors, expected):  # type: ignore[no-untyped-def]
    assert required_level(requested, factors) == expected


@pytest.mark.parametrize(
    ("methods", "acr", "amr"),
    [
        pytest.param([], "pwd", [], id="nothing"),
        pytest.param(["pwd"], "pwd", ["pwd"], id="pwd"),
        pytest.param(["pwd", "otp"], "mfa", ["pwd", "otp", "mfa"], id="pwd-otp"),
        pytest.param(["pwd", "pwd"], "pwd", ["pwd"], id="duplicate-pwd-collapses"),
        pytest.param(["pwd", "otp", "pwd", "otp"], "mfa", ["pwd", "otp", "mfa"], id="duplicates-collapse"),
        pytest.param(["pwd", "otp", "mfa"], "mfa", ["pwd", "otp", "mfa"], id="mfa-not-doubled"),
        pytest.param(["otp"], "pwd", ["otp"], id="otp-alone-is-not-mfa"),
        pytest.param(["pwd", "magic"], "pwd", ["pwd"], id="unknown-method-dropped"),
    ],
)
def test_acr_and_amr(methods, acr, amr):  # type: ignore[no-untyped-def]
    assert acr_of(methods) == acr
    assert amr_of(methods) == amr


@pytest.mark.parametrize(
    ("acr", "required", "expected"),
    [
        pytest.param("pwd", "pwd", True, id="pwd-pwd"),
        pytest.param("pwd", "mfa", False, id="pwd-mfa"),
        pytest.param("mfa", "pwd", True, id="mfa-pwd"),
        pytest.param("mfa", "phr", False, id="mfa-phr"),
        pytest.param("gold", "pwd", False, id="unknown-acr-satisfies-nothing"),
    ],
)
def test_satisfies(acr, required, expected):  # type: ignore[no-untyped-def]
    assert satisfies(acr, required) is expected
