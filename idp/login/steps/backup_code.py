"""The backup-code step: one of the user's single-use backup codes instead of a TOTP code
(amr otp). One Argon2 verification per try, and one even when no code matched; a notice
afterwards says how many codes are left."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from idp.login.outcomes import Notice
from idp.login.step import Passed, Rejected, Step, StepContext
from idp.mfa import backup_codes
from idp.mfa.held import UserFactors


class BackupCodeStep(Step):
    name = "backup_code"
    failed_words = "That backup code is not valid or was already used."
    empty_words = "Enter the backup code."
    instead_of = ("totp",)
    label = "Use a backup code instead"

    def available(self, factors: UserFactors | None) -> bool:
        return factors is not None and factors.totp

    def filled(self, form: Mapping[str, object]) -> bool:
        code = form.get("backup_code")
        return isinstance(code, str) and bool(code.strip())

    def prepare(self, ctx: StepContext, form: Mapping[str, object]) -> int | None:
        """The id of the unused code the typed one is, verified by its Argon2 hash; None."""
        assert ctx.tx is not None and ctx.tx.user_id is not None
        typed = form.get("backup_code")
        with ctx.read() as db:
            found = ctx.services.factors.backup_code_hash(db, ctx.tx.user_id, typed)
        normalized = backup_codes.normalize(typed) or str(typed)
        if found is None:
            ctx.services.hashing.verify_dummy(normalized)
            return None
        return found[0] if ctx.services.hashing.verify(found[1], normalized) else None

    def check(self, ctx: StepContext, db: Session, form: Mapping[str, object], prepared: Any) -> Passed | Rejected:
        assert ctx.tx is not None and ctx.tx.user_id is not None
        user_id, code_id, factors = ctx.tx.user_id, prepared, ctx.services.factors
        if code_id is None:
            return Rejected(user_id)

        def left(db: Session) -> Notice:
            count = factors.backup_codes_left(db, user_id)
            return Notice("backup_used.html", {"left": count, "warn": count <= backup_codes.WARN_AT})

        return Passed(("otp",), user_id, claim=lambda db: factors.claim_backup_code(db, code_id), notice=left)


STEP = BackupCodeStep()
