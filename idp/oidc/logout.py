"""Logout (OpenID Connect RP-Initiated Logout 1.0 and Back-Channel Logout 1.0): checking
an `id_token_hint`, matching `post_logout_redirect_uri`, ending an IdP session, and the
logout tokens the RPs it signed into are sent.

- The hint must carry our signature and our issuer; it may have expired (RP-Initiated
  Logout §2 allows it: a user logs out long after signing in). Its `aud` names the client.
- `post_logout_redirect_uri` must equal one of the client's registered URIs exactly; no
  redirect otherwise (an open redirector is worse than a "signed out" page).
- A logout token is signed with the client's `id_token_signed_response_alg`, as its ID tokens
  are: Back-Channel Logout §2.6 has the RP check its alg as it checks an ID token's.
- Ending a session revokes the grants (refresh and access tokens) it approved (`sid`), except
  those granted `offline_access`: that scope exists so an RP keeps access when the user is gone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from idp.clock import epoch

# ending sessions is the login package's (idp/login/sessions.py); re-exported for the OIDC side
from idp.login.sessions import (  # noqa: F401
    EndedSession,
    describe_ended,
    end_all_sessions,
    end_session,
)
from idp.oidc.clients import RegisteredClient
from idp.oidc.context import OidcContext
from idp.oidc.signing_keys import ALG, ID_TOKEN_ALGS, KeyCache

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_TTL_SECONDS = 120
HINT_MAX_CHARS = 4096  # the request parameter limit (idp/web/params.py) is the same


@dataclass(frozen=True)
class Hint:
    client_id: str
    sub: str
    sid: str | None


class InvalidHint(ValueError):
    """The id_token_hint is not an ID token of ours; the message is safe to show."""


def check_hint(ctx: OidcContext, hint: str) -> Hint:
    if not isinstance(hint, str) or not 20 <= len(hint) <= HINT_MAX_CHARS:
        raise InvalidHint("The id_token_hint is not an ID token issued here.")
    keys = KeySet.import_key_set(ctx.keys.jwks())
    try:
        token = jwt.decode(hint, keys, algorithms=list(ID_TOKEN_ALGS))  # each JWK names its one alg
    except (JoseError, ValueError, TypeError):
        raise InvalidHint("The id_token_hint is not an ID token issued here.") from None
    claims = token.claims
    typ = str(token.header.get("typ", "")).lower()
    if "events" in claims or typ in ("logout+jwt", "at+jwt", "application/at+jwt"):
        # a logout token is not a hint, nor a JWT access token (whose holders include resource servers)
        raise InvalidHint("The id_token_hint is not an ID token issued here.")
    aud = claims.get("aud")
    client_id = aud[0] if isinstance(aud, list) and len(aud) == 1 else aud
    if claims.get("iss") != ctx.issuer or not isinstance(client_id, str) or not isinstance(claims.get("sub"), str):
        raise InvalidHint("The id_token_hint is not an ID token issued here.")
    sid = claims.get("sid")
    return Hint(client_id=client_id, sub=claims["sub"], sid=sid if isinstance(sid, str) else None)


def allowed_redirect(client: RegisteredClient | None, uri: str | None) -> str | None:
    """The post-logout redirect if it is exactly one the client registered; else None."""
    if client is None or not uri:
        return None
    registered = client.config.get("post_logout_redirect_uris") or []
    return uri if uri in registered else None


def logout_token(
    issuer: str, keys: KeyCache, *, client_id: str, sub: str, sid: str, now: datetime, alg: str = ALG
) -> str:
    """Back-Channel Logout 1.0 §2.4: iss, aud, iat, exp, jti, events, sub and sid; no nonce."""
    iat = epoch(now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": client_id,
        "iat": iat,
        "exp": iat + LOGOUT_TOKEN_TTL_SECONDS,
        "jti": uuid.uuid4().hex,
        "events": {BACKCHANNEL_EVENT: {}},
        "sub": sub,
        "sid": sid,
    }
    return keys.get().sign(claims, alg=alg, typ="logout+jwt")
