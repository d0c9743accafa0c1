"""UserInfo (OIDC Core §5.3): the claims of the user an access token was issued for,
released by the token's scope (idp/oidc/claims.py). Bearer tokens per RFC 6750 §2.1 and §2.2."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select

from idp.db.models import AccessToken, Group, GroupMember, User
from idp.oidc.claims import build_user_info
from idp.oidc.clients import ClientRegistry
from idp.security.keyring import Keyring


@dataclass(frozen=True)
class UserInfo:
    claims: dict[str, Any]
    client_id: str  # the client the token was issued to (whose pages may read the answer)


@dataclass(frozen=True)
class UserInfoError:
    status: int
    error: str
    description: str


# One read-only query for token and user together; Core rows, not ORM objects: the ORM's
# identity-map work was over half of a userinfo request's CPU.
_TOKEN_AND_USER = (
    select(
        AccessToken.expires_at,
        AccessToken.revoked_at,
        AccessToken.scope,
        AccessToken.client_id,
        AccessToken.user_id,
        User.subject,
        User.username,
        User.name,
        User.email,
        User.email_verified,
        User.updated_at,
        User.disabled,
        User.attributes,
    )
    .join(User, User.id == AccessToken.user_id)
    .where(AccessToken.token_digest == bindparam("digest"))
)
# only for a token whose scope releases `groups`
_GROUP_NAMES = (
    select(Group.name)
    .join(GroupMember, GroupMember.group_id == Group.id)
    .where(GroupMember.user_id == bindparam("user_id"))
)
_INVALID = UserInfoError(401, "invalid_token", "The access token is invalid, expired or revoked.")


def userinfo_for(
    conn: Connection, keyring: Keyring, access_token: str | None, *, now: datetime, clients: ClientRegistry
) -> UserInfo | UserInfoError:
    if not access_token:
        return UserInfoError(401, "invalid_request", "No bearer token.")
    if not 16 <= len(access_token) <= 256:
        return _INVALID
    row = conn.execute(_TOKEN_AND_USER, {"digest": keyring.digest(access_token)}).first()
    if row is None or row.revoked_at is not None or row.expires_at <= now or row.disabled:
        return _INVALID
    if "openid" not in row.scope.split():
        return UserInfoError(403, "insufficient_scope", "The token was not issued for openid.")
    client = clients.get(row.client_id)

    def load_groups() -> list[str]:
        return list(conn.scalars(_GROUP_NAMES, {"user_id": row.user_id}))

    return UserInfo(build_user_info(row, row.scope, client, load_groups), row.client_id)
