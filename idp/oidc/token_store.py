"""Access and refresh token records: minted at random, stored as keyed digests, revoked
by family (every token that descends from one authorization code; idp/revocation.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, bindparam, exists, select, update
from sqlalchemy.orm import Session, aliased

from idp.clock import clock_of
from idp.db.models import AuthorizationCode, RefreshToken, User
from idp.db.prepared import PreparedRead
from idp.security.keyring import Keyring, new_secret


@dataclass(frozen=True)
class Lifetimes:
    access_seconds: int
    refresh_idle_seconds: int
    refresh_absolute_seconds: int
    grace_seconds: int


@dataclass(frozen=True)
class TokenOwner:
    """The user columns a grant needs (claims, disabled flag), read in the token's own query."""

    id: int
    subject: str
    username: str
    name: str | None
    email: str | None
    email_verified: bool
    updated_at: datetime
    disabled: bool
    attributes: dict[str, Any] | None = None  # profile and custom claims (idp/attributes.py)


# One Core query for the token and its owner: the refresh grant's hot path (bench/) spent
# more on ORM identity-map bookkeeping and a second lookup of the user than on SQLite.
_REFRESH_WITH_OWNER = select(
    RefreshToken.__table__,
    User.subject.label("owner_subject"),
    User.username.label("owner_username"),
    User.name.label("owner_name"),
    User.email.label("owner_email"),
    User.email_verified.label("owner_email_verified"),
    User.updated_at.label("owner_updated_at"),
    User.disabled.label("owner_disabled"),
    User.attributes.label("owner_attributes"),
).join(User, User.id == RefreshToken.user_id)
# The refresh grant's one read, compiled once and run on the driver (idp/db/prepared.py).
_REFRESH_BY_DIGEST = PreparedRead(_REFRESH_WITH_OWNER.where(RefreshToken.token_digest == bindparam("digest")))
_CLAIM_REFRESH = (
    update(RefreshToken)
    .where(
        RefreshToken.id == bindparam("token_id"), RefreshToken.rotated_at.is_(None), RefreshToken.revoked_at.is_(None)
    )
    .values(
        rotated_at=bindparam("now"),
        successor_digest=bindparam("successor_digest"),
        successor_encrypted=bindparam("successor_encrypted"),
    )
)
_SUCCESSOR = aliased(RefreshToken, name="successor")
# The successor a rotation named has itself been rotated: its grace hand-out is over.
SUCCESSOR_ROTATED = exists().where(
    _SUCCESSOR.token_digest == RefreshToken.successor_digest, _SUCCESSOR.rotated_at.is_not(None)
)
_HAND_OUT_SUCCESSOR = (
    update(RefreshToken)
    .where(
        RefreshToken.id == bindparam("token_id"),
        RefreshToken.revoked_at.is_(None),
        RefreshToken.rotated_at >= bindparam("rotated_since"),
        RefreshToken.successor_encrypted.is_not(None),
        RefreshToken.successor_handed_out.is_(False),
        ~SUCCESSOR_ROTATED,
    )
    .values(successor_handed_out=True)
    .returning(RefreshToken.successor_encrypted)
)


def find_refresh_grant(db: Session, keyring: Keyring, raw: object) -> Any:
    """The refresh token row (RefreshToken's columns, as attributes) with its owner's
    columns (owner_*), or None."""
    if not isinstance(raw, str) or not 16 <= len(raw) <= 256:
        return None
    return _REFRESH_BY_DIGEST.first(db.connection(), {"digest": keyring.digest(raw)})


def owner_of(row: Any) -> TokenOwner:
    """`row`: a find_refresh_grant row."""
    return TokenOwner(
        row.user_id,
        row.owner_subject,
        row.owner_username,
        row.owner_name,
        row.owner_email,
        row.owner_email_verified,
        row.owner_updated_at,
        row.owner_disabled,
        row.owner_attributes,
    )


_CODE_BY_DIGEST = select(AuthorizationCode).where(AuthorizationCode.code_digest == bindparam("digest"))
_CLAIM_CODE = (
    update(AuthorizationCode)
    .where(AuthorizationCode.id == bindparam("code_id"), AuthorizationCode.used_at.is_(None))
    .values(used_at=bindparam("now"))
)


def find_authorization_code(db: Session, keyring: Keyring, raw: object) -> AuthorizationCode | None:
    if not isinstance(raw, str) or not 16 <= len(raw) <= 256:
        return None
    return db.scalar(_CODE_BY_DIGEST, {"digest": keyring.digest(raw)})


def consume_authorization_code(db: Session, code: AuthorizationCode) -> bool:
    """Single use in storage: only one concurrent redemption can flip used_at."""
    now = clock_of(db).now()
    result = db.connection().execute(_CLAIM_CODE, {"code_id": code.id, "now": now})
    code.used_at = now
    return result.rowcount == 1


def consume_refresh_token(
    db: Session, token_id: int, *, successor_digest: str, successor_encrypted: bytes | None
) -> bool:
    """Claims a refresh token for rotation and names its successor in the same conditional
    UPDATE; False when another request got there first (or it was revoked meanwhile)."""
    result = db.connection().execute(
        _CLAIM_REFRESH,
        {
            "token_id": token_id,
            "now": clock_of(db).now(),
            "successor_digest": successor_digest,
            "successor_encrypted": successor_encrypted,
        },
    )
    return result.rowcount == 1


def consume_grace_successor(db: Session, token_id: int, lifetimes: Lifetimes) -> bytes | None:
    """The encrypted successor of a rotated-out token, for the one request that raced its
    rotation within the grace period. Claimed in one conditional UPDATE: a second replay, a
    late one, or one after the successor was itself rotated gets None, and is reuse."""
    if lifetimes.grace_seconds <= 0:
        return None
    rotated_since = clock_of(db).now() - timedelta(seconds=lifetimes.grace_seconds)
    result = db.connection().execute(_HAND_OUT_SUCCESSOR, {"token_id": token_id, "rotated_since": rotated_since})
    return result.scalar()


def is_refresh_usable(token: RefreshToken | Row, now: datetime) -> bool:  # type: ignore[type-arg]
    return token.revoked_at is None and token.expires_at > now and token.family_expires_at > now


def within_grace(token: RefreshToken | Row, lifetimes: Lifetimes, now: datetime) -> bool:
    """A rotated-out token whose successor may still be handed out once (the window is open
    and nobody had it yet); whether the successor was rotated since, only its UPDATE knows."""
    if lifetimes.grace_seconds <= 0 or token.rotated_at is None or token.successor_encrypted is None:
        return False
    if token.successor_handed_out:
        return False
    return now - token.rotated_at <= timedelta(seconds=lifetimes.grace_seconds)


def is_refresh_active(row: Row, lifetimes: Lifetimes, now: datetime) -> bool:  # type: ignore[type-arg]
    """RFC 7662 §2.2 for a refresh token read with SUCCESSOR_ROTATED as `successor_rotated`:
    usable and not rotated out, but for its one grace hand-out still to come."""
    if not is_refresh_usable(row, now):
        return False
    return row.rotated_at is None or (within_grace(row, lifetimes, now) and not row.successor_rotated)


def new_token_value() -> str:
    return new_secret(32)
