"""The enrolment a group's `--min-acr phr` demands of a user without a passkey, in a chain
that may enrol (an invitation's or a recovery's, LoginTransaction.enrolling): register a
passkey within the chain (WebAuthn registration, idp/mfa/passkeys.py). Its challenge is the
options for navigator.credentials.create, bound to this transaction and its user.

Enrolment proves nothing at sign-in (no amr): once the passkey is stored the policy names
the passkey step, and the assertion made with it is what makes the session phr. The
registration is verified in `check` and stored by its claim, so nothing is written unless
every check of the request passed."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.orm import Session

from idp.audit.trail import record_audit
from idp.db.models import User
from idp.login.refusals import NotThisStep
from idp.login.step import Passed, Rejected, Step, StepContext
from idp.mail import notices
from idp.mfa.passkeys import PasskeyError, Registration

NOT_ADDED = "The passkey could not be added. Try again."


class EnrolPasskeyStep(Step):
    name = "enrol_passkey"
    failed_words = NOT_ADDED
    empty_words = NOT_ADDED

    def filled(self, form: Mapping[str, object]) -> bool:
        return isinstance(form.get("challenge_id"), str) and isinstance(form.get("credential"), (dict, str))

    def challenge(self, ctx: StepContext, form: Mapping[str, object]) -> dict[str, Any]:
        """Registration options for the chain's user (the flow has checked it is this step's
        turn): discoverable, user-verified, excluding nothing the user could hold yet."""
        assert ctx.tx is not None and ctx.tx.user_id is not None
        with ctx.services.sessions.begin() as db:
            user = db.get(User, ctx.tx.user_id)
            if user is None:
                raise NotThisStep()
            challenge = ctx.services.passkeys.registration_options(db, user, tx_id=ctx.tx.id)
        return {"challenge_id": challenge.id, "publicKey": json.loads(challenge.options_json)}

    def check(self, ctx: StepContext, db: Session, form: Mapping[str, object], prepared: Any) -> Passed | Rejected:
        assert ctx.tx is not None and ctx.tx.user_id is not None
        user_id, passkeys = ctx.tx.user_id, ctx.services.passkeys
        user = db.get(User, user_id)
        if user is None:  # deleted meanwhile: the flow's end refuses the chain anyway
            return Rejected(user_id, reason="user gone", refusal=NOT_ADDED)
        try:
            registration = passkeys.verify_registration(
                db,
                user,
                form.get("challenge_id"),
                form.get("credential"),
                form.get("name"),
                expected_tx_id=ctx.tx.id,
            )
        except PasskeyError as exc:
            # not a guessed secret but a ceremony that went wrong: said (400) and audited as
            # /account audits it, counted nowhere
            return Rejected(user_id, reason=exc.reason, refusal=NOT_ADDED, audit_also=("passkey.registration_failed",))
        return Passed((), user_id, claim=self._storing(ctx, registration), mail=(notices.PASSKEY_ADDED,))

    @staticmethod
    def _storing(ctx: StepContext, registration: Registration) -> Callable[[Session], bool]:
        """The claim: the passkey stored and audited as /account does, in the flow's one
        write transaction."""

        def store(db: Session) -> bool:
            row = ctx.services.passkeys.add(db, registration)
            record_audit(
                db,
                "passkey.added",
                user_id=registration.user_id,
                ip=ctx.attempt.ip,
                user_agent=ctx.attempt.user_agent,
                outcome="success",
                passkey=row.id,
                name=row.name,
                during="login",
            )
            return True

        return store


STEP = EnrolPasskeyStep()
