"""Signing keys (RFC 7517, RFC 7518 §3, RFC 8037, RFC 9864): one active key for each algorithm
family, RSA (RS256), EC P-256 (ES256) and Ed25519, kept in the database with the private part
AEAD-encrypted under a key derived from the master key. Every process reloads the key set every
few seconds (idp.app.REFRESH_SECONDS), so a rotation on one host reaches all of them without a
restart.

Rotation publishes first and signs later. The new key enters JWKS at once (every process
serves it within one reload interval) but signs only from `signs_from`, PUBLISH_LEAD_SECONDS
later. Signing at once would let one process issue tokens under a kid that another process's
JWKS, or a relying party's cached copy of it, does not have yet. The old key signs until
then and stays published until every ID token it signed has expired. Each family rotates on
its own: a new ES256 key retires only the ES256 key before it.

A revoked key (idp/oidc/key_revocation.py) stays in the table for the record but is neither
published nor chosen to sign; scheduled rotation (idp/oidc/key_schedule.py) runs on the same
reload tick as the cache below."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from idp.clock import clock_of
from idp.db.models import Client, SigningKey
from idp.oidc.access_jwt import JwtAccessPolicy
from idp.security.keyring import Keyring, new_secret

_PURPOSE = "signing-key"
ALG = "RS256"  # the default: clients that register no id_token_signed_response_alg
# A key's family is the `alg` of its row and of its JWK: one signing key of each at a time.
KEY_ALGS = ("RS256", "ES256", "Ed25519")
# What a client may register as id_token_signed_response_alg, and the family that signs it.
# "EdDSA" (RFC 8037) is the older, polymorphic name of the same Ed25519 signature; RFC 9864
# deprecates it, but many libraries (PyJWT 2.x, older jose) know only that name.
ID_TOKEN_ALGS = ("RS256", "ES256", "Ed25519", "EdDSA")
_FAMILY_OF = {"RS256": "RS256", "ES256": "ES256", "Ed25519": "Ed25519", "EdDSA": "Ed25519"}
_ALIASES = {"Ed25519": ("EdDSA",)}  # the other names a family's key signs under

PrivateKey = RSAKey | ECKey | OKPKey
_KEY_CLASS: dict[str, type[PrivateKey]] = {"RS256": RSAKey, "ES256": ECKey, "Ed25519": OKPKey}
_GENERATE: dict[str, Callable[[], PrivateKey]] = {
    "RS256": lambda: RSAKey.generate_key(2048),
    "ES256": lambda: ECKey.generate_key("P-256"),
    "Ed25519": lambda: OKPKey.generate_key("Ed25519"),
}

# Clock skew allowance for relying parties that validate a little late.
PUBLISH_MARGIN = timedelta(minutes=5)
JWKS_MAX_AGE_SECONDS = 60  # Cache-Control max-age of /jwks (idp/web/static_documents.py)
# From `keys rotate` to the first signature with the new key: two reload intervals (every
# process publishes it) plus the JWKS max-age (every relying party's cached copy has it).
# tests/oidc/test_keys_and_discovery.py checks it still covers idp.app.REFRESH_SECONDS.
PUBLISH_LEAD_SECONDS = 2 * 5 + JWKS_MAX_AGE_SECONDS


def family_of(alg: str) -> str:
    """The key family that signs `alg` ("EdDSA" → "Ed25519"); ValueError for anything else."""
    try:
        return _FAMILY_OF[alg]
    except KeyError:
        raise ValueError(f"unsupported signing algorithm {alg!r}: use one of {', '.join(ID_TOKEN_ALGS)}") from None


def kid_for(kid: str, alg: str) -> str:
    """The kid a token signed under `alg` names: the key's own, or its alias entry's."""
    return kid if alg in KEY_ALGS else f"{kid}.{alg}"


def build_public_jwks(row: SigningKey) -> list[dict[str, Any]]:
    """The row's JWK, and for the Ed25519 key one more entry for the name "EdDSA". A JWK's
    `alg` names one algorithm (RFC 7517 §4.4) and verifiers (joserfc, panva/jose) refuse a
    token whose header names another, so each name needs its own entry; a kid of its own
    keeps kids distinct within the set (RFC 7517 §4.5)."""
    return [row.public_jwk] + [
        {**row.public_jwk, "kid": kid_for(row.kid, alias), "alg": alias} for alias in _ALIASES.get(row.alg, ())
    ]


@dataclass(frozen=True)
class ActiveKeys:
    signing: Mapping[str, PrivateKey]  # family → the private key (with kid) that signs now
    jwks_bytes: bytes  # precomputed public JWK Set document
    verifying: KeySet  # the same public keys, parsed: what idp's own JWT access tokens are checked with
    # JWT access tokens whose signature these keys verified (idp/oidc/access_jwt.py): tied to
    # this key set, so a rotation or a revoked key starts an empty one
    verified: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def signing_key(self) -> PrivateKey:
        """The RS256 key: logout tokens of clients that registered nothing, and tests."""
        return self.key_for(ALG)

    def key_for(self, alg: str) -> PrivateKey:
        family = family_of(alg)
        if family not in self.signing:
            raise RuntimeError(f"no active {family} signing key: run `idp keys rotate --alg {family}`")
        return self.signing[family]

    def sign(self, claims: dict[str, Any], *, alg: str, typ: str) -> str:
        """A compact JWS of `claims` whose header names `alg` exactly and the kid of the JWK
        published for that name."""
        key = self.key_for(alg)
        header = {"alg": alg, "kid": kid_for(str(key.kid), alg), "typ": typ}
        return jwt.encode(header, claims, key, [alg])


def create_signing_key(db: Session, keyring: Keyring, alg: str = ALG, *, replaces: str | None = None) -> SigningKey:
    pem = _GENERATE[alg]().as_pem(private=True)
    kid = new_secret(12)
    while kid.startswith("-"):  # an admin types kids as arguments (`idp keys revoke KID`): no option look-alikes
        kid = new_secret(12)
    public = _KEY_CLASS[alg].import_key(pem).as_dict(private=False)
    public.update({"kid": kid, "use": "sig", "alg": alg})
    encrypted = keyring.encrypt(_PURPOSE, pem)
    row = SigningKey(kid=kid, alg=alg, public_jwk=public, private_key_encrypted=encrypted, replaces_kid=replaces)
    db.add(row)
    db.flush()
    return row


def ensure_signing_key(db: Session, keyring: Keyring) -> None:
    """A key for each family that has none (first start, or the first start after an upgrade
    that added the family). It signs at once: no token of its family exists to mismatch."""
    existing = set(db.scalars(select(SigningKey.alg).where(SigningKey.retired_at.is_(None))))
    for alg in KEY_ALGS:
        if alg not in existing:
            create_signing_key(db, keyring, alg)


def rotate_signing_key(
    db: Session,
    keyring: Keyring,
    *,
    id_token_ttl_seconds: int,
    signs_in_seconds: int = 0,
    alg: str = ALG,
    at: datetime | None = None,
    replaces: str | None = None,
) -> SigningKey:
    """A new key of `alg`'s family, published now and signing `signs_in_seconds` from now (0:
    at once, for a compromised key, accepting that relying parties may briefly miss it). The
    family's keys signing until then stop at that moment, and stay published until their last
    tokens expire. `replaces`: the kid a scheduled rotation replaces (unique: see SigningKey)."""
    family = family_of(alg)
    now = at or clock_of(db).now()
    if signing_key_of(published_keys(db), now, family) is None:
        signs_in_seconds = 0  # nothing of this family signs today: waiting would leave it without a key
    switch_at = now + timedelta(seconds=signs_in_seconds)
    still_signing = or_(SigningKey.retired_at.is_(None), SigningKey.retired_at > switch_at)
    # a revoked key stays unpublished: giving it an unpublish_at in the future would publish it again
    live = SigningKey.revoked_at.is_(None)
    for old in db.scalars(select(SigningKey).where(SigningKey.alg == family, still_signing, live)):
        old.retired_at = switch_at
        old.unpublish_at = switch_at + timedelta(seconds=id_token_ttl_seconds) + PUBLISH_MARGIN
    row = create_signing_key(db, keyring, family, replaces=replaces)
    row.signs_from = switch_at if signs_in_seconds else None
    return row


def rotate_signing_keys(
    db: Session,
    keyring: Keyring,
    *,
    id_token_ttl_seconds: int,
    signs_in_seconds: int = 0,
    algs: Iterable[str] = KEY_ALGS,
) -> list[SigningKey]:
    """`rotate_signing_key` for each family named (default: all), in one transaction."""
    families = dict.fromkeys(family_of(alg) for alg in algs)  # EdDSA and Ed25519 rotate one key
    now = clock_of(db).now()  # one moment for all: making an RSA key takes long enough to cross a second
    return [
        rotate_signing_key(
            db,
            keyring,
            id_token_ttl_seconds=id_token_ttl_seconds,
            signs_in_seconds=signs_in_seconds,
            alg=family,
            at=now,
        )
        for family in families
    ]


def signing_key_of(keys: list[SigningKey], now: datetime, alg: str = ALG) -> SigningKey | None:
    """The key of `alg`'s family that signs at `now`: of those whose time has come and not
    gone, the newest."""
    ready = [
        k
        for k in keys
        if k.alg == alg
        and k.revoked_at is None
        and (k.signs_from is None or k.signs_from <= now)
        and (k.retired_at is None or k.retired_at > now)
    ]
    return max(ready, key=lambda k: (k.signs_from or k.created_at, k.id), default=None)


def signing_keys_of(keys: list[SigningKey], now: datetime) -> dict[str, SigningKey]:
    return {alg: key for alg in KEY_ALGS if (key := signing_key_of(keys, now, alg)) is not None}


def published_keys(db: Session) -> list[SigningKey]:
    now = clock_of(db).now()
    published = or_(SigningKey.unpublish_at.is_(None), SigningKey.unpublish_at > now)
    query = select(SigningKey).where(published, SigningKey.revoked_at.is_(None))
    return list(db.scalars(query.order_by(SigningKey.created_at.desc(), SigningKey.id.desc())))


def listed_keys(db: Session) -> list[SigningKey]:
    """What `idp keys list` shows: the published keys and every revoked one (kept for the record)."""
    now = clock_of(db).now()
    shown = or_(SigningKey.unpublish_at.is_(None), SigningKey.unpublish_at > now, SigningKey.revoked_at.is_not(None))
    return list(
        db.scalars(select(SigningKey).where(shown).order_by(SigningKey.created_at.desc(), SigningKey.id.desc()))
    )


def families_in_use(db: Session) -> set[str]:
    """The key families that sign some client's ID, logout and JWT access tokens. RS256 always: it is the
    default of a client that names no alg, and of any other JWT."""
    configs = db.scalars(select(Client.config))
    families = {ALG}
    for config in configs:
        families.add(family_of(config.get("id_token_signed_response_alg") or ALG))
        if (policy := JwtAccessPolicy.of(config)) is not None:  # its JWT access tokens
            families.add(family_of(policy.alg))
    return families


def build_active_keys(keys: list[SigningKey], keyring: Keyring, now: datetime) -> ActiveKeys:
    current = signing_keys_of(keys, now)
    if not current:
        raise RuntimeError("no active signing key: run `idp keys rotate`")
    signing = {alg: _private_key(row, keyring) for alg, row in current.items()}
    public = {"keys": [jwk for k in keys for jwk in build_public_jwks(k)]}
    jwks = json.dumps(public, separators=(",", ":")).encode()
    return ActiveKeys(signing=signing, jwks_bytes=jwks, verifying=KeySet.import_key_set(public))


def _private_key(row: SigningKey, keyring: Keyring) -> PrivateKey:
    pem = keyring.decrypt(_PURPOSE, row.private_key_encrypted)
    # no "alg" on the private key: the Ed25519 key also signs under the name EdDSA
    return _KEY_CLASS[row.alg].import_key(pem, {"kid": row.kid, "use": "sig"})


class Schedule(Protocol):
    def rotate_due(self, keys: list[SigningKey], now: datetime) -> bool:
        """Rotates what `keys` (the published ones, read at `now`) show is due; True if it did."""


class KeyCache:
    """The active key set in memory. Loaded at start-up and reloaded by the app's background
    refresher, never inside a request: a request may hold the only database connection.
    With a `schedule`, each reload is also its tick (idp/oidc/key_schedule.py)."""

    def __init__(self, sessions: sessionmaker[Session], keyring: Keyring, *, schedule: Schedule | None = None) -> None:
        self._sessions = sessions
        self._keyring = keyring
        self._schedule = schedule
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
        with self._lock:
            keys, now = self._load()
            # the schedule writes in a unit of work of its own, after _load has handed back its
            # connection (SQLite's pool has one); a new key is then published by this very reload
            if self._schedule is not None and self._schedule.rotate_due(keys, now):
                self._load()

    def _load(self) -> tuple[list[SigningKey], datetime]:
        with self._sessions() as db:
            keys = published_keys(db)
            now = clock_of(db).now()
        signing = sorted((alg, key.kid) for alg, key in signing_keys_of(keys, now).items())
        # the signing keys change with time alone (signs_from, retired_at), not only with rows
        published = (tuple((k.kid, k.retired_at, k.unpublish_at) for k in keys), tuple(signing))
        if self._keys is None or published != self._published:  # decrypt and parse only on change
            self._keys = build_active_keys(keys, self._keyring, now)
            self._published = published
        return keys, now
