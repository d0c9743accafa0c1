"""The login chain's steps, one module each (idp/login/step.py says what a step is). The
composition root (idp/app.py) registers them with the flow: `STANDARD_STEPS`."""

from __future__ import annotations

from idp.login.steps import backup_code, enrol_passkey, enrol_totp, new_password, passkey, password, totp

STANDARD_STEPS = (
    password.STEP,
    totp.STEP,
    backup_code.STEP,
    passkey.STEP,
    enrol_totp.STEP,
    enrol_passkey.STEP,
    new_password.STEP,
)
