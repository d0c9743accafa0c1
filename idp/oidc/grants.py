"""The grants idp serves (RFC 6749 §4.1, §4.4, §6; OIDC Core §3.1) on top of Authlib, with
what Authlib leaves to us: S256-only PKCE for every client, single-use codes whose reuse
revokes what they issued, refresh rotation with reuse detection and an optional grace
period, absolute refresh lifetimes, and ID tokens carrying the login's acr/amr/sid."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
)
from authlib.oauth2.rfc7636 import CodeChallenge
from sqlalchemy.orm import Session

from idp.audit.trail import record_audit
from idp.clock import clock_of, epoch
from idp.db.models import AuthorizationCode, User
from idp.login.memberships import memberships_of
from idp.login.policy import may_use
from idp.oidc import id_tokens
from idp.oidc.request import IdpRequest
from idp.oidc.token_store import (
    TokenOwner,
    consume_authorization_code,
    consume_grace_successor,
    consume_refresh_token,
    find_authorization_code,
    find_refresh_grant,
    is_refresh_usable,
    owner_of,
    within_grace,
)
from idp.revocation import revoke_family, revoke_user_grants_at_client
from idp.security.keyring import new_secret

ALL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "client_assertion_jwt", "none"]


@dataclass(frozen=True)
class ApprovedLogin:
    """What the IdP session that approved an authorization request vouches for."""

    user: User
    sid: str
    auth_time: datetime
    acr: str
    amr: tuple[str, ...]


def may_still_use(request: IdpRequest, db: Session, user_id: int) -> bool:
    """The app's allowed_groups, checked again where tokens are issued from a grant (a code
    redeemed, a refresh): one query, and only for a client that has them. A user taken out
    of the groups since the code was issued, or a clients file that narrowed them, ends
    here, with everything else the user holds at that app."""
    client = request.client
    if client.allowed_groups is None:
        return True
    request.memberships = memberships_of(db, user_id)
    if may_use(client.allowed_groups, (group.name for group in request.memberships)):
        return True
    revoke_user_grants_at_client(db, user_id, client.client_id)
    record_audit(
        db,
        "access.refused",
        user_id=user_id,
        client_id=client.client_id,
        ip=request.client_ip,
        outcome="refused",
        reason="not_in_allowed_groups",
        grant_type=request.payload.grant_type,
    )
    return False


class S256CodeChallenge(CodeChallenge):
    """PKCE (RFC 7636) with S256 only, required of every client (OAuth 2.1 / RFC 9700 §2.1.1),
    except a confidential client registered with require_pkce = false: a request of its
    without a challenge must carry a nonce instead (RFC 9700 §2.1.1), and a code issued with
    a challenge still needs its verifier (no downgrade at the token endpoint)."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if (
            not data.get("code_challenge")
            and not data.get("code_challenge_method")
            and not grant.request.client.pkce_required
        ):
            if not data.get("nonce"):
                raise InvalidRequestError("Without PKCE, this client must send a nonce (RFC 9700 section 2.1.1)")
            return
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256")
        if data.get("code_challenge_method") != "S256":  # absent means plain (RFC 7636 §4.3)
            raise InvalidRequestError("Unsupported 'code_challenge_method': only S256 is accepted")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        # A wrong verifier does not burn the code: whoever holds only the code must not be able
        # to spoil the real client's redemption, and 256-bit verifiers cannot be guessed.
        issued_without = not grant.request.authorization_code.code_challenge
        exempt = issued_without and not grant.request.client.pkce_required
        if not grant.request.form.get("code_verifier") and not exempt:
            raise InvalidRequestError("Missing 'code_verifier'")
        super().validate_code_verifier(grant, result)


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS
    request: IdpRequest

    def generate_authorization_code(self) -> str:
        # 256 bits from one os.urandom call (Authlib's default draws one syscall per character)
        return new_secret(32)

    def save_authorization_code(self, code: str, request: IdpRequest) -> None:
        login: ApprovedLogin = request.login
        data = request.payload.data
        now = clock_of(request.db).now()
        request.db.add(
            AuthorizationCode(
                code_digest=request.ctx.keyring.digest(code),
                client_id=request.client.get_client_id(),
                user_id=login.user.id,
                redirect_uri=request.payload.redirect_uri or request.client.get_default_redirect_uri(),
                scope=request.scope,
                nonce=data.get("nonce"),
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method") or "S256",
                sid=login.sid,
                auth_time=login.auth_time,
                acr=login.acr,
                amr=list(login.amr),
                family_id=new_secret(16),
                created_at=now,
                # from the code's own issue time, not the user's auth_time (Authlib's trap)
                expires_at=now + timedelta(seconds=request.ctx.code_ttl_seconds),
            )
        )

    def query_authorization_code(self, code: str, client: Any) -> AuthorizationCode | None:
        db, ctx = self.request.db, self.request.ctx
        row = find_authorization_code(db, ctx.keyring, code)
        if row is None or row.client_id != client.get_client_id():
            return None
        if row.used_at is not None:
            self._revoke_after_reuse(db, row)
            return None
        if row.expires_at <= clock_of(db).now():
            return None
        return _CodeView(row)  # type: ignore[return-value]

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        view: _CodeView = self.request.authorization_code
        db = self.request.db
        if not consume_authorization_code(db, view.row):
            self._revoke_after_reuse(db, view.row)  # lost a race with another redemption
            raise InvalidGrantError("Invalid 'code' in request.")
        return super().create_token_response()  # type: ignore[no-any-return]

    def delete_authorization_code(self, authorization_code: Any) -> None:
        pass  # consumed atomically above; the row stays so that reuse can be detected

    def authenticate_user(self, authorization_code: Any) -> User | None:
        user = self.request.db.get(User, authorization_code.row.user_id)
        if user is None or user.disabled or not may_still_use(self.request, self.request.db, user.id):
            return None  # Authlib answers invalid_grant
        return user

    def _revoke_after_reuse(self, db: Session, row: AuthorizationCode) -> None:
        # RFC 6749 §4.1.2: a code used twice revokes every token issued from it.
        revoke_family(db, row.family_id)
        record_audit(db, "token.code_reused", user_id=row.user_id, client_id=row.client_id, ip=self.request.client_ip)


