"""The TOTP step: a code from the user's authenticator app (amr otp), accepted once per
time step. Its page offers a backup code or a passkey instead."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from idp.login.step import Passed, Rejected, Step, StepContext
from idp.mfa.held import UserFactors


class TotpStep(Step):
    name = "totp"
    failed_words = "That code is not valid."
    empty_words = "Enter the code from your authenticator app."
    label = "Use a code from your authenticator app instead"

    def available(self, factors: UserFactors | None) -> bool:
        return factors is not None and factors.totp

    def filled(self, form: Mapping[str, object]) -> bool:
        code = form.get("code")
        return isinstance(code, str) and bool(code.strip())

    def check(self, ctx: StepContext, db: Session, form: Mapping[str, object], prepared: Any) -> Passed | Rejected:
        assert ctx.tx is not None and ctx.tx.user_id is not None
        user_id, factors = ctx.tx.user_id, ctx.services.factors
        matched = factors.matching_totp(db, user_id, form.get("code"))
        if matched is None:
            return Rejected(user_id)
        credential_id, step = matched
        return Passed(("otp",), user_id, claim=lambda db: factors.claim_totp_step(db, user_id, credential_id, step))


STEP = TotpStep()
