"""The enrolment an admin (`idp user require-mfa`) or a client's default_acr_values can
demand of a user without a second factor: set up an authenticator app within the chain
(amr otp), then see ten new backup codes once. The ten Argon2 hashes run only once the code
is right (a wrong code must not cost ten hashes); nothing is stored unless it is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from idp.audit.trail import record_audit
from idp.db.models import User
from idp.login.outcomes import Notice
from idp.login.step import Passed, Rejected, Step, StepContext
from idp.mfa import backup_codes, totp


@dataclass(frozen=True)
class Matched:
    credential_id: int
    step: int
    codes: list[str]
    hashed: list[tuple[str, str]]


class EnrolTotpStep(Step):
    name = "enrol_totp"
    failed_words = "That code is not valid."
    empty_words = "Enter the code from your authenticator app."

    def filled(self, form: Mapping[str, object]) -> bool:
        code = form.get("code")
        return isinstance(code, str) and bool(code.strip())

    def view(self, ctx: StepContext, db: Session, form: Mapping[str, object]) -> dict[str, Any]:
        """The pending secret (begun here on the first visit) as text and as a QR code."""
        assert ctx.tx is not None and ctx.tx.user_id is not None
        factors = ctx.services.factors
        user = db.get(User, ctx.tx.user_id)
        assert user is not None
        secret = factors.pending_secret(db, user.id) or factors.begin_totp(db, user.id)
        _, qr = factors.provisioning(secret, user.username)
        return {"secret": secret, "secret_grouped": totp.grouped(secret), "qr_data_uri": qr}

    def prepare(self, ctx: StepContext, form: Mapping[str, object]) -> Matched | None:
        assert ctx.tx is not None and ctx.tx.user_id is not None
        with ctx.read() as db:
            matched = ctx.services.factors.matching_totp(db, ctx.tx.user_id, form.get("code"), pending=True)
        if matched is None:
            return None
        codes = backup_codes.generate()
        return Matched(matched[0], matched[1], codes, [(code, ctx.services.hashing.hash(code)) for code in codes])

    def check(self, ctx: StepContext, db: Session, form: Mapping[str, object], prepared: Any) -> Passed | Rejected:
        assert ctx.tx is not None and ctx.tx.user_id is not None
        user_id, matched, factors, attempt = ctx.tx.user_id, prepared, ctx.services.factors, ctx.attempt
        if matched is None:
            return Rejected(user_id)

        def enable(db: Session) -> bool:
            if not factors.claim_totp_step(db, user_id, matched.credential_id, matched.step, confirm=True):
                return False
            factors.replace_backup_codes(db, user_id, matched.hashed)
            record_audit(
                db,
                "mfa.totp.enabled",
                user_id=user_id,
                ip=attempt.ip,
                user_agent=attempt.user_agent,
                outcome="success",
                during="login",
            )
            return True

        return Passed(
            ("otp",), user_id, claim=enable, notice=lambda db: Notice("backup_codes.html", {"codes": matched.codes})
        )


STEP = EnrolTotpStep()
