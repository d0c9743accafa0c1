"""JWT access tokens (RFC 9068) for clients that registered access_token_format = "jwt".

Such a token is signed (ES256 or Ed25519, under the current key of that family, typ
"at+jwt") and stored nowhere: a resource server checks it with /jwks alone, and userinfo and
introspection check it here without a token lookup. What a row's `revoked_at` says for an
opaque token, the revocation markers say for these (idp/revocation.py writes them; every
process holds the live ones in memory, reloaded with the clients and keys every few
seconds). A resource server that validates the token itself cannot hear of a revocation: it
sees the token die at `exp`, which is why the lifetime is at most 300 seconds.

Claims (RFC 9068 §2.2): iss, sub (the user's; the client_id for client_credentials), aud
(the client's access_token_audience, else the issuer), client_id, iat, exp, jti, scope, and
for a user's token auth_time, acr, amr, sid when the login had one, and grant_id: the grant
(authorization code family) it belongs to, by which a grant's revocation finds it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy.orm import Session, sessionmaker

from idp.clock import epoch
from idp.revocation import JWT_ACCESS_MAX_SECONDS, live_markers
from idp.security.keyring import new_secret

if TYPE_CHECKING:  # signing_keys asks JwtAccessPolicy which family a client signs with
    from idp.oidc.signing_keys import KeyCache

TYP = "at+jwt"
ALGS = ["ES256", "Ed25519"]  # what a JWT access token may be signed with (the clients file's choices)
MAX_CHARS = 4096  # far above any token idp signs; a longer bearer value is not one of them
CLOCK_SKEW_SECONDS = 60  # an iat this far in the future is still believed (another host's clock)
# Verified tokens remembered per key set: a resource server presents the same token again
# and again, and an ES256 verification through joserfc costs more than a SQLite lookup.
# Expiry and revocation are still checked on every use. At most this many (a few MB).
VERIFIED_KEPT = 2048
NOTED_KEPT_SECONDS = 30.0  # several reload intervals: by then the marker's row is committed and read


@dataclass(frozen=True)
class JwtAccessPolicy:
    """A client's JWT access token settings, read once from its clients-file row."""

    alg: str
    lifetime_seconds: int | None  # None: the server's access token lifetime, capped
    audience: tuple[str, ...]

    @classmethod
    def of(cls, config: dict[str, Any]) -> JwtAccessPolicy | None:
        if config.get("access_token_format") != "jwt":
            return None
        return cls(
            alg=str(config.get("access_token_signing_alg") or "ES256"),
            lifetime_seconds=config.get("access_token_lifetime"),
            audience=tuple(config.get("access_token_audience") or ()),
        )

    def lifetime(self, server_seconds: int) -> int:
        return min(self.lifetime_seconds or server_seconds, JWT_ACCESS_MAX_SECONDS)


@dataclass(frozen=True)
class Login:
    """What the grant knows of the sign-in behind a user's token."""

    auth_time: datetime
    acr: str
    amr: list[str]
    sid: str | None


@dataclass(frozen=True)
class AccessClaims:
    """A verified, unrevoked JWT access token."""

    subject: str
    client_id: str
    scope: str
    issued_at: int
    expires_at: int
    jti: str
    for_user: bool  # False: a client_credentials token (sub is the client_id)
    audience: list[str]


def issue(
    keys: KeyCache,
    *,
    issuer: str,
    policy: JwtAccessPolicy,
    client_id: str,
    scope: str,
    now: datetime,
    lifetime_seconds: int,
    subject: str | None,
    login: Login | None,
    grant_id: str | None,
) -> str:
    issued_at = epoch(now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject if subject is not None else client_id,
        "aud": list(policy.audience) if policy.audience else issuer,
        "client_id": client_id,
        "iat": issued_at,
        "exp": issued_at + lifetime_seconds,
        "jti": new_secret(16),
        "scope": scope,
    }
    if login is not None:
        claims.update(auth_time=epoch(login.auth_time), acr=login.acr, amr=list(login.amr))
        if login.sid:
            claims["sid"] = login.sid
    if grant_id is not None:
        claims["grant_id"] = grant_id
    return keys.get().sign(claims, alg=policy.alg, typ=TYP)


def looks_like_jwt(token: str) -> bool:
    """Opaque tokens are base64url without dots; a compact JWS has exactly two."""
    return token.count(".") == 2 and token.startswith("eyJ")


