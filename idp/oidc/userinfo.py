"""UserInfo (OIDC Core §5.3): the claims of the user an access token was issued for,
released by the token's scope (idp/oidc/claims.py). Bearer tokens per RFC 6750 §2.1 and §2.2."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select

from idp.db.models import AccessToken, Group, GroupMember, User
from idp.db.prepared import PreparedRead
from idp.oidc import access_jwt
from idp.oidc.claims import build_user_info
from idp.oidc.context import OidcContext


@dataclass(frozen=True)
class UserInfo:
    claims: dict[str, Any]
    client_id: str  # the client the token was issued to (whose pages may read the answer)


@dataclass(frozen=True)
class UserInfoError:
    status: int
    error: str
    description: str


# The user's columns the claims are built from (idp/oidc/claims.py)
_USER_COLUMNS = (
    User.subject,
    User.username,
    User.name,
    User.email,
    User.email_verified,
    User.updated_at,
    User.disabled,
    User.attributes,
)
# One read-only query for token and user together, run on the driver (idp/db/prepared.py):
# the ORM's identity-map work was over half of a userinfo request's CPU, and SQLAlchemy's
# execution machinery a fifth of what was left.
_TOKEN_AND_USER = PreparedRead(
    select(
        AccessToken.expires_at,
        AccessToken.revoked_at,
        AccessToken.scope,
        AccessToken.client_id,
        AccessToken.user_id,
        *_USER_COLUMNS,
    )
    .join(User, User.id == AccessToken.user_id)
    .where(AccessToken.token_digest == bindparam("digest"))
)
# A JWT access token (idp/oidc/access_jwt.py) is verified, not looked up: only its user is read.
_USER_BY_SUBJECT = PreparedRead(
    select(User.id.label("user_id"), *_USER_COLUMNS).where(User.subject == bindparam("subject"))
)
# only for a token whose scope releases `groups`
_GROUP_NAMES = (
    select(Group.name)
    .join(GroupMember, GroupMember.group_id == Group.id)
    .where(GroupMember.user_id == bindparam("user_id"))
)
_INVALID = UserInfoError(401, "invalid_token", "The access token is invalid, expired or revoked.")


def userinfo_for(
    conn: Connection, ctx: OidcContext, access_token: str | None, *, now: datetime
) -> UserInfo | UserInfoError:
    if not access_token:
        return UserInfoError(401, "invalid_request", "No bearer token.")
    if access_jwt.looks_like_jwt(access_token):
        return _for_jwt(conn, ctx, access_token, now)
    if not 16 <= len(access_token) <= 256:
        return _INVALID
    row = _TOKEN_AND_USER.first(conn, {"digest": ctx.keyring.digest(access_token)})
    if row is None or row.revoked_at is not None or row.expires_at <= now or row.disabled:
        return _INVALID
    return _claims_of(conn, ctx, row, row.scope, row.client_id)


def _for_jwt(conn: Connection, ctx: OidcContext, access_token: str, now: datetime) -> UserInfo | UserInfoError:
    claims = access_jwt.read(access_token, keys=ctx.keys, issuer=ctx.issuer, revocations=ctx.revocations, now=now)
    if claims is None or not claims.for_user:
        return _INVALID
    row = _USER_BY_SUBJECT.first(conn, {"subject": claims.subject})
    if row is None or row.disabled:
        return _INVALID
    return _claims_of(conn, ctx, row, claims.scope, claims.client_id)


def _claims_of(conn: Connection, ctx: OidcContext, row: Any, scope: str, client_id: str) -> UserInfo | UserInfoError:
    if "openid" not in scope.split():
        return UserInfoError(403, "insufficient_scope", "The token was not issued for openid.")
    client = ctx.clients.get(client_id)

    def load_groups() -> list[str]:
        return list(conn.scalars(_GROUP_NAMES, {"user_id": row.user_id}))

    return UserInfo(build_user_info(row, scope, client, load_groups), client_id)
