"""Retired names: a deleted user's username and verified address, kept only as keyed
digests, so that no one else is given them (a relying party that links accounts by
`preferred_username` or a verified `email` would hand the new holder the deleted person's
data). `idp user delete --allow-reuse` retires nothing."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.db.models import RetiredName
from idp.security.keyring import Keyring

USERNAME = "username"
EMAIL = "email"


def _digest(keyring: Keyring, kind: str, value: str) -> str:
    # usernames are stored case-folded; addresses compare case-insensitively (uq_users_verified_email)
    return keyring.digest(f"retired-{kind}:{value.lower() if kind == EMAIL else value}")


def retire(db: Session, keyring: Keyring, kind: str, value: str) -> None:
    digest = _digest(keyring, kind, value)
    if db.scalar(select(RetiredName.id).where(RetiredName.digest == digest)) is None:
        db.add(RetiredName(kind=kind, digest=digest))


def is_retired(db: Session, keyring: Keyring, kind: str, value: str) -> bool:
    return db.scalar(select(RetiredName.id).where(RetiredName.digest == _digest(keyring, kind, value))) is not None
