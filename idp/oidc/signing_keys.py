"""RS256 signing keys: kept in the database with the private part AEAD-encrypted under a
key derived from the master key. Rotation retires the current key from signing but keeps
it in JWKS until every ID token it signed has expired. Every process reloads the key set
every few seconds, so a rotation on one host reaches all of them without a restart."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from idp.clock import utcnow
from idp.db.models import SigningKey
from idp.security.keyring import Keyring, new_secret

_PURPOSE = "signing-key"
ALG = "RS256"
# Clock skew allowance for relying parties that validate a little late.
_PUBLISH_MARGIN = timedelta(minutes=5)


@dataclass(frozen=True)
class ActiveKeys:
    signing_key: RSAKey  # private, with kid
    jwks_bytes: bytes  # precomputed public JWK Set document


def create_signing_key(db: Session, keyring: Keyring) -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    kid = new_secret(12)
    public = RSAKey.import_key(pem).as_dict(private=False)
    public.update({"kid": kid, "use": "sig", "alg": ALG})
    row = SigningKey(kid=kid, alg=ALG, public_jwk=public, private_key_encrypted=keyring.encrypt(_PURPOSE, pem))
    db.add(row)
    db.flush()
    return row


def ensure_signing_key(db: Session, keyring: Keyring) -> None:
    if db.scalar(select(SigningKey.id).where(SigningKey.retired_at.is_(None)).limit(1)) is None:
        create_signing_key(db, keyring)


def rotate_signing_key(db: Session, keyring: Keyring, *, id_token_ttl_seconds: int) -> SigningKey:
    """New key signs from now on; the old ones stay published until their tokens expire."""
    now = utcnow()
    for old in db.scalars(select(SigningKey).where(SigningKey.retired_at.is_(None))):
        old.retired_at = now
        old.unpublish_at = now + timedelta(seconds=id_token_ttl_seconds) + _PUBLISH_MARGIN
    return create_signing_key(db, keyring)


def published_keys(db: Session) -> list[SigningKey]:
    now = utcnow()
    query = select(SigningKey).where(or_(SigningKey.unpublish_at.is_(None), SigningKey.unpublish_at > now))
    return list(db.scalars(query.order_by(SigningKey.created_at.desc(), SigningKey.id.desc())))


def build_active_keys(keys: list[SigningKey], keyring: Keyring) -> ActiveKeys:
    current = next((k for k in keys if k.retired_at is None), None)
    if current is None:
        raise RuntimeError("no active signing key: run `idp keys rotate`")
    pem = keyring.decrypt(_PURPOSE, current.private_key_encrypted)
    signing = RSAKey.import_key(pem, {"kid": current.kid, "use": "sig", "alg": ALG})
    jwks = json.dumps({"keys": [k.public_jwk for k in keys]}, separators=(",", ":")).encode()
    return ActiveKeys(signing_key=signing, jwks_bytes=jwks)


class KeyCache:
    """The active key set in memory. Loaded at start-up and reloaded by the app's background
    refresher, never inside a request: a request may hold the only database connection."""

    def __init__(self, sessions: sessionmaker[Session], keyring: Keyring) -> None:
        self._sessions = sessions
        self._keyring = keyring
        self._keys: ActiveKeys | None = None
        self._published: tuple[object, ...] = ()
        self._lock = threading.Lock()

    def get(self) -> ActiveKeys:
        if self._keys is None:
            self.reload()
        assert self._keys is not None
        return self._keys

    def jwks(self) -> dict[str, object]:
        """The published public keys (current and retired-but-published), as a JWK Set."""
        return json.loads(self.get().jwks_bytes)  # type: ignore[no-any-return]

    def reload(self) -> None:
        with self._lock, self._sessions() as db:
            keys = published_keys(db)
            published = tuple((k.kid, k.retired_at, k.unpublish_at) for k in keys)
            if self._keys is None or published != self._published:  # decrypt and parse only on change
                self._keys = build_active_keys(keys, self._keyring)
                self._published = published
