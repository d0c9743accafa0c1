"""Scheduled signing-key rotation (IDP_KEY_ROTATION_DAYS; off by default). On each reload tick
every process looks at the keys it has just loaded: when the newest key of a family some
client uses is that many days old, it rotates the family as `idp keys rotate` does. The
successor is published at once and signs PUBLISH_LEAD_SECONDS later, so every process and
every relying party's cached JWKS has it before a token names it.

Once, however many processes find the key due: the successor records the kid it replaces in
a unique column (uq_signing_keys_replaces_kid), so the database keeps the first successor and
refuses a second one, whose whole unit of work rolls back."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from idp.audit.trail import record_audit
from idp.db.models import SigningKey
from idp.oidc.signing_keys import PUBLISH_LEAD_SECONDS, families_in_use, rotate_signing_key
from idp.security.keyring import Keyring

log = logging.getLogger("idp.keys")


@dataclass(frozen=True)
class RotationSchedule:
    sessions: sessionmaker[Session]
    keyring: Keyring
    every_days: int
    id_token_ttl_seconds: int

    def rotate_due(self, keys: list[SigningKey], now: datetime) -> bool:
        due = find_due_keys(keys, now, timedelta(days=self.every_days))
        if not due:
            return False
        try:
            with self.sessions.begin() as db:
                in_use = families_in_use(db)
                rotated = [self._rotate(db, old) for old in due if old.alg in in_use]
        except IntegrityError:  # another process made the successor first: it is in the table now
            log.info("scheduled signing-key rotation: another process rotated first")
            return True
        return bool(rotated)

    def _rotate(self, db: Session, old: SigningKey) -> SigningKey:
        row = rotate_signing_key(
            db,
            self.keyring,
            id_token_ttl_seconds=self.id_token_ttl_seconds,
            signs_in_seconds=PUBLISH_LEAD_SECONDS,
            alg=old.alg,
            replaces=old.kid,
        )
        signs_from = f"{row.signs_from:%Y-%m-%d %H:%M:%S}Z" if row.signs_from else "now"
        record_audit(
            db,
            "key.rotated",
            outcome="success",
            by="schedule",
            kid=row.kid,
            alg=row.alg,
            replaces=old.kid,
            signs_from=signs_from,
        )
        return row


def find_due_keys(keys: list[SigningKey], now: datetime, period: timedelta) -> list[SigningKey]:
    """The newest unrevoked key of each family, where it is `period` old or older."""
    newest: dict[str, SigningKey] = {}
    for key in keys:
        if key.revoked_at is None and (key.alg not in newest or _age_order(key) > _age_order(newest[key.alg])):
            newest[key.alg] = key
    return [key for key in newest.values() if key.created_at <= now - period]


def _age_order(key: SigningKey) -> tuple[datetime, int]:
    return key.created_at, key.id