class _CodeView:
    """AuthorizationCodeMixin over a row (Authlib reads these getters and attributes)."""

    def __init__(self, row: AuthorizationCode) -> None:
        self.row = row
        self.code_challenge = row.code_challenge
        self.code_challenge_method = row.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.row.redirect_uri

    def get_scope(self) -> str:
        return self.row.scope

    def get_nonce(self) -> str | None:
        return self.row.nonce

    def get_auth_time(self) -> int:
        return epoch(self.row.auth_time)

    def get_acr(self) -> str:
        return self.row.acr

    def get_amr(self) -> list[str]:
        return list(self.row.amr)


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ALL_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True
    request: IdpRequest

    def validate_token_request(self) -> None:
        self.server.validate_requested_scope(self.request.payload.scope)
        super().validate_token_request()

    def authenticate_refresh_token(self, refresh_token: str) -> _RefreshView | None:
        db, ctx = self.request.db, self.request.ctx
        row = find_refresh_grant(db, ctx.keyring, refresh_token)
        now = clock_of(db).now()
        if row is None or not is_refresh_usable(row, now):
            return None
        if row.rotated_at is not None and not within_grace(row, ctx.lifetimes, now):
            self._revoke_after_reuse(db, row)
            return None
        return _RefreshView(row)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        view: _RefreshView = self.request.refresh_token
        db, ctx, row = self.request.db, self.request.ctx, view.row
        owner = owner_of(row)
        if owner.disabled:
            raise InvalidGrantError("The refresh token is no longer valid.")
        self._check_access(db, owner)
        self.request.user = owner
        token = self.issue_token(owner, view)
        successor = token["refresh_token"]
        claimed = row.rotated_at is None and consume_refresh_token(
            db,
            row.id,
            successor_digest=ctx.keyring.digest(successor),
            successor_encrypted=(
                ctx.keyring.encrypt("refresh-successor", successor.encode())
                if ctx.lifetimes.grace_seconds > 0
                else None
            ),
        )
        if not claimed:
            # Raced with a concurrent refresh: inside the grace period it gets the same successor,
            # once, and only while that successor is unused; any other replay is reuse.
            handed_out = consume_grace_successor(db, row.id, ctx.lifetimes)
            if handed_out is None:
                self._revoke_after_reuse(db, row)
                raise InvalidGrantError("The refresh token is no longer valid.")
            self.request.reissued_refresh_token = ctx.keyring.decrypt("refresh-successor", handed_out).decode()
        self.save_token(token)
        if "openid" in token.get("scope", "").split():
            token["id_token"] = id_tokens.encode_refresh_id_token(self.request, token, row)
        return 200, token, self.TOKEN_RESPONSE_HEADER

    def _check_access(self, db: Session, owner: TokenOwner) -> None:
        if not may_still_use(self.request, db, owner.id):
            raise InvalidGrantError("The refresh token is no longer valid.")

    def issue_token(self, user: Any, refresh_token: Any) -> dict[str, Any]:
        scope = self.request.payload.scope or refresh_token.get_scope()  # narrowing is allowed (RFC 6749 §6)
        token: dict[str, Any] = self.generate_token(user=user, scope=scope, include_refresh_token=True)
        if "refresh_token" not in token:  # the client lost the refresh_token grant type since
            raise InvalidGrantError("The refresh token is no longer valid.")
        return token

    def authenticate_user(self, refresh_token: Any) -> User | None:
        return self.request.user  # type: ignore[no-any-return]

    def _revoke_after_reuse(self, db: Session, row: Any) -> None:
        # A rotated-out refresh token presented again: assume theft, kill the family.
        revoke_family(db, row.family_id)
        record_audit(
            db, "token.refresh_reused", user_id=row.user_id, client_id=row.client_id, ip=self.request.client_ip
        )


class _RefreshView:
    def __init__(self, row: Any) -> None:  # a find_refresh_grant row
        self.row = row

    def check_client(self, client: Any) -> bool:
        return bool(self.row.client_id == client.get_client_id())

    def get_scope(self) -> str:
        return self.row.scope


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "client_assertion_jwt"]

    def validate_token_request(self) -> None:
        super().validate_token_request()
        scope = self.request.payload.scope or ""
        if "openid" in scope.split() or "offline_access" in scope.split():
            raise InvalidScopeError("openid and offline_access need a user")
