"""The login chain's one owner (DESIGN.md §2): `LoginFlow` holds the registered steps and
runs every request to the chain, one call per request, in a worker thread:

- `page`: the step's page (or where the chain is instead);
- `submit`: a step's form: the transaction this browser started, the rate limits before
  the check and the failure budget after it, the step's check, then ONE write transaction
  (identity and lock checks, the claim, counting a failure and its audit, the step recorded,
  the next step chosen, or the chain's end starting or upgrading the IdP session);
- `challenge`: what a step needs before its form (the passkey options).

It knows no HTTP, no URL and no protocol: the web layer (idp/web/login.py) parses the form,
calls, and turns the returned value (idp/login/outcomes.py) or refusal
(idp/login/refusals.py) into a response. Steps are registered once, in the composition root
(idp/app.py), the way Authlib registers grants.

The lockout counter is reset only when the whole chain has succeeded: a right password
followed by wrong codes keeps counting, so knowing the password does not buy unlimited
code guesses."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from idp.audit.refusals import audit_refusal
from idp.audit.trail import record_audit
from idp.db.models import User
from idp.links import records as link_records
from idp.lockout import Lockout
from idp.login import policy
from idp.login import transaction as tx_store
from idp.login.failures import LOCKED, count_failure, failure_message, refuse_locked
from idp.login.memberships import memberships_of
from idp.login.outcomes import (
    Attempt,
    Challenge,
    Completed,
    Continue,
    Failed,
    NotAllowed,
    Notice,
    Outcome,
    StepView,
    Unmet,
)
from idp.login.refusals import NotThisStep, TooManyAttempts, TransactionGone, UnknownStep
from idp.login.sessions import (
    EndedSession,
    SessionPolicy,
    describe_ended,
    end_session,
    find_session,
    start_session,
    upgrade_session,
)
from idp.login.step import Passed, Rejected, Step, StepContext
from idp.login.transaction import LoginTransaction
from idp.mfa.held import UserFactors
from idp.mfa.passkeys import CHALLENGE_TTL_SECONDS
from idp.security.keyring import Keyring
from idp.security.passwords import PasswordHashing
from idp.security.rate_limits import RateLimits
from idp.state.store import StateStore

if TYPE_CHECKING:
    from idp.mail.mailer import Mailer
    from idp.mail.notices import Notice as MailNotice
    from idp.mfa.factors import SecondFactors
    from idp.mfa.passkeys import Passkeys

FIRST_STEP = policy.PASSWORD
_MAIL_AFTER_COMMIT = "mail_after_commit"  # db.info: the passed step's mail notices, for after the commit


class _FinishRefused(Exception):
    """The chain's end refused a request whose step passed: raised so that its write
    transaction rolls back whole (nothing written unless every check passed)."""

    def __init__(self, user_id: int | None, *, locked: bool = False) -> None:
        super().__init__("the chain's end refused this request")
        self.user_id = user_id
        self.locked = locked  # the step a chain without a named user starts on (/login)


@dataclass(frozen=True)
class FlowServices:
    sessions: sessionmaker[Session]
    store: StateStore
    keyring: Keyring
    hashing: PasswordHashing
    lockout: Lockout
    factors: SecondFactors
    passkeys: Passkeys
    rate_limits: RateLimits
    session_policy: SessionPolicy
    ttl_seconds: int  # a transaction's life after each step
    untouched_ttl_seconds: int  # the life of one no step has touched yet
    client_minimum: Callable[[str], Sequence[str]]  # a client's default_acr_values, as configured now
    client_allowed_groups: Callable[[str], Collection[str] | None]  # None: the client is open to everyone
    mail: Mailer | None = None  # the notices a step's change sends (a passkey enrolled); None: none sent


@dataclass(frozen=True)
class ChainState:
    required: str
    next_step: str
    factors: UserFactors
    set_by_group: bool = False  # a group's minimum sets `required` (an administrator's rule)


def credential_checks(ip: str | None, account: str | None = None) -> list[tuple[str, str]]:
    """The limits in front of a credential check, in order: the failure budget first (only
    tested: a refused attempt counts nowhere), then the flood guard and the account name."""
    checks = [("login_failures_ip", ip or "-"), ("login_ip", ip or "-")]
    return checks + ([("login_account", account)] if account is not None else [])


def _ended_meanwhile(db: Session) -> list[EndedSession]:
    """Sessions this unit of work ended on the way (the per-user cap, a new password's
    sign-out elsewhere), noted in `db.info["ended_sids"]`: their RPs must hear of it."""
    ended = [describe_ended(db, sid) for sid in db.info.pop("ended_sids", [])]
    return [e for e in ended if e is not None]


class LoginFlow:
    def __init__(self, services: FlowServices, steps: Iterable[Step] = ()) -> None:
        self.services = services
        self.steps: dict[str, Step] = {}
        for step in steps:
            self.register(step)

    def register(self, step: Step) -> None:
        if step.name in self.steps:
            raise ValueError(f"a step named {step.name!r} is already registered")
        self.steps[step.name] = step

    def step(self, name: str) -> Step:
        try:
            return self.steps[name]
        except KeyError:
            raise UnknownStep() from None

    # ---- entry points: one call per request ------------------------------------------------

    def page(self, name: str, tx_id: str | None, attempt: Attempt) -> StepView | Continue | Unmet | NotAllowed:
        """The step's page; or, when the chain is elsewhere, where it is (a Continue), or
        Unmet (the transaction consumed) when no step can reach the level any more."""
        step = self.step(name)
        tx = self._transaction(step, tx_id, attempt, create=False)
        if not step.first and (tx is None or tx.user_id is None):
            raise NotThisStep()  # a later step proves the chain's user: none is named yet
        with self.services.sessions.begin() as db:
            state = self._state_of(db, tx) if tx is not None and tx.user_id is not None else None
            if tx is not None and state is not None and state.next_step == policy.NOT_ALLOWED:
                tx_store.consume_transaction(self.services.store, tx.id)
                return NotAllowed(tx)
            if tx is not None and state is not None and not self._accepts(step, state):
                if self._unreachable(state):
                    tx_store.consume_transaction(self.services.store, tx.id)
                    return Unmet(tx, ask_admin=state.set_by_group)
                if state.next_step in self.steps:
                    return Continue(tx, state.next_step)
                raise NotThisStep()
            ctx = StepContext(
                self.services, tx, attempt, state.factors if state else None, state.next_step if state else None
            )
            return self._view(step, ctx, db, {}, page_tx=tx)

    def submit(
        self, name: str, tx_id: str | None, form: Mapping[str, object], attempt: Attempt, *, keep_endings: bool = False
    ) -> Outcome:
        """`keep_endings`: the caller cannot show a page (the passkey step answers JSON), so a
        chain that ends here (Unmet, NotAllowed) is kept instead of consumed, for the browser
        to be sent to the first step's page, which finds the same ending and shows it once."""
        step = self.step(name)
        tx = self._transaction(step, tx_id, attempt, create=True)
        assert tx is not None
        new = tx_id is None
        state = None
        if not step.first and tx.user_id is None:
            raise NotThisStep()  # a later step proves the chain's user: none is named yet
        if tx.user_id is not None:
            with self.services.sessions() as db:
                state = self._state_of(db, tx)
            if state.next_step == policy.NOT_ALLOWED:
                return self._after(NotAllowed(tx), attempt, keep_endings)
            if self._unreachable(state):  # no form can help: nothing posted is checked
                return self._after(Unmet(tx, ask_admin=state.set_by_group), attempt, keep_endings)
            if not step.first and not self._accepts(step, state):
                raise NotThisStep()
        ctx = StepContext(
            self.services, tx, attempt, state.factors if state else None, state.next_step if state else None
        )
        if not step.filled(form):
            with self.services.sessions.begin() as db:
                return Failed(self._view(step, ctx, db, form, page_tx=None if new else tx), step.empty_words, 400)
        self._admit(credential_checks(attempt.ip, step.account_key(ctx, form)), attempt)
        prepared = step.prepare(ctx, form)
        mail: list[MailNotice] = []
        try:
            with self.services.sessions.begin() as db:
                outcome = self._decide(step, ctx, db, form, prepared, new)
                mail = db.info.pop(_MAIL_AFTER_COMMIT, [])
        except _FinishRefused as refusal:
            # everything the request wrote is rolled back (a claimed code stays unused, no
            # success is audited); what is kept is the refusal itself
            with self.services.sessions.begin() as db:
                self._audit_refusal(db, refusal, attempt)
                outcome = Failed(
                    self._view(step, ctx, db, {}, page_tx=None if new else tx),
                    failure_message(self.services.lockout, LOCKED, step.failed_words),
                )
        self._notify(mail, tx, attempt)  # committed: the change it tells of is there to see
        return self._after(outcome, attempt, keep_endings)

    def challenge(
        self,
        name: str,
        tx_id: str | None,
        form: Mapping[str, object],
        attempt: Attempt,
        limits: Sequence[tuple[str, str]],
    ) -> Challenge:
        step = self.step(name)
        tx = self._transaction(step, tx_id, attempt, create=True)
        assert tx is not None
        if not step.first:
            self._require_turn(step, tx)  # a later step's challenge (an enrolment's options) only on its turn
        self._admit(limits, attempt)
        ctx = StepContext(self.services, tx, attempt, None)
        data = step.challenge(ctx, form)
        if tx_id is None:
            # anyone may make one without signing in: it lives as long as an untouched parked
            # request, or its challenge, whichever is longer, until a step touches it
            ttl = max(self.services.untouched_ttl_seconds, CHALLENGE_TTL_SECONDS)
            tx_store.save_transaction(self.services.store, tx, ttl_seconds=ttl)
        return Challenge(tx, data, new_transaction=tx_id is None)

    def where_next(self, tx_id: str | None, attempt: Attempt) -> Continue | Unmet | NotAllowed | None:
        """For /login with a transaction whose chain already named its user (a step-up):
        the step the chain is on, or Unmet when no step can reach the level; None when it is
        on the first step."""
        tx = self._transaction(self.step(FIRST_STEP), tx_id, attempt, create=False)
        return None if tx is None else self.step_for(tx)

    def step_for(self, tx: LoginTransaction) -> Continue | Unmet | NotAllowed | None:
        """The step a transaction just parked (by this request) goes to; None: the first.
        Unmet (the transaction consumed): this user cannot reach the level asked for (a
        step-up to phr without a passkey), which the RP must hear at once; NotAllowed: the
        session's user may not use the app (the authorization endpoint refuses that first)."""
        if tx.user_id is None:
            return None
        with self.services.sessions() as db:
            state = self._state_of(db, tx)
        if state.next_step == FIRST_STEP:
            return None
        if state.next_step == policy.NOT_ALLOWED:
            tx_store.consume_transaction(self.services.store, tx.id)
            return NotAllowed(tx)
        if state.next_step == policy.UNMET or state.next_step not in self.steps:
            tx_store.consume_transaction(self.services.store, tx.id)
            return Unmet(tx, ask_admin=state.set_by_group)
        return Continue(tx, state.next_step)

    def hand_over(self, tx: LoginTransaction, attempt: Attempt) -> Outcome:
        """A chain begun by a one-time link (idp/links/redeem.py), saved and bound to this
        browser: where it goes next (the password step for an invitation to an account that
        has a password; the second factor after a reset; an enrolment), or, when the password
        the link let the user choose is all the level needs, its end at once: the session,
        as any step's end would start it (the lock checked again, audited)."""
        step = self.step(FIRST_STEP)
        try:
            with self.services.sessions.begin() as db:
                state = self._state_of(db, tx) if tx.user_id is not None else None
                if state is None or state.next_step == FIRST_STEP:
                    return Continue(tx, FIRST_STEP)
                if state.next_step == policy.NOT_ALLOWED:
                    outcome: Outcome = NotAllowed(tx)
                elif state.next_step == policy.DONE:
                    ctx = StepContext(self.services, tx, attempt, state.factors, state.next_step)
                    outcome = self._finish(step, ctx, db, tx, None, False)
                elif self._unreachable(state):
                    outcome = Unmet(tx, ask_admin=state.set_by_group)
                else:
                    outcome = Continue(tx, state.next_step)
        except _FinishRefused as refusal:
            with self.services.sessions.begin() as db:
                self._audit_refusal(db, refusal, attempt)
            tx_store.consume_transaction(self.services.store, tx.id)
            if not refusal.locked:
                raise TransactionGone() from None
            # the lock answers 401 as at any sign-in (the link is spent, the password it set
            # stays). Whoever holds the link owns the account: they are told why, and when
            minutes = max(1, self.services.lockout.seconds // 60)
            words = (
                "Your new password is set, but sign-in for this account is paused after too many "
                f"failed attempts. Sign in again in {minutes} minutes."
            )
            return Failed(StepView(step.name, step.template, None), words)
        return self._after(outcome, attempt)

    # ---- the transaction ---------------------------------------------------------------

    def _transaction(self, step: Step, tx_id: str | None, attempt: Attempt, *, create: bool) -> LoginTransaction | None:
        """The open transaction of this browser named `tx_id`; for a first step without one
        (signing in to idp itself), a new one when `create`, bound to this browser."""
        if tx_id is None:
            if not step.first:
                raise NotThisStep()
            if not create:
                return None
            return tx_store.new_transaction({}, "", "", None, return_to="/account", browser=attempt.new_browser)
        tx = tx_store.find_transaction(self.services.store, tx_id)
        if tx is None or not tx.is_bound_to(attempt.browser):
            raise TransactionGone()  # the same page when another browser started it: nothing to learn
        if tx.finished or not self._step_up_alive(tx, attempt):
            # a finished chain takes no further step; a step-up lives no longer than the session
            # it steps up, held by this browser (its earlier credit came from it)
            raise TransactionGone(tx.params if tx.client_id else None)
        return tx

    def _step_up_alive(self, tx: LoginTransaction, attempt: Attempt) -> bool:
        if tx.step_up_sid is None:
            return True
        with self.services.sessions() as db:
            return self._holds_step_up_session(db, tx, attempt)

    def _holds_step_up_session(self, db: Session, tx: LoginTransaction, attempt: Attempt) -> bool:
        """The browser still presents the very session the step-up began from: not only is the
        sid alive, the cookie value is its current one. A copy of the cookie that the session's
        owner has since renewed (a re-authentication issues a new value) steps nothing up."""
        held = find_session(db, self.services.keyring, self.services.session_policy, attempt.session_cookie)
        return held is not None and held[0].sid == tx.step_up_sid and held[1].id == tx.user_id

    def _state_of(self, db: Session, tx: LoginTransaction) -> ChainState:
        assert tx.user_id is not None
        user = db.get(User, tx.user_id)
        if user is None or user.disabled:
            return ChainState("pwd", policy.UNMET, UserFactors())
        factors = self.services.factors.factors_of(db, user, count_backup_codes=True)
        groups = memberships_of(db, user.id)
        requested = tx.requested_acr
        if tx.client_id:  # the client's default may have changed since the request was parked
            requested = max(
                requested,
                policy.requested_level(None, self.services.client_minimum(tx.client_id)),
                key=policy.LEVELS.__getitem__,
            )
            if not policy.may_use(self.services.client_allowed_groups(tx.client_id), (g.name for g in groups)):
                # checked once the user is known, before any further factor, enrolment or consent
                return ChainState(requested, policy.NOT_ALLOWED, factors)
        needed = policy.requirement(requested, factors, groups)
        step = policy.next_step(needed.level, tx.steps_done, factors, can_enrol_passkey=tx.enrolling)
        enrolment = step in (policy.ENROL_TOTP, policy.ENROL_PASSKEY)
        if enrolment and tx.step_up_sid is not None and "pwd" not in tx.proven:
            # adding a credential needs a recent sign-in: a step-up's password credit is the
            # session's, maybe hours old (or a stolen cookie's), so the password comes first
            step = policy.PASSWORD
        return ChainState(needed.level, step, factors, set_by_group=needed.by_group)

    @staticmethod
    def _audit_refusal(db: Session, refusal: _FinishRefused, attempt: Attempt) -> None:
        """What a refused chain's end keeps once its own writes are rolled back: the lock's refusal."""
        if refusal.locked:
            record_audit(
                db,
                "login.refused",
                user_id=refusal.user_id,
                ip=attempt.ip,
                user_agent=attempt.user_agent,
                outcome="refused",
                reason="locked",
            )

    def _audit_not_allowed(self, db: Session, tx: LoginTransaction, attempt: Attempt) -> None:
        record_audit(
            db,
            "access.refused",
            user_id=tx.user_id,
            client_id=tx.client_id,
            ip=attempt.ip,
            user_agent=attempt.user_agent,
            outcome="refused",
            reason="not_in_allowed_groups",
        )

    def _unreachable(self, state: ChainState) -> bool:
        """No registered step can take this chain to its level any more (phr, and the user's
        passkey was removed or the client's level raised since the chain began): the RP must
        hear unmet_authentication_requirements, not the user see a dead end."""
        return state.next_step == policy.UNMET or (state.next_step != policy.DONE and state.next_step not in self.steps)

    def _require_turn(self, step: Step, tx: LoginTransaction) -> None:
        """A later step acts on the chain's user only, and only when the policy names it (or
        a step it may replace): raises NotThisStep otherwise."""
        if tx.user_id is None:
            raise NotThisStep()
        with self.services.sessions() as db:
            state = self._state_of(db, tx)
        if not self._accepts(step, state):
            raise NotThisStep()

    def _accepts(self, step: Step, state: ChainState) -> bool:
        """The step the policy names next, or one that may replace it and the user has."""
        if step.name == state.next_step:
            return True
        return state.next_step in step.instead_of and step.available(state.factors)

    # ---- limits ----------------------------------------------------------------------------

    def _admit(self, checks: Sequence[tuple[str, str]], attempt: Attempt) -> None:
        limits = self.services.rate_limits
        for scope, key in checks:
            verdict = limits.admit(scope, key)
            if not verdict.allowed:
                audit_refusal(
                    self.services.sessions,
                    self.services.store,
                    self.services.keyring,
                    verdict,
                    key,
                    ip=attempt.ip,
                    client_id=None,
                    user_agent=attempt.user_agent,
                    path="/login",
                )
                raise TooManyAttempts(verdict)

    # ---- the one write transaction ------------------------------------------------------

    def _decide(
        self, step: Step, ctx: StepContext, db: Session, form: Mapping[str, object], prepared: Any, new: bool
    ) -> Outcome:
        tx, attempt, lockout = ctx.tx, ctx.attempt, self.services.lockout
        assert tx is not None
        page_tx = None if new else tx
        result = step.check(ctx, db, form, prepared)
        if isinstance(result, Passed) and not tx.accepts_user(result.user_id):
            # another identity than the chain named: refused exactly like a wrong credential for
            # that account (same page, status, counter), never merged
            result = Rejected(result.user_id, reason="other_identity")
        if isinstance(result, Passed) and step.lockable and lockout.is_locked(db, result.user_id):
            failure = refuse_locked(
                db, step.audit_kind, user_id=result.user_id, ip=attempt.ip, user_agent=attempt.user_agent
            )
            return Failed(
                self._view(step, ctx, db, form, page_tx=page_tx), failure_message(lockout, failure, step.failed_words)
            )
        if isinstance(result, Passed) and result.claim is not None and not result.claim(db):
            result = Rejected(result.user_id, reason="already_used")  # a racing request used it first
        if isinstance(result, Rejected):
            for kind in result.audit_also:
                record_audit(
                    db, kind, user_id=result.user_id, ip=attempt.ip, user_agent=attempt.user_agent, outcome="refused"
                )
            failure = count_failure(
                db,
                lockout,
                self.services.keyring,
                step.audit_kind,
                user_id=result.user_id,
                name=result.name,
                ip=attempt.ip,
                user_agent=attempt.user_agent,
                reason=result.reason,
                counts=result.refusal is None,
            )
            if result.refusal is not None:  # 400: no failed credential, so no failure budget spent
                return Failed(self._view(step, ctx, db, form, page_tx=page_tx), result.refusal, 400)
            message = (
                failure_message(lockout, failure, step.failed_words)
                if (result.user_id is not None or result.name)
                else step.failed_words
            )
            return Failed(self._view(step, ctx, db, form, page_tx=page_tx), message)

        record_audit(
            db,
            f"{step.audit_kind}.succeeded",
            user_id=result.user_id,
            ip=attempt.ip,
            user_agent=attempt.user_agent,
            outcome="success",
            **result.audit,
        )
        notice = result.notice(db) if result.notice is not None else None
        db.info.setdefault(_MAIL_AFTER_COMMIT, []).extend(result.mail)  # sent by `submit` after the commit
        chained = tx
        for method in result.methods:
            chained = chained.with_step(method, user_id=result.user_id, username=result.username)
        state = self._state_of(db, chained)
        if state.next_step == policy.DONE:
            return self._finish(step, ctx, db, chained, notice, new)
        if state.next_step == policy.NOT_ALLOWED:
            self._audit_not_allowed(db, chained, attempt)
            return NotAllowed(chained)
        if state.next_step == policy.UNMET or state.next_step not in self.steps:
            return Unmet(chained, ask_admin=state.set_by_group)
        return Continue(chained, state.next_step, notice, new_transaction=new)

    def _finish(
        self, step: Step, ctx: StepContext, db: Session, tx: LoginTransaction, notice: Notice | None, new: bool
    ) -> Outcome:
        """The chain's end, once per transaction (a second request that reached it too, a race
        or a replayed form, is refused like a bad credential and starts no second session).

        One session per browser: a re-authentication (prompt=login, max_age, /account) by the
        user the browser's session belongs to renews that session (same sid, new cookie value,
        so a copy of the old value dies with it); another user signing in ends it."""
        services, attempt = self.services, ctx.attempt
        assert tx.user_id is not None

        if not tx_store.claim_finish(services.store, tx.id, ttl_seconds=services.ttl_seconds):
            raise _FinishRefused(tx.user_id)
        if tx.step_up_sid is not None and not self._holds_step_up_session(db, tx, attempt):
            raise _FinishRefused(tx.user_id)  # the chain's earlier credit came from that session
        if step.lockable:
            if not services.lockout.record_success(db, tx.user_id):  # the lock, checked again at the end
                raise _FinishRefused(tx.user_id, locked=True)
            cleared_lock = False
        else:  # a user-verified passkey signs in through a lock, and clears it (DESIGN.md §4)
            cleared_lock = services.lockout.is_locked(db, tx.user_id)
            services.lockout.unlock(db, tx.user_id)
        user = db.get(User, tx.user_id)
        if user is None or user.disabled:
            raise _FinishRefused(tx.user_id)
        acr, amr = policy.acr_of(tx.steps_done), policy.amr_of(tx.steps_done)
        record_audit(
            db,
            "login.succeeded",
            user_id=user.id,
            ip=attempt.ip,
            user_agent=attempt.user_agent,
            outcome="success",
            acr=acr,
            amr=amr,
            client_id=tx.client_id or None,
            step_up=tx.step_up_sid is not None,
            **({"cleared_lock": True} if cleared_lock else {}),
            **({"link_id": tx.link_id} if tx.link_id else {}),
        )
        cookie, sid, ended = self._session_for(db, tx, user, acr, amr, attempt)
        if tx.link_id is not None:  # the session an invitation started has its grace (idp/links/)
            link_records.note_session(db, tx.link_id, sid)
        finished = tx.finished_by(sid)
        return Completed(finished, tx.resume_url, cookie, sid, tuple(ended), notice, new_transaction=new)

    def _session_for(
        self, db: Session, tx: LoginTransaction, user: User, acr: str, amr: list[str], attempt: Attempt
    ) -> tuple[str, str, list[EndedSession]]:
        """(session cookie value, sid, sessions ended: by the cap, or the other user's this
        browser held)."""
        services, ip = self.services, attempt.ip
        if tx.step_up_sid is not None:
            upgraded = upgrade_session(db, services.keyring, user.id, tx.step_up_sid, acr=acr, amr=amr, ip=ip)
            assert upgraded is not None  # the browser held that live session, checked in this transaction
            return upgraded[0], upgraded[1].sid, _ended_meanwhile(db)
        held = find_session(db, services.keyring, services.session_policy, attempt.session_cookie)
        if held is not None and held[1].id == user.id:
            renewed = upgrade_session(db, services.keyring, user.id, held[0].sid, acr=acr, amr=amr, ip=ip)
            if renewed is not None:
                return renewed[0], renewed[1].sid, _ended_meanwhile(db)
        replaced = end_session(db, held[0].id) if held is not None and held[1].id != user.id else None
        if replaced is not None:
            record_audit(
                db,
                "session.replaced",
                user_id=replaced.user_id,
                ip=ip,
                user_agent=attempt.user_agent,
                outcome="success",
                sid=replaced.sid,
                by_user=user.id,
            )
        cookie, row = start_session(
            db, services.keyring, services.session_policy, user, acr=acr, amr=amr, user_agent=attempt.user_agent, ip=ip
        )
        return cookie, row.sid, _ended_meanwhile(db) + ([replaced] if replaced is not None else [])

    # ---- after the commit ------------------------------------------------------------------

    def _after(self, outcome: Outcome, attempt: Attempt, keep_endings: bool = False) -> Outcome:
        """The state store follows the committed database: the transaction saved for its next
        step, kept finished for the one resume, or consumed; a refusal spends the budget."""
        store, ttl = self.services.store, self.services.ttl_seconds
        if isinstance(outcome, Continue):
            tx_store.save_transaction(store, outcome.tx, ttl_seconds=ttl)
        elif isinstance(outcome, Completed):
            if outcome.tx.return_to is None:  # kept, finished, for the one resume of the parked request
                tx_store.save_transaction(store, outcome.tx, ttl_seconds=ttl)
            else:
                tx_store.consume_transaction(store, outcome.tx.id)
        elif isinstance(outcome, (Unmet, NotAllowed)) and keep_endings:
            # every entry point works the ending out again from the user it names, and
            # consumes the transaction when it shows it
            tx_store.save_transaction(store, outcome.tx, ttl_seconds=ttl)
        elif isinstance(outcome, (Unmet, NotAllowed)):
            tx_store.consume_transaction(store, outcome.tx.id)
        elif outcome.status == 401:
            # every 401 a credential step answers spends the client's failure budget (a locked
            # account's too, so a right password costs what a wrong one does)
            self.services.rate_limits.record("login_failures_ip", attempt.ip or "-")
        return outcome

    def _notify(self, mail: Sequence[MailNotice], tx: LoginTransaction, attempt: Attempt) -> None:
        """The notices of the change a passed step committed, to the chain's user."""
        if self.services.mail is None or tx.user_id is None:
            return
        for notice in mail:
            self.services.mail.notify(notice, tx.user_id, ip=attempt.ip)

    def _view(
        self, step: Step, ctx: StepContext, db: Session, form: Mapping[str, object], *, page_tx: LoginTransaction | None
    ) -> StepView:
        """The step's page; `page_tx` is the transaction it posts to (None: a sign-in to idp
        itself whose transaction was never saved, so the page starts a new one)."""
        shown = StepContext(ctx.services, page_tx, ctx.attempt, ctx.factors, ctx.next_step)
        tx = page_tx
        # the other steps the chain would accept now (the next one, or one that may replace it)
        offers = (
            []
            if ctx.next_step is None or tx is None
            else [
                (other.name, other.label)
                for other in self.steps.values()
                if other is not step
                and other.label
                and (
                    other.name == ctx.next_step or (ctx.next_step in other.instead_of and other.available(ctx.factors))
                )
            ]
        )
        context: dict[str, Any] = {"offers": offers}
        context.update(step.view(shown, db, form))
        return StepView(step.name, step.template, tx, context)
