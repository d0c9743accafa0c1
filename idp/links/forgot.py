"""Forgot password? (issue 18): a reset link mailed to the verified address of the account a
typed name names. No HTTP: idp/web/forgot.py checks the rate limits, calls request_reset and
answers one page whatever happened.

Anyone may type any name, so every name costs the same work: a name whose account may receive
the link, one without a verified address, a disabled or deleted one, and one no account has
each make one SELECT of the user, the two statements of records.issue_if_reachable (which
write a row for the first only), one audit row, no Argon2, a new secret and one mail job
(a job for nobody, user_id None, which the outbox drops unaudited, for all but the first).
Nothing the requester can see or time says which case it was.

The caller limits requests per client IP and per name typed (reset_ip, reset_account) and
answers the too-many page (429) over either. A choice: the per-name count is kept for every
name alike, known or not, so its 429 says nothing about which names are accounts; and a user
who asks a fourth time learns why no fourth mail comes, where a silent refusal would leave
them waiting for it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from idp.audit.trail import record_audit
from idp.clock import clock_of
from idp.db.models import User
from idp.links import records
from idp.links.delivery import job_of
from idp.login.steps.password import normalize_username
from idp.mail.mailer import Mailer
from idp.security.keyring import Keyring

NAME_MAX = 128  # as the password step reads it: longer names are no account's


def account_key(typed_name: str) -> str:
    """The name as the per-account rate limit counts it: the one request_reset looks up."""
    return normalize_username(typed_name)[:NAME_MAX]


def request_reset(
    sessions: sessionmaker[Session],
    keyring: Keyring,
    mail: Mailer,
    *,
    issuer: str,
    typed_name: str,
    ip: str | None,
    user_agent: str | None,
) -> None:
    """Mails a reset link to the account named `typed_name` if it may have one, and does the
    same work if not. Returns nothing: the caller has nothing it could show differently."""
    name = account_key(typed_name)
    with sessions.begin() as db:
        known = db.scalar(select(User).where(User.username == name))
        offer = records.issue_if_reachable(db, keyring, name, "reset", by="self")
        at = clock_of(db).now().strftime("%Y-%m-%d %H:%M UTC")
        record_audit(
            db,
            "password.reset_requested",
            user_id=known.id if known is not None else None,
            ip=ip,
            user_agent=user_agent,
            outcome="success" if offer.user_id is not None else "failure",
            known_user=known is not None,  # never the name: it may be someone's password typed in the wrong box
            **_what_became(known, offer),
        )
    mail.submit(job_of(offer, issuer, at=at))  # after the commit: the link exists when the mail leaves


def _what_became(known: User | None, offer: records.Offer) -> dict[str, Any]:
    """The audit row's detail: the link issued, or why none was (for the admin only)."""
    if offer.user_id is not None:
        return {"link_id": offer.link_id, "superseded": offer.superseded}
    if known is None:
        reason = "unknown_name"
    elif known.deleted_at is not None:
        reason = "deleted"
    elif known.disabled:
        reason = "disabled"
    else:
        reason = "no_verified_address"
    return {"reason": reason}
