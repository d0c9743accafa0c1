"""The audit of rate-limit refusals: the first refusal of a key per window is audited, not
every one (a flood must not turn into a flood of database writes)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from idp.audit.trail import record_audit
from idp.security.keyring import Keyring
from idp.security.rate_limits import Verdict
from idp.state.store import StateStore, StoreUnavailable


def audit_refusal(
    sessions: sessionmaker[Session],
    store: StateStore,
    keyring: Keyring,
    verdict: Verdict,
    key: str,
    *,
    ip: str | None,
    client_id: str | None,
    user_agent: str | None,
    path: str,
) -> None:
    marker = f"rl-audited:{verdict.scope}:{keyring.digest(key)}"
    try:
        first = store.add(marker, b"1", ttl_seconds=max(1, verdict.retry_after))
    except StoreUnavailable:
        first = True  # cannot tell: audit it (the shared limiter has fallen back to per process)
    if not first:
        return
    with sessions.begin() as db:
        record_audit(
            db,
            "rate_limit.exceeded",
            client_id=client_id,
            ip=ip,
            user_agent=user_agent,
            outcome="refused",
            scope=verdict.scope,
            path=path,
            retry_after=verdict.retry_after,
        )
