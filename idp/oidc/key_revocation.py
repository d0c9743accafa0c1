"""Revoking a signing key (`idp keys revoke KID`): a leaked key must stop being trusted now,
not when the ID tokens it signed expire. The row stays, marked revoked, for the record; it
leaves JWKS and signs nothing more from the next reload of each process (idp/oidc/
signing_keys.py). Relying parties trust it until they fetch the key set again.

Its family must keep a key that signs: revoking the signing key brings forward the successor
that `keys rotate` published (it signs at once, as with `--signs-in 0`); revoking a successor
before it signs leaves its predecessor signing; and revoking the only key that can sign for an
algorithm some client uses is refused (rotate first)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.audit.trail import record_audit
from idp.clock import clock_of
from idp.db.models import SigningKey
from idp.oidc.signing_keys import (
    PUBLISH_MARGIN,
    build_public_jwks,
    create_signing_key,
    families_in_use,
    signing_key_of,
)
from idp.security.keyring import Keyring


class KeyRevocationError(ValueError):
    """Nothing was revoked; the message says why, on one line."""


@dataclass(frozen=True)
class Revocation:
    kid: str
    alg: str
    signer: str | None  # the kid that signs the family's tokens now; None: no key of it signs


def revoke_signing_key(
    db: Session, kid: str, *, id_token_ttl_seconds: int, keyring: Keyring | None = None
) -> Revocation:
    """`keyring`: to make a fresh key at once when the revoked one was the last that could
    sign its algorithm (no client uses it: otherwise the revocation is refused); without
    one, and until then, a client synced with that algorithm could get no token signed."""
    now = clock_of(db).now()
    row = _find(db, kid)
    if row is None:
        raise KeyRevocationError(f"no signing key {kid!r} (`idp keys list` shows them)")
    if row.revoked_at is not None:
        raise KeyRevocationError(f"signing key {kid} was already revoked at {row.revoked_at:%Y-%m-%d %H:%M:%S}Z")
    family = db.scalars(select(SigningKey).where(SigningKey.alg == row.alg, SigningKey.revoked_at.is_(None)))
    chain = _signing_chain(list(family), now)
    rest = [key for key in chain if key is not row]
    if row in chain and not rest and row.alg in families_in_use(db):
        raise KeyRevocationError(
            f"signing key {kid} is the only {row.alg} key that can sign, and clients use {row.alg}: "
            f"run `idp keys rotate --alg {row.alg} --signs-in 0` first, then revoke {kid}"
        )
    row.revoked_at = now
    row.retired_at = min(row.retired_at or now, now)
    row.unpublish_at = min(row.unpublish_at or now, now)
    if row in chain:
        _close_the_gap(rest, now, timedelta(seconds=id_token_ttl_seconds) + PUBLISH_MARGIN)
    signer = signing_key_of(rest, now, row.alg)
    if signer is None and not rest and keyring is not None:
        # no client uses the algorithm, so no token of it is in anyone's hands to mismatch:
        # the replacement signs at once, as a family's first key does (ensure_signing_key)
        signer = create_signing_key(db, keyring, row.alg)
    done = Revocation(kid=row.kid, alg=row.alg, signer=signer.kid if signer else None)
    record_audit(db, "key.revoked", outcome="success", by="cli", kid=done.kid, alg=done.alg, signer=done.signer)
    return done


def _find(db: Session, kid: str) -> SigningKey | None:
    """The key named `kid`, or by the kid of one of its alias entries in JWKS ("<kid>.EdDSA")."""
    own_kid = kid.rpartition(".")[0] or kid
    rows = db.scalars(select(SigningKey).where(SigningKey.kid.in_({kid, own_kid})))
    return next((row for row in rows if kid in {jwk["kid"] for jwk in build_public_jwks(row)}), None)


def _start(key: SigningKey) -> datetime:
    return key.signs_from or key.created_at


def _signing_chain(keys: list[SigningKey], now: datetime) -> list[SigningKey]:
    """The family's keys that sign now or will, in the order they take over: those not retired
    yet, less any retired before its first signature (superseded by a faster rotation)."""
    live = [k for k in keys if k.retired_at is None or k.retired_at > max(now, _start(k))]
    return sorted(live, key=lambda k: (_start(k), k.id))


def _close_the_gap(chain: list[SigningKey], now: datetime, published_after: timedelta) -> None:
    """The chain without the revoked key: the first signs from now, each signs until the next
    takes over, the last until the next rotation."""
    if not chain:
        return
    if _start(chain[0]) > now:  # the revoked key signed until now: its successor takes over at once
        chain[0].signs_from = now
    for key, successor in zip(chain, chain[1:], strict=False):
        if key.retired_at is not None and key.retired_at < _start(successor):
            key.retired_at = _start(successor)
            key.unpublish_at = max(key.unpublish_at or key.retired_at, key.retired_at + published_after)
    chain[-1].retired_at = chain[-1].unpublish_at = None
