"""A toy login step, as a new factor would be added: this module, its template
(steps/pin.html beside it) and one line in the list of steps the app is built with. It
stands in for an authenticator code (amr otp) for anyone who has set up an authenticator,
and knows one PIN. For tests only."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from idp.login.step import Passed, Rejected, Step, StepContext
from idp.mfa.held import UserFactors

PIN = "4242"


class PinStep(Step):
    name = "pin"
    instead_of = ("totp",)
    label = "Use your PIN instead"
    failed_words = "That PIN is not right."
    empty_words = "Enter your PIN."
    template_dir = str(Path(__file__).parent)

    def available(self, factors: UserFactors | None) -> bool:
        return factors is not None and factors.totp

    def filled(self, form: Mapping[str, object]) -> bool:
        return isinstance(form.get("pin"), str) and bool(form["pin"])

    def check(self, ctx: StepContext, db: Session, form: Mapping[str, object], prepared: Any) -> Passed | Rejected:
        assert ctx.tx is not None and ctx.tx.user_id is not None
        typed = form.get("pin")
        if isinstance(typed, str) and hmac.compare_digest(typed.encode(), PIN.encode()):
            return Passed(("otp",), ctx.tx.user_id)
        return Rejected(ctx.tx.user_id)


STEP = PinStep()
