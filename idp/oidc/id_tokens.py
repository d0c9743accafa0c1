"""ID tokens (OIDC Core §2, §3.1.3.6): signed with the algorithm the client registered as
`id_token_signed_response_alg` (OIDC Registration §2; RS256 when absent) under the current key
of that family, carrying the login's auth_time/acr/amr/sid, the nonce and at_hash, and the
claims of the granted scopes (idp/oidc/claims.py) unless the client registered
id_token_claims = "minimal" (then only userinfo has them)."""

from __future__ import annotations

from typing import Any

from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.core.util import create_half_hash

from idp.clock import clock_of, epoch
from idp.db.models import RefreshToken, User
from idp.login.memberships import memberships_of
from idp.oidc.claims import GroupsLoader, build_user_info
from idp.oidc.clients import RegisteredClient
from idp.oidc.request import IdpRequest
from idp.oidc.signing_keys import ALG, family_of


def id_token_alg(client: RegisteredClient | None) -> str:
    """The JWS alg of the client's ID tokens, exactly as registered ("EdDSA" stays "EdDSA")."""
    alg = (client.config.get("id_token_signed_response_alg") if client is not None else None) or ALG
    family_of(alg)  # the clients file admits no other value; a stored row that does is a bug, said loudly
    return str(alg)


def build_at_hash(access_token: str, alg: str) -> str | None:
    """OIDC Core §3.1.3.6: the left half of the access token's hash under the alg's hash. It is
    OPTIONAL in the code flow, and left out for Ed25519/EdDSA, whose hash no published text fixes:
    Authlib's client fails an `Ed25519` at_hash and PyJWT-based ones an `EdDSA` one."""
    if family_of(alg) == "Ed25519":
        return None
    return create_half_hash(access_token, alg).decode("ascii")  # type: ignore[no-any-return]


def sign(request: IdpRequest, claims: dict[str, Any]) -> str:
    return request.ctx.keys.get().sign(claims, alg=id_token_alg(request.client), typ="JWT")


def _base_claims(request: IdpRequest, user: User, token: dict[str, Any]) -> dict[str, Any]:
    now = epoch(clock_of(request.db).now())
    client_id = request.client.get_client_id()
    if request.client.minimal_id_token:
        claims: dict[str, Any] = {"sub": user.subject}
    else:
        claims = build_user_info(user, token.get("scope", ""), request.client, _groups_of(request, user.id))
    claims.update(
        iss=request.ctx.issuer, aud=client_id, azp=client_id, iat=now, exp=now + request.ctx.id_token_ttl_seconds
    )
    access_token = token.get("access_token")
    if access_token and (at_hash := build_at_hash(access_token, id_token_alg(request.client))):
        claims["at_hash"] = at_hash
    return claims


def _groups_of(request: IdpRequest, user_id: int) -> GroupsLoader:
    """The user's group names, read when the groups claim is released: from the access check
    of this very request when it read them (request.memberships), else with one query."""

    def load() -> list[str]:
        memberships = request.memberships
        if memberships is None:
            memberships = memberships_of(request.db, user_id)
        return [membership.name for membership in memberships]

    return load


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
