"""The enrolment an admin (`idp user require-mfa`) or a client's default_acr_values can
demand of a user without a second factor: set up an authenticator app within the chain
(amr otp), then see ten new backup codes once. The ten Argon2 hashes run only once the code
is right (a wrong code must not cost ten hashes); nothing is stored unless it is."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from idp.audit.trail import record_audit
from idp.db.models import User
from idp.login.outcomes import Notice
from idp.login.step import Passed, Rejected, Step, StepContext
from idp.mail import notices
from idp.mfa import backup_codes, totp


@dataclass(frozen=True)
class Matched:
    credential_id: int
    step: int
    codes: list[str]
    hashed: list[tuple[str, str]]


def _binding_key(ctx: StepContext) -> str:
    assert ctx.tx is not None
    return f"enrol-totp:{ctx.tx.id}"


def _digest(ctx: StepContext, secret: str) -> str:
    return str(ctx.services.keyring.digest("enrol-totp-secret:" + secret))


def _bound_to(ctx: StepContext, secret: str) -> bool:
    """The pending secret is the one this chain showed."""
    shown = ctx.services.store.get(_binding_key(ctx))
    return shown is not None and hmac.compare_digest(shown, _digest(ctx, secret).encode())


class EnrolTotpStep(Step):
    name = "enrol_totp"
    failed_words = "That code is not valid."
    empty_words = "Enter the code from your authenticator app."

    def filled(self, form: Mapping[str, object]) -> bool:
        code = form.get("code")
        return isinstance(code, str) and bool(code.strip())

    def view(self, ctx: StepContext, db: Session, form: Mapping[str, object]) -> dict[str, Any]:
        """The secret this chain set up, as text and as a QR code: begun on the chain's first
        visit and kept on reloads, but never another chain's pending secret (whoever else
        holds the password would learn the authenticator the user is about to confirm)."""
        assert ctx.tx is not None and ctx.tx.user_id is not None
        factors, store = ctx.services.factors, ctx.services.store
        user = db.get(User, ctx.tx.user_id)
        assert user is not None
        secret = factors.pending_secret(db, user.id)
        if secret is None or not _bound_to(ctx, secret):
            try:
                secret = factors.begin_totp(db, user.id)
            except ValueError:  # enabled meanwhile (this chain's other request won the race)
                return {"secret": None, "onward": f"/login?tx={ctx.tx.id}"}
            store.set(_binding_key(ctx), _digest(ctx, secret).encode(), ttl_seconds=ctx.services.ttl_seconds)
        _, qr = factors.provisioning(secret, user.username)
        return {"secret": secret, "secret_grouped": totp.grouped(secret), "qr_data_uri": qr}

    def prepare(self, ctx: StepContext, form: Mapping[str, object]) -> Matched | None:
        assert ctx.tx is not None and ctx.tx.user_id is not None
        with ctx.read() as db:
            pending = ctx.services.factors.pending_secret(db, ctx.tx.user_id)
            if pending is None or not _bound_to(ctx, pending):
                return None  # not the secret this chain showed: refused like a wrong code
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
            ("otp",),
            user_id,
            claim=enable,
            notice=lambda db: Notice("backup_codes.html", {"codes": matched.codes}),
            mail=(notices.TOTP_ENABLED,),  # as when it is turned on at /account
        )


STEP = EnrolTotpStep()
