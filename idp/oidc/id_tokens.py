"""ID tokens (OIDC Core §2, §3.1.3.6): RS256-signed with the current key's kid, carrying
the login's auth_time/acr/amr/sid, the nonce and at_hash."""
from __future__ import annotations

import time
from typing import Any

from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.core.util import create_half_hash
from joserfc import jwt

from idp.clock import epoch
from idp.db.models import RefreshToken, User
from idp.oidc.request import IdpRequest
from idp.oidc.signing_keys import ALG


def build_user_info(user: Any, scope: str) -> UserInfo:
    """Claims released by the scope; `user` is a User or a row with the same attributes."""
    scopes = set(scope.split())
    info = UserInfo(sub=user.subject)
    if "profile" in scopes:
        info["preferred_username"] = user.username
        if user.name:
            info["name"] = user.name
        info["updated_at"] = epoch(user.updated_at)
    if "email" in scopes and user.email:
        info["email"] = user.email
        info["email_verified"] = False  # idp does not verify addresses (yet): say so
    return info


def sign(request: IdpRequest, claims: dict[str, Any]) -> str:
    key = request.ctx.keys.get().signing_key
    return jwt.encode({"alg": ALG, "kid": key.kid, "typ": "JWT"}, claims, key, [ALG])


def _base_claims(request: IdpRequest, user: User, token: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time())
    client_id = request.client.get_client_id()
    claims: dict[str, Any] = dict(build_user_info(user, token.get("scope", "")))
    claims.update(iss=request.ctx.issuer, aud=client_id, azp=client_id, iat=now, exp=now + request.ctx.id_token_ttl_seconds)
    if access_token := token.get("access_token"):
        claims["at_hash"] = create_half_hash(access_token, ALG).decode("ascii")
    return claims


def encode_refresh_id_token(request: IdpRequest, token: dict[str, Any], row: RefreshToken) -> str:
    # OIDC Core §12.2: same sub, iss, aud, auth_time and acr as the original; no nonce.
    claims = _base_claims(request, request.user, token)
    claims.update(auth_time=epoch(row.auth_time), acr=row.acr, amr=list(row.amr))
    if row.sid:
        claims["sid"] = row.sid
    return sign(request, claims)


class IdpOpenIDCode(OpenIDCode):
    """Authlib's OpenID extension of the code grant, signing with our key cache."""

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return False  # the nonce is the RP's replay check; PKCE binds the code to the RP's session

    def encode_id_token(self, token: dict[str, Any], request: IdpRequest) -> str:  # type: ignore[override]
        code = request.authorization_code.row
        claims = _base_claims(request, request.user, token)
        claims.update(auth_time=epoch(code.auth_time), acr=code.acr, amr=list(code.amr))
        if code.nonce:
            claims["nonce"] = code.nonce
        if code.sid:
            claims["sid"] = code.sid
        return sign(request, claims)
