"""The new-password step: after `idp user set-password --must-change` the next sign-in
chooses a password of the user's own before any code is issued, once every factor asked
for is proven (policy.NEW_PASSWORD). The new password is judged by the one policy (NIST SP
800-63B-4 §3.1.1.2) and must differ from the one the admin gave. It replaces exactly the
hash the chain verified, the flag is cleared, the user's other sessions end and every grant
is revoked (whoever else knew the given password keeps nothing), audited, all in the
flow's one write transaction. A refused password is no failed credential: counted nowhere."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from idp.audit.trail import record_audit
from idp.db.models import User
from idp.links import records as link_records
from idp.login.sessions import end_all_sessions, find_session
from idp.login.step import Passed, Rejected, Step, StepContext
from idp.revocation import revoke_all_grants
from idp.security.password_policy import (
    MIN_LENGTH_SINGLE_FACTOR,
    MIN_LENGTH_WITH_SECOND_FACTOR,
    PasswordRejected,
    check_password,
)

NOT_THE_SAME = "The two passwords are not the same."
SAME_AS_GIVEN = "Choose a password other than the one you were given."


@dataclass(frozen=True)
class Prepared:
    refusal: str | None = None  # why the policy refused it (shown), else None
    rule: str | None = None  # the refusal's stable name, for the audit trail
    old_hash: str | None = field(default=None, repr=False)  # the hash the new one replaces
    new_hash: str | None = field(default=None, repr=False)


def _text(form: Mapping[str, object], key: str) -> str:
    value = form.get(key)
    return value if isinstance(value, str) else ""


class NewPasswordStep(Step):
    name = "new_password"
    failed_words = "Choose a new password."
    empty_words = "Enter a new password, then the same again."

    def filled(self, form: Mapping[str, object]) -> bool:
        return bool(_text(form, "new_password")) and bool(_text(form, "confirm_password"))

    def view(self, ctx: StepContext, db: Session, form: Mapping[str, object]) -> dict[str, Any]:
        assert ctx.tx is not None and ctx.tx.user_id is not None
        user = db.get(User, ctx.tx.user_id)
        second = ctx.factors is not None and ctx.factors.has_second_factor
        return {
            "username": user.username if user else "",
            "password_min": MIN_LENGTH_WITH_SECOND_FACTOR if second else MIN_LENGTH_SINGLE_FACTOR,
        }

    def prepare(self, ctx: StepContext, form: Mapping[str, object]) -> Prepared:
        """The policy first (no Argon2 for a password that cannot be set), then whether it is
        the given one, then its hash."""
        assert ctx.tx is not None and ctx.tx.user_id is not None
        new = _text(form, "new_password")
        if new != _text(form, "confirm_password"):
            return Prepared(NOT_THE_SAME, "not_the_same")
        with ctx.read() as db:
            user = db.get(User, ctx.tx.user_id)
            assert user is not None  # the chain's user: _state_of found them
            username, email, old_hash = user.username, user.email, user.password_hash
        try:
            second = ctx.factors is not None and ctx.factors.has_second_factor
            check_password(new, username=username, email=email, has_second_factor=second)
        except PasswordRejected as exc:
            return Prepared(exc.reason, exc.rule)
        hashing = ctx.services.hashing
        if old_hash is not None and hashing.verify(old_hash, new):
            return Prepared(SAME_AS_GIVEN, "same_as_given")
        return Prepared(old_hash=old_hash, new_hash=hashing.hash(new))

    def check(self, ctx: StepContext, db: Session, form: Mapping[str, object], prepared: Any) -> Passed | Rejected:
        assert ctx.tx is not None and ctx.tx.user_id is not None
        user_id, ready, attempt, services = ctx.tx.user_id, prepared, ctx.attempt, ctx.services
        assert isinstance(ready, Prepared)
        if ready.refusal is not None:
            return Rejected(user_id, reason=ready.rule, refusal=ready.refusal)

        def store(db: Session) -> bool:
            changed = db.execute(
                update(User)
                .where(User.id == user_id, User.password_hash == ready.old_hash, User.password_must_change.is_(True))
                .values(password_hash=ready.new_hash, password_must_change=False)
                .returning(User.id)
            ).first()
            if changed is None:  # set again by an admin, or by this chain's other request, meanwhile
                return False
            # the browser's own session of this user stays (a re-authentication renews it)
            held = find_session(db, services.keyring, services.session_policy, attempt.session_cookie)
            keep = held[0].id if held is not None and held[1].id == user_id else None
            ended = end_all_sessions(db, user_id, except_session_id=keep)
            revoke_all_grants(db, user_id)
            link_records.revoke_open(db, user_id, reason="password_changed")
            db.info.setdefault("ended_sids", []).extend(one.sid for one in ended)  # their back-channel logouts
            record_audit(
                db,
                "password.changed",
                user_id=user_id,
                ip=attempt.ip,
                user_agent=attempt.user_agent,
                outcome="success",
                during="login",
                reason="must_change",
                sessions_ended=len(ended),
            )
            return True

        return Passed((), user_id, claim=store)


STEP = NewPasswordStep()
