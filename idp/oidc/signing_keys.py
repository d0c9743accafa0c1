"""RS256 signing keys: kept in the database with the private part AEAD-encrypted under a
key derived from the master key. Every process reloads the key set every few seconds
(idp.app.REFRESH_SECONDS), so a rotation on one host reaches all of them without a restart.

Rotation publishes first and signs later. The new key enters JWKS at once (every process
serves it within one reload interval) but signs only from `signs_from`, PUBLISH_LEAD_SECONDS
later. Signing at once would let one process issue tokens under a kid that another process's
JWKS, or a relying party's cached copy of it, does not have yet. The old key signs until
then and stays published until every ID token it signed has expired."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

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
JWKS_MAX_AGE_SECONDS = 60  # Cache-Control max-age of /jwks (idp/web/static_documents.py)
# From `keys rotate` to the first signature with the new key: two reload intervals (every
# process publishes it) plus the JWKS max-age (every relying party's cached copy has it).
# tests/oidc/test_keys_and_discovery.py checks it still covers idp.app.REFRESH_SECONDS.
PUBLISH_LEAD_SECONDS = 2 * 5 + JWKS_MAX_AGE_SECONDS


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


def rotate_signing_key(db: Session, keyring: Keyring, *, id_token_ttl_seconds: int, signs_in_seconds: int = 0) -> SigningKey:
    """A new key, published now and signing `signs_in_seconds` from now (0: at once, for a
    compromised key, accepting that relying parties may briefly miss it). The keys signing
    until then stop at that moment, and stay published until their last tokens expire."""
    now = utcnow()
    if signing_key_of(published_keys(db), now) is None:
        signs_in_seconds = 0  # nothing signs today: waiting would leave the provider without a key
    switch_at = now + timedelta(seconds=signs_in_seconds)
    still_signing = or_(SigningKey.retired_at.is_(None), SigningKey.retired_at > switch_at)
    for old in db.scalars(select(SigningKey).where(still_signing)):
        old.retired_at = switch_at
        old.unpublish_at = switch_at + timedelta(seconds=id_token_ttl_seconds) + _PUBLISH_MARGIN
    row = create_signing_key(db, keyring)
    row.signs_from = switch_at if signs_in_seconds else None
    return row


def signing_key_of(keys: list[SigningKey], now: datetime) -> SigningKey | None:
    """The key that signs at `now`: of those whose time has come and not gone, the newest."""
    ready = [k for k in keys if (k.signs_from is None or k.signs_from <= now) and (k.retired_at is None or k.retired_at > now)]
    return max(ready, key=lambda k: (k.signs_from or k.created_at, k.id), default=None)


def published_keys(db: Session) -> list[SigningKey]:
    now = utcnow()
    query = select(SigningKey).where(or_(SigningKey.unpublish_at.is_(None), SigningKey.unpublish_at > now))
    return list(db.scalars(query.order_by(SigningKey.created_at.desc(), SigningKey.id.desc())))


def build_active_keys(keys: list[SigningKey], keyring: Keyring, now: datetime) -> ActiveKeys:
    current = signing_key_of(keys, now)
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
            now = utcnow()
            signing = signing_key_of(keys, now)
            # the signing key changes with time alone (signs_from, retired_at), not only with rows
            published = (tuple((k.kid, k.retired_at, k.unpublish_at) for k in keys), signing.kid if signing else None)
            if self._keys is None or published != self._published:  # decrypt and parse only on change
                self._keys = build_active_keys(keys, self._keyring, now)
                self._published = published
