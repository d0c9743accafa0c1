"""UserInfo (OIDC Core §5.3): the claims of the user an access token was issued for,
released by the token's scope. Bearer tokens per RFC 6750 §2.1 and §2.2."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from idp.clock import utcnow
from idp.db.models import User
from idp.oidc.id_tokens import build_user_info
from idp.oidc.token_store import find_access_token, is_access_usable
from idp.security.keyring import Keyring


@dataclass(frozen=True)
class UserInfoError:
    status: int
    error: str
    description: str


def userinfo_for(db: Session, keyring: Keyring, access_token: str | None) -> dict[str, Any] | UserInfoError:
    if not access_token:
        return UserInfoError(401, "invalid_request", "No bearer token.")
    row = find_access_token(db, keyring, access_token)
    if row is None or not is_access_usable(row, utcnow()) or row.user_id is None:
        return UserInfoError(401, "invalid_token", "The access token is invalid, expired or revoked.")
    if "openid" not in row.scope.split():
        return UserInfoError(403, "insufficient_scope", "The token was not issued for openid.")
    user = db.get(User, row.user_id)
    if user is None or user.disabled:
        return UserInfoError(401, "invalid_token", "The access token is invalid, expired or revoked.")
    return dict(build_user_info(user, row.scope))
