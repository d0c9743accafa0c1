"""The passkey step (WebAuthn with user verification: amr hwk or swk, and user; phr on its
own): usernameless or username-first on the login page, or as the next step after a
password or for a step-up to phr. Its challenge is the options for navigator.credentials.get.

Not lockable (DESIGN.md §4): a user-verified passkey assertion is phishing-resistant and
unguessable, so it is still checked on a locked account, and when valid it signs the user
in and clears the lock; a failed assertion counts against its owner."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from idp.login.step import Passed, Rejected, Step, StepContext
from idp.mfa.held import UserFactors
from idp.mfa.passkeys import PasskeyError

SIGN_IN_FAILED = "That passkey could not sign you in."


class PasskeyStep(Step):
    name = "passkey"
    first = True  # usernameless: the passkey names its user
    lockable = False
    failed_words = SIGN_IN_FAILED
    instead_of = ("password", "totp")
    label = "Use a passkey instead"

    def available(self, factors: UserFactors | None) -> bool:
        return factors is None or factors.passkeys > 0

    def account_key(self, ctx: StepContext, form: Mapping[str, object]) -> str | None:
        return None  # the assertion names no account before it is checked

    def view(self, ctx: StepContext, db: Session, form: Mapping[str, object]) -> dict[str, Any]:
        return {}

    def challenge(self, ctx: StepContext, form: Mapping[str, object]) -> dict[str, Any]:
        """The options. A chain whose earlier step proved its user lists that user's passkeys
        and signs in that user only; before that they are usernameless whatever name was
        typed (no enumeration), and a typed name only binds the challenge to its owner."""
        assert ctx.tx is not None
        username = form.get("username")
        passkeys = ctx.services.passkeys
        with ctx.services.sessions.begin() as db:
            if ctx.tx.user_id is not None:
                challenge = passkeys.sign_in_options(db, tx_id=ctx.tx.id, user_id=ctx.tx.user_id)
            else:
                challenge = passkeys.sign_in_options(
                    db, tx_id=ctx.tx.id, username=username if isinstance(username, str) else None
                )
        return {"challenge_id": challenge.id, "publicKey": json.loads(challenge.options_json)}

    def check(self, ctx: StepContext, db: Session, form: Mapping[str, object], prepared: Any) -> Passed | Rejected:
        assert ctx.tx is not None
        passkeys = ctx.services.passkeys
        try:
            signed = passkeys.sign_in(
                db, tx_id=ctx.tx.id, challenge_id=form.get("challenge_id"), credential=form.get("credential")
            )
        except PasskeyError as exc:
            blamed = ctx.tx.user_id or passkeys.owner_of(db, form.get("credential"))
            regression = ("passkey.counter_regression",) if exc.reason == "sign counter went backwards" else ()
            # a credential no account has gets a phantom counter of its own, with the same
            # arithmetic and warnings as a real one: the warnings must not tell which
            # credential ids (listed to a proven user, or leaked elsewhere) are real
            key = passkeys.credential_key(form.get("credential")) if blamed is None else None
            return Rejected(blamed, name=f"passkey\x00{key}" if key else None, reason=exc.reason, audit_also=regression)
        return Passed(signed.methods, signed.user_id, audit={"methods": list(signed.methods)})


STEP = PasskeyStep()
