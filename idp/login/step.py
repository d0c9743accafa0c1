"""What a login step is (idp/login/steps/*): one module per step, whose `name` is also its
URL segment (/login/<name>), its template (steps/<name>.html), its audit kind
(login.<name>.succeeded|failed) and the name the policy gives it (idp/login/policy.py).

A step only checks its credential. The flow (idp/login/flow.py) does the rest around it,
the same for every step: loading the transaction and refusing another browser's, the rate
limits before the check and the failure budget after it, the account lock, counting
failures and their audit, recording the step on the transaction, and the chain's end.

A check has two halves, both run in the one worker-thread call a request makes:
`prepare` reads (`ctx.read()`) and runs Argon2 (`ctx.services.hashing`, bounded) outside any
write transaction; `check` decides inside the flow's one write transaction and writes
nothing itself: what must be written when it passed (claiming a one-time code, a rehash) it
returns as `Passed.claim`, which the flow runs only after the identity and lock checks, so
nothing is written unless every check of the request passed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy.orm import Session

from idp.login.outcomes import Attempt, Notice
from idp.login.transaction import LoginTransaction
from idp.mail.notices import Notice as MailNotice
from idp.mfa.held import UserFactors

if TYPE_CHECKING:
    from idp.login.flow import FlowServices


@dataclass(frozen=True)
class Passed:
    """The credential is right. `methods` are RFC 8176 amr values; `user_id` is who it
    proves (a first step names the user; a later step proves the chain's user)."""

    methods: tuple[str, ...]
    user_id: int
    username: str | None = None
    claim: Callable[[Session], bool] | None = None  # in the flow's write transaction; False: lost a race
    notice: Callable[[Session], Notice | None] | None = None  # after the claim, same transaction
    audit: dict[str, Any] = field(default_factory=dict)  # extra detail for the success's audit row
    mail: tuple[MailNotice, ...] = ()  # notices to the user, queued once the flow's transaction committed


@dataclass(frozen=True)
class Rejected:
    """The credential is wrong. `user_id` is who is blamed (None: no account by that
    `name`, which then gets a phantom counter; neither: no counter at all)."""

    user_id: int | None
    name: str | None = None
    reason: str | None = None  # for the audit trail only; never shown
    audit_also: tuple[str, ...] = ()  # further audit kinds to write (e.g. passkey.counter_regression)
    # not a wrong credential but a form the step cannot take (a new password the policy
    # refuses): these words are shown (status 400), audited, and counted nowhere
    refusal: str | None = None


@dataclass
class StepContext:
    services: FlowServices
    tx: LoginTransaction | None  # None only on the first step's page of a sign-in to idp itself
    attempt: Attempt
    factors: UserFactors | None  # the chain's user's factors, once a step named the user
    next_step: str | None = None  # the step the policy names next, once a step named the user

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self.services.sessions() as db:
            yield db


class Step:
    """Subclasses set `name` and implement `check`; the rest have defaults."""

    name: ClassVar[str]
    first: ClassVar[bool] = False  # may start a chain: names the user itself (password, passkey)
    lockable: ClassVar[bool] = True  # the account lock refuses it (a passkey is not: DESIGN.md §4)
    failed_words: ClassVar[str] = "That code is not valid."
    instead_of: ClassVar[tuple[str, ...]] = ()  # steps this one may replace: their pages offer it
    label: ClassVar[str] = ""  # the link other steps' pages offer it by ("Use a backup code instead")
    template_dir: ClassVar[str | None] = None  # where its template is, when not among idp's own
    empty_words: ClassVar[str] = "Enter the code."  # the 400 answer to a form missing its fields

    @property
    def template(self) -> str:
        return f"steps/{self.name}.html"

    @property
    def audit_kind(self) -> str:
        return f"login.{self.name}"

    def available(self, factors: UserFactors | None) -> bool:
        """Whether the user can use this step at all (offered instead of another only then)."""
        return True

    def filled(self, form: Mapping[str, object]) -> bool:
        """The form carries what the check needs (else a 400 that counts nowhere)."""
        return True

    def account_key(self, ctx: StepContext, form: Mapping[str, object]) -> str | None:
        """The per-account rate limit's key: the chain's user by default."""
        if ctx.tx is None or ctx.tx.user_id is None:
            return None
        return ctx.tx.username or f"#{ctx.tx.user_id}"

    def view(self, ctx: StepContext, db: Session, form: Mapping[str, object]) -> dict[str, Any]:
        """What the step's page shows besides the transaction (`form`: what was typed, on a
        failure)."""
        return {}

    def prepare(self, ctx: StepContext, form: Mapping[str, object]) -> Any:
        """Reads and Argon2 outside the write transaction; its result goes to `check`."""
        return None

    def check(self, ctx: StepContext, db: Session, form: Mapping[str, object], prepared: Any) -> Passed | Rejected:
        raise NotImplementedError

    def challenge(self, ctx: StepContext, form: Mapping[str, object]) -> dict[str, Any]:
        """A challenge the browser needs before `check` (the passkey options)."""
        from idp.login.refusals import NotThisStep

        raise NotThisStep()
