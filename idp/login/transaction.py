"""Login transactions: the parked authorization request and the steps done so far, kept in
the state store (never in process memory) so a login may finish on another process.

A transaction is bound to the browser that created it (`browser`: a keyed digest of that
browser's binding secret, compared in constant time) and, once a step names a user, to that
user: another identity is refused, never merged into the steps already done. A finished
transaction (the chain established `authenticated_sid`) takes no further step."""

from __future__ import annotations

import hmac
import json
from dataclasses import asdict, dataclass, field, fields, replace

from idp.security.keyring import new_secret
from idp.state.store import StateStore

_PREFIX = "login-tx:"
_FINISHED_PREFIX = "login-tx-finished:"


class TransactionRefused(Exception):
    """A step that must never be recorded on this transaction. Callers check first
    (`finished`, `accepts_user`) and answer as for a bad credential; reaching this is a bug
    that must fail closed rather than merge two identities."""


@dataclass(frozen=True)
class LoginTransaction:
    id: str
    params: dict[str, str]  # the authorization request as received
    client_id: str
    client_name: str
    login_hint: str | None = None
    authenticated_sid: str | None = None  # the IdP session the chain established for this request
    steps_done: tuple[str, ...] = field(default_factory=tuple)  # RFC 8176 methods done so far: pwd, otp
    requested_acr: str = "pwd"  # what the RP asked for (the policy adds what the user's factors demand)
    user_id: int | None = None  # known once the password step (or the step-up session) named the user
    username: str | None = None  # normalized, for the per-account rate limit of later steps
    step_up_sid: str | None = None  # a step-up upgrades this session instead of starting a new one
    return_to: str | None = None  # where a chain without an authorization request ends (/account)
    browser: str = ""  # keyed digest of the creating browser's binding secret; "" binds to no browser
    consent_sid: str | None = None  # the session a consent page was shown to (no chain ran)
    proven: tuple[str, ...] = field(default_factory=tuple)  # methods proven in this chain (not carried over)
    link_id: str | None = None  # the one-time link (idp/links/) this chain was started from
    enrolling: bool = False  # an invitation's or a recovery's chain: it may enrol what the level needs

    @property
    def finished(self) -> bool:
        return self.authenticated_sid is not None

    def is_bound_to(self, browser: str | None) -> bool:
        return bool(self.browser) and browser is not None and hmac.compare_digest(self.browser, browser)

    def accepts_user(self, user_id: int) -> bool:
        return self.user_id is None or self.user_id == user_id

    def finished_by(self, sid: str) -> LoginTransaction:
        return replace(self, authenticated_sid=sid)

    def with_step(self, method: str, *, user_id: int | None = None, username: str | None = None) -> LoginTransaction:
        if self.finished:
            raise TransactionRefused("a finished transaction takes no further step")
        if user_id is not None and not self.accepts_user(user_id):
            raise TransactionRefused("another identity on a transaction that already named its user")
        return replace(
            self,
            steps_done=tuple(dict.fromkeys((*self.steps_done, method))),
            proven=tuple(dict.fromkeys((*self.proven, method))),
            user_id=user_id if user_id is not None else self.user_id,
            username=username if username is not None else self.username,
        )

    @property
    def resume_url(self) -> str:
        return self.return_to or f"/authorize/resume?tx={self.id}"


_FIELDS = frozenset(f.name for f in fields(LoginTransaction))


def new_transaction(
    params: dict[str, str], client_id: str, client_name: str, login_hint: str | None, **fields: object
) -> LoginTransaction:
    return LoginTransaction(
        id=new_secret(24),
        params=params,
        client_id=client_id,
        client_name=client_name,
        login_hint=login_hint,
        **fields,  # type: ignore[arg-type]
    )


def save_transaction(store: StateStore, tx: LoginTransaction, *, ttl_seconds: int) -> None:
    store.set(_PREFIX + tx.id, json.dumps(asdict(tx)).encode(), ttl_seconds=ttl_seconds)


def find_transaction(store: StateStore, tx_id: object) -> LoginTransaction | None:
    if not isinstance(tx_id, str) or not 8 <= len(tx_id) <= 64:
        return None
    return _decoded(store.get(_PREFIX + tx_id))


def claim_finish(store: StateStore, tx_id: str, *, ttl_seconds: int) -> bool:
    """True once per transaction: the chain's end runs once, whatever races to it."""
    return store.add(_FINISHED_PREFIX + tx_id, b"1", ttl_seconds=ttl_seconds)


def consume_transaction(store: StateStore, tx_id: str) -> LoginTransaction | None:
    """Single use: the request resumes exactly once."""
    return _decoded(store.take(_PREFIX + tx_id))


def _decoded(raw: bytes | None) -> LoginTransaction | None:
    if raw is None:
        return None
    data = json.loads(raw)
    data["steps_done"] = tuple(data.get("steps_done", ()))
    data["proven"] = tuple(data.get("proven", ()))
    # a field another release added is dropped, not a crash; a missing `browser` binds to none
    return LoginTransaction(**{k: v for k, v in data.items() if k in _FIELDS})
