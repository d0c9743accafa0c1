"""Access and refresh token records: minted at random, stored as keyed digests, revoked
by family (every token that descends from one authorization code)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from idp.clock import utcnow
from idp.db.models import AccessToken, AuthorizationCode, RefreshToken
from idp.security.keyring import Keyring, new_secret


@dataclass(frozen=True)
class Lifetimes:
    access_seconds: int
    refresh_idle_seconds: int
    refresh_absolute_seconds: int
    grace_seconds: int


def find_refresh_token(db: Session, keyring: Keyring, raw: object) -> RefreshToken | None:
    if not isinstance(raw, str) or not 16 <= len(raw) <= 256:
        return None
    return db.scalar(select(RefreshToken).where(RefreshToken.token_digest == keyring.digest(raw)))


def find_authorization_code(db: Session, keyring: Keyring, raw: object) -> AuthorizationCode | None:
    if not isinstance(raw, str) or not 16 <= len(raw) <= 256:
        return None
    return db.scalar(select(AuthorizationCode).where(AuthorizationCode.code_digest == keyring.digest(raw)))


def consume_authorization_code(db: Session, code: AuthorizationCode) -> bool:
    """Single use in storage: only one concurrent redemption can flip used_at."""
    now = utcnow()
    result = db.execute(
        update(AuthorizationCode)
        .where(AuthorizationCode.id == code.id, AuthorizationCode.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    code.used_at = now
    return result.rowcount == 1  # type: ignore[attr-defined]


def consume_refresh_token(db: Session, token: RefreshToken) -> bool:
    """Claims a refresh token for rotation; False when another request got there first."""
    now = utcnow()
    result = db.execute(
        update(RefreshToken)
        .where(RefreshToken.id == token.id, RefreshToken.rotated_at.is_(None), RefreshToken.revoked_at.is_(None))
        .values(rotated_at=now)
        .execution_options(synchronize_session=False)
    )
    token.rotated_at = now
    return result.rowcount == 1  # type: ignore[attr-defined]


def revoke_family(db: Session, family_id: str) -> None:
    now = utcnow()
    db.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    db.execute(
        update(AccessToken)
        .where(AccessToken.family_id == family_id, AccessToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


def is_refresh_usable(token: RefreshToken, now: datetime) -> bool:
    return token.revoked_at is None and token.expires_at > now and token.family_expires_at > now


def within_grace(token: RefreshToken, lifetimes: Lifetimes, now: datetime) -> bool:
    if lifetimes.grace_seconds <= 0 or token.rotated_at is None or token.successor_encrypted is None:
        return False
    return now - token.rotated_at <= timedelta(seconds=lifetimes.grace_seconds)


def new_token_value() -> str:
    return new_secret(32)