def read(token: str, *, keys: KeyCache, issuer: str, revocations: RevocationList, now: datetime) -> AccessClaims | None:
    """The token's claims if idp signed it as an access token, it has not expired and nothing
    revoked it; None for anything else (a forged, altered, foreign, expired or revoked token,
    an ID token or a logout token presented as one)."""
    if len(token) > MAX_CHARS or not looks_like_jwt(token):
        return None
    active = keys.get()
    c = active.verified.get(token)
    if c is None:
        c = _verified_claims(token, active.verifying, issuer)
        if c is None:
            return None
        if len(active.verified) >= VERIFIED_KEPT:
            active.verified.clear()
        active.verified[token] = c
    issued_at, expires_at = c["iat"], c["exp"]
    moment = epoch(now)
    if expires_at <= moment or issued_at > moment + CLOCK_SKEW_SECONDS:
        return None
    for_user = "auth_time" in c
    if revocations.revoked(
        issued_at,
        jti=c["jti"],
        grant_id=c.get("grant_id"),
        subject=c["sub"] if for_user else None,
        client_id=c["client_id"],
    ):
        return None
    audience = c.get("aud")
    return AccessClaims(
        subject=c["sub"],
        client_id=c["client_id"],
        scope=c["scope"],
        issued_at=issued_at,
        expires_at=expires_at,
        jti=c["jti"],
        for_user=for_user,
        audience=audience if isinstance(audience, list) else [str(audience)],
    )


def _verified_claims(token: str, verifying: KeySet, issuer: str) -> dict[str, Any] | None:
    """What never changes for a token: its signature, its type, its issuer, its claims' types."""
    try:
        decoded = jwt.decode(token, verifying, algorithms=ALGS)
    except (JoseError, ValueError, TypeError):
        return None
    typ = str(decoded.header.get("typ", "")).lower()
    if typ not in (TYP, "application/" + TYP):  # RFC 9068 §4: not an ID token or any other JWT
        return None
    c = dict(decoded.claims)
    strings = ("sub", "client_id", "jti", "scope")
    if c.get("iss") != issuer or not all(isinstance(c.get(name), str) for name in strings):
        return None
    issued_at, expires_at = c.get("iat"), c.get("exp")
    if not isinstance(issued_at, int) or not isinstance(expires_at, int) or isinstance(issued_at, bool):
        return None
    if not 0 < expires_at - issued_at <= JWT_ACCESS_MAX_SECONDS:
        # never signed so by idp; and the revocation markers outlive only tokens this short
        return None
    return c


class RevocationList:
    """The live revocation markers, in memory: (scope, subject) → when the newest was made.
    Reloaded whole with the clients and keys (a marker lives six minutes, so there are few;
    reading all of them also catches a marker whose transaction committed out of id order)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._revoked: dict[tuple[str, str], float] = {}
        # markers this process noted itself, kept across reloads for NOTED_KEPT_SECONDS: a
        # reload that read the table just before their commit must not forget them
        self._noted: dict[tuple[str, str], tuple[float, float]] = {}
        self._lock = threading.Lock()

    def reload(self) -> None:
        with self._lock, self._sessions() as db:
            revoked: dict[tuple[str, str], float] = {}
            for scope, subject, revoked_at in live_markers(db):
                key = (scope, subject)
                revoked[key] = max(revoked.get(key, 0.0), revoked_at.timestamp())
            fresh = time.monotonic() - NOTED_KEPT_SECONDS
            self._noted = {key: noted for key, noted in self._noted.items() if noted[1] > fresh}
            for key, (revoked_at_ts, _) in self._noted.items():
                revoked[key] = max(revoked.get(key, 0.0), revoked_at_ts)
            self._revoked = revoked

    def note(self, scope: str, subject: str, revoked_at: datetime) -> None:
        """A marker this process is committing, believed at once (not only at the next reload)."""
        with self._lock:
            key = (scope, subject)
            self._noted[key] = (revoked_at.timestamp(), time.monotonic())
            self._revoked = {**self._revoked, key: max(self._revoked.get(key, 0.0), revoked_at.timestamp())}

    def revoked(self, issued_at: int, *, jti: str, grant_id: object, subject: str | None, client_id: str) -> bool:
        """Whether a marker names the token: by its jti or its grant, whatever its iat (no token
        of either is issued after their revocation, and a host whose clock runs ahead signs iats
        past it); by its user or user at a client, if made at or after the token's iat. iat has
        whole seconds: a token issued in the second of such a revocation counts as revoked too."""
        revoked = self._revoked
        if not revoked:
            return False
        if ("token", jti) in revoked or (isinstance(grant_id, str) and ("grant", grant_id) in revoked):
            return True
        if subject is None:
            return False
        keys = [("user", subject), ("user_client", f"{subject} {client_id}")]
        return any(revoked.get(key, -1.0) >= issued_at for key in keys)
