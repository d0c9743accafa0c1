"""Authlib's AuthorizationServer with idp's seams: clients from the registry, tokens into
SQL, responses as framework-neutral values (the web layer turns them into HTTP)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749.errors import (
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    UnsupportedTokenTypeError,
)
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from idp.audit.trail import record_audit
from idp.clock import clock_of, epoch
from idp.db.models import AccessToken, RefreshToken, User
from idp.db.prepared import PreparedInsert, PreparedRead
from idp.oidc import access_jwt
from idp.oidc.access_jwt import JwtAccessPolicy
from idp.oidc.client_key_sets import KeySetUnavailable
from idp.oidc.clients import RegisteredClient
from idp.oidc.context import OidcContext
from idp.oidc.grants import (
    AuthorizationCodeGrant,
    ClientCredentialsGrant,
    RefreshTokenGrant,
    S256CodeChallenge,
)
from idp.oidc.id_tokens import IdpOpenIDCode
from idp.oidc.request import IdpRequest
from idp.oidc.token_store import (
    SUCCESSOR_ROTATED,
    is_refresh_active,
    is_refresh_usable,
    new_token_value,
)
from idp.revocation import mark_revoked, revoke_family
from idp.scopes import SUPPORTED_SCOPES  # and the [[scopes]] clients register (validate_requested_scope)
from idp.state.store import StoreUnavailable

# Inserts built once and run on the driver (idp/db/prepared.py): the ORM's insert path, then
# SQLAlchemy's execution machinery, cost more than the database work itself.
_INSERT_ACCESS_TOKEN = PreparedInsert(
    AccessToken.__table__,
    ("token_digest", "client_id", "user_id", "scope", "family_id", "issued_at", "expires_at", "revoked_at"),
)
_INSERT_REFRESH_TOKEN = PreparedInsert(
    RefreshToken.__table__,
    (
        "token_digest",
        "family_id",
        "client_id",
        "user_id",
        "scope",
        "sid",
        "auth_time",
        "acr",
        "amr",
        "issued_at",
        "expires_at",
        "family_expires_at",
        "rotated_at",
        "successor_digest",
        "successor_encrypted",
        "successor_handed_out",
        "revoked_at",
    ),
)
_endpoint_db: ContextVar[Session] = ContextVar("idp_endpoint_db")
CONFIDENTIAL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "client_assertion_jwt"]
# What a client assertion may be signed with, and what discovery advertises for it: asymmetric
# algorithms only (an HMAC made with a key the client publishes proves nothing)
ASSERTION_SIGNING_ALGS = ("RS256", "ES256", "PS256")


@dataclass(frozen=True)
class OAuthResponse:
    status: int
    body: dict[str, Any] | str
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def location(self) -> str | None:
        return next((v for k, v in self.headers if k.lower() == "location"), None)


def _first_refusal(ctx: OidcContext, client_id: str, retry_after: int) -> bool:
    """Audit the first refusal per client and window, not every one of a flood."""
    try:
        return ctx.store.add(
            f"rl-audited:token_client:{ctx.keyring.digest(client_id)}", b"1", ttl_seconds=max(1, retry_after)
        )
    except StoreUnavailable:
        return True


_AUTH_FAILURE_WINDOW_SECONDS = 600


def _claimed_client_id(request: Any) -> str | None:
    """The client a request says it is, before any of it is believed."""
    user, _ = extract_basic_authorization(request.headers) if request.headers.get("authorization") else (None, None)
    named = user or request.payload.data.get("client_id")
    return named if isinstance(named, str) and len(named) <= 128 else None


def _method_tried(request: Any) -> str:
    if (request.headers.get("authorization") or "")[:6].lower() == "basic ":
        return "client_secret_basic"
    data = request.payload.data
    if data.get("client_assertion"):
        return "private_key_jwt"
    return "client_secret_post" if data.get("client_secret") else "none"


def _audit_failed_authentication(request: Any, client: RegisteredClient | None, tried: str) -> None:
    """One audit row for the first failure per (client, address) in a window, then one at
    10, 100, 1000… with the count: a misconfigured RP is visible at once, a flood is not a
    flood of rows. Unknown client_ids share one key per address. Never the secret."""
    ctx: OidcContext = request.ctx
    key = f"client-auth-failed:{ctx.keyring.digest((client.client_id if client else '?') + '|' + (request.client_ip or '-'))}"
    try:
        count = ctx.store.incr(key, ttl_seconds=_AUTH_FAILURE_WINDOW_SECONDS)
    except StoreUnavailable:
        count = 1  # cannot tell: audit it
    if count == 1 or str(count).strip("0") == "1":
        record_audit(
            request.db,
            "client.authentication_failed",
            client_id=client.client_id if client else None,
            ip=request.client_ip,
            user_agent=request.headers.get("user-agent"),
            outcome="failure",
            method_tried=tried,
            method_registered=client.auth_method if client else None,
            known_client=client is not None,
            count=count,
            window_seconds=_AUTH_FAILURE_WINDOW_SECONDS,
        )


class TooManyRequests(OAuth2Error):
    """429 from the token endpoint, with Retry-After (RFC 6585 §4)."""

    error = "too_many_requests"
    status_code = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(description=f"Too many requests for this client; retry after {retry_after} seconds.")
        self.retry_after = retry_after

    def get_headers(self) -> list[tuple[str, str]]:
        return [*super().get_headers(), ("Retry-After", str(self.retry_after))]


class IdpAuthorizationServer(AuthorizationServer):
    def __init__(self, ctx: OidcContext) -> None:
        super().__init__(scopes_supported=SUPPORTED_SCOPES)
        self.ctx = ctx
        self.register_token_generator("default", self._generate_bearer_token)
        self.register_grant(
            AuthorizationCodeGrant, [S256CodeChallenge(required=True), IdpOpenIDCode(require_nonce=False)]
        )
        self.register_grant(RefreshTokenGrant)
        self.register_grant(ClientCredentialsGrant)
        self.register_client_auth_method(PrivateKeyJWT.CLIENT_AUTH_METHOD, PrivateKeyJWT(ctx))
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)

    def authenticate_client(self, request: Any, methods: list[str], endpoint: str = "token") -> Any:
        try:
            client = super().authenticate_client(request, methods, endpoint)
        except InvalidClientError as error:
            claimed = self.ctx.clients.get(_claimed_client_id(request))
            tried = _method_tried(request)
            # Authlib's text lists internal method names; say what matters to the RP: how it is
            # registered to authenticate (a client_id is no secret; the method is no help to a guesser)
            if (error.description or "").startswith("The client cannot authenticate"):
                error.description = "Client authentication failed."
                if claimed is not None and tried != claimed.auth_method:
                    error.description += f" This client is registered for {claimed.auth_method}, not {tried}."
            _audit_failed_authentication(request, claimed, tried)
            raise
        request.authenticated_client = client
        named = request.payload.data.get("client_id")
        if named is not None and named != client.get_client_id():
            # RFC 7521 §4.2: a client_id that contradicts the authenticated client is an error
            raise InvalidClientError(status_code=401, description="client_id does not match the authenticated client.")
        if endpoint == "token" and self.ctx.rate_limits is not None:
            verdict = self.ctx.rate_limits.hit("token_client", client.get_client_id())
            if not verdict.allowed:
                if _first_refusal(self.ctx, client.get_client_id(), verdict.retry_after):
                    record_audit(
                        request.db,
                        "rate_limit.exceeded",
                        client_id=client.get_client_id(),
                        ip=request.client_ip,
                        user_agent=request.headers.get("user-agent"),
                        outcome="refused",
                        scope=verdict.scope,
                        path="/token",
                        retry_after=verdict.retry_after,
                    )
                raise TooManyRequests(verdict.retry_after)
        return client

    def create_token_response(self, request: IdpRequest) -> OAuthResponse:  # type: ignore[override]
        if not request.payload.grant_type:
            return self.handle_error_response(request, InvalidRequestError("Missing 'grant_type'."))  # RFC 6749 §5.2
        return super().create_token_response(request)  # type: ignore[no-any-return]

    def query_client(self, client_id: str) -> RegisteredClient | None:
        return self.ctx.clients.get(client_id)

    def validate_requested_scope(self, scope: str | None) -> None:
        if scope is not None and (not scope.strip() or len(scope) > 1000):
            raise InvalidScopeError()
        # a custom scope is known once some client registers it; whether *this* client may
        # have it is the client's check (RegisteredClient.get_allowed_scope)
        declared = self.ctx.clients.declared_scopes()
        if scope and not all(value in declared or value in SUPPORTED_SCOPES for value in scope.split()):
            raise InvalidScopeError()

    def create_oauth2_request(self, request: IdpRequest) -> IdpRequest:
        return request

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError("idp takes no JSON requests")

    def handle_response(self, status: int, body: Any, headers: Any) -> OAuthResponse:
        return OAuthResponse(status, body, list(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def _generate_bearer_token(
        self,
        grant_type: str,
        client: RegisteredClient,
        user: Any = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        token: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": new_token_value(),
            "expires_in": self.ctx.lifetimes.access_seconds,
            "scope": scope or "",
        }
        if include_refresh_token and user is not None and client.check_grant_type("refresh_token"):
            token["refresh_token"] = new_token_value()
        return token

    def save_token(self, token: dict[str, Any], request: IdpRequest) -> None:
        now = clock_of(request.db).now()
        life = self.ctx.lifetimes
        keyring = self.ctx.keyring
        user: User | None = request.user
        code = getattr(request.authorization_code, "row", None)
        parent: RefreshToken | None = getattr(request.refresh_token, "row", None)
        family_id = code.family_id if code else parent.family_id if parent else None
        # Core inserts, not ORM objects: nothing reads these rows back in this request, and
        # the ORM's unit-of-work bookkeeping was a quarter of a token request's CPU.
        grant_type = request.payload.grant_type
        record_audit(
            request.db,
            "token.issued",
            user_id=user.id if user else None,
            client_id=request.client.get_client_id(),
            ip=request.client_ip,
            user_agent=request.headers.get("user-agent"),
            outcome="success",
            grant_type=grant_type,
            refresh=("refresh_token" in token and user is not None and family_id is not None),
        )
        policy = request.client.jwt_access
        if policy is not None:
            _issue_access_jwt(token, request, policy, user, code or parent, family_id, now)
        else:
            _INSERT_ACCESS_TOKEN.run(
                request.db.connection(),
                dict(
                    token_digest=keyring.digest(token["access_token"]),
                    client_id=request.client.get_client_id(),
                    user_id=user.id if user else None,
                    scope=token["scope"],
                    family_id=family_id,
                    issued_at=now,
                    expires_at=now + timedelta(seconds=life.access_seconds),
                    revoked_at=None,
                ),
            )
        if "refresh_token" not in token or user is None or family_id is None:
            token.pop("refresh_token", None)
            return
        reissued = getattr(request, "reissued_refresh_token", None)
        if reissued:
            token["refresh_token"] = reissued  # grace period: the raced request gets the same successor
            return
        origin = code or parent
        assert origin is not None
        family_end = parent.family_expires_at if parent else now + timedelta(seconds=life.refresh_absolute_seconds)
        _INSERT_REFRESH_TOKEN.run(
            request.db.connection(),
            dict(
                token_digest=keyring.digest(token["refresh_token"]),
                family_id=family_id,
                client_id=request.client.get_client_id(),
                user_id=user.id,
                # RFC 6749 §6: a refresh that narrows the scope narrows the access token only;
                # the new refresh token keeps the grant's scope, identical to its parent's
                scope=parent.scope if parent is not None else token["scope"],
                sid=origin.sid,
                auth_time=origin.auth_time,
                acr=origin.acr,
                amr=list(origin.amr),
                issued_at=now,
                expires_at=min(now + timedelta(seconds=life.refresh_idle_seconds), family_end),
                family_expires_at=family_end,
                rotated_at=None,
                successor_digest=None,
                successor_encrypted=None,
                successor_handed_out=False,
                revoked_at=None,
            ),
        )
        request.issued_refresh_token = token["refresh_token"]


def _issue_access_jwt(
    token: dict[str, Any],
    request: IdpRequest,
    policy: JwtAccessPolicy,
    user: Any,
    origin: Any,
    family_id: str | None,
    now: datetime,
) -> None:
    """The access token becomes an RFC 9068 JWT (idp/oidc/access_jwt.py): no row is written;
    the audit row above records the issuance as for any token."""
    ctx = request.ctx
    lifetime = policy.lifetime(ctx.lifetimes.access_seconds)
    login = None
    if user is not None and origin is not None:
        login = access_jwt.Login(auth_time=origin.auth_time, acr=origin.acr, amr=list(origin.amr), sid=origin.sid)
    token["access_token"] = access_jwt.issue(
        ctx.keys,
        issuer=ctx.issuer,
        policy=policy,
        client_id=request.client.get_client_id(),
        scope=token["scope"],
        now=now,
        lifetime_seconds=lifetime,
        subject=user.subject if user is not None else None,
        login=login,
        grant_id=family_id,
    )
    token["expires_in"] = lifetime


class PrivateKeyJWT(JWTBearerClientAssertion):
    """private_key_jwt (RFC 7523 §2.2 and §3, OIDC Core §9) against the client's registered
    jwks. `aud` is the issuer alone, as a string (draft-ietf-oauth-rfc7523bis: no audience
    injection); `exp` lies at most IDP_CLIENT_ASSERTION_MAX_SECONDS after `iat` and after
    receipt; the `jti` is single use for as long as the assertion would be accepted."""

    CLIENT_AUTH_METHOD = "client_assertion_jwt"
    LEEWAY_SECONDS = 30  # clock skew allowed on exp, nbf and iat

    def __init__(self, ctx: OidcContext) -> None:
        super().__init__(validate_jti=True, leeway=self.LEEWAY_SECONDS)
        self.ctx = ctx

    def __call__(self, query_client: Any, request: Any) -> Any:
        with _fixed_assertion_errors():
            return super().__call__(query_client, request)

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        # not Authlib's: it allows HS256 and quotes the header's kid and alg in its errors
        with _fixed_assertion_errors():
            claims = jwt.decode(assertion, resolve_key, algorithms=ASSERTION_SIGNING_ALGS).claims
        self.verify_claims(claims)
        return claims

    def verify_claims(self, claims: Any) -> None:
        # before Authlib's checks: they take an array holding a good audience, and record the jti
        self._verify_audience(claims)
        self._verify_lifetime(claims)
        super().verify_claims(claims)

    def get_audiences(self) -> list[str]:
        # for Authlib's check, once _verify_audience has allowed one of these, as a string
        return [self.ctx.issuer, self.ctx.token_endpoint]

    def _verify_audience(self, claims: Any) -> None:
        aud = claims.get("aud")
        client = self.ctx.clients.get(claims.get("sub"))  # the one whose key verified the signature
        # OIDC Core §9's older advice, the token endpoint URL, only where the clients file allows it
        compat = client is not None and client.accepts_token_endpoint_audience
        if isinstance(aud, str) and (aud == self.ctx.issuer or (compat and aud == self.ctx.token_endpoint)):
            return
        raise InvalidClientError(
            description=f"Invalid claim: 'aud' must be the issuer identifier, {self.ctx.issuer}, as a single string."
        )

    def _verify_lifetime(self, claims: Any) -> None:
        # Comparisons, not differences: an integer too large for a float must not raise.
        exp, iat = claims.get("exp"), claims.get("iat")
        if not _is_numeric_date(exp):
            return  # missing or malformed: Authlib's checks refuse it
        longest = self.ctx.client_assertion_max_seconds
        received = int(time.time())  # the wall clock, as joserfc's exp check
        if exp > received + longest + self.leeway or (_is_numeric_date(iat) and exp > iat + longest):
            raise InvalidClientError(
                description=f"The assertion lives too long: exp may be at most {longest} seconds after iat "
                "and after receipt (RFC 7523 section 3)."
            )

    def validate_jti(self, claims: Any, jti: Any) -> bool:
        if not isinstance(jti, str) or not 8 <= len(jti) <= 200:
            return False
        # Kept until joserfc, checking exp against the wall clock (not idp's Clock), refuses the
        # assertion anyway: exp plus leeway, at most the longest lifetime plus twice the leeway.
        ttl_seconds = max(1, math.ceil(claims["exp"] + self.leeway - time.time()) + 1)
        return self.ctx.store.add(f"jti:{claims['sub']}:{jti}", b"1", ttl_seconds=ttl_seconds)

    def resolve_client_public_key(self, client: RegisteredClient) -> KeySet | Callable[[Any], KeySet]:
        jwks = client.config.get("jwks")
        if jwks:
            return KeySet.import_key_set(jwks)
        uri, key_sets = client.config.get("jwks_uri") or "", self.ctx.client_key_sets

        def by_kid(token: Any) -> KeySet:
            # joserfc calls this once the header's alg is allowed: an unknown kid may refetch
            kid = token.headers().get("kid")
            try:
                return key_sets.get(uri, kid=kid if isinstance(kid, str) else None)
            except KeySetUnavailable:
                raise InvalidClientError(description=KeySetUnavailable.public_message) from None

        return by_kid


def _is_numeric_date(value: Any) -> bool:
    return not isinstance(value, bool) and (
        isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    )


@contextmanager
def _fixed_assertion_errors() -> Iterator[None]:
    """joserfc and Authlib echo attacker-chosen header values into messages (and some raise
    TypeError): any such failure becomes invalid_client with a fixed text."""
    try:
        yield
    except InvalidClientError:
        raise
    except (JoseError, ValueError, TypeError):
        raise InvalidClientError(description="Invalid JWT assertion.") from None


class _TokenLookup:
    """Revocation and introspection accept either kind of token, whatever the hint says."""

    server: IdpAuthorizationServer

    def query_token(self, token_string: str, token_type_hint: str | None) -> _TokenView | None:
        if isinstance(token_string, str) and access_jwt.looks_like_jwt(token_string):
            return self._jwt_view(token_string)
        if not isinstance(token_string, str) or not 16 <= len(token_string) <= 256:
            return None
        db = _endpoint_db.get()
        conn = db.connection()
        digest = {"digest": self.server.ctx.keyring.digest(token_string)}
        kinds = ("refresh", "access") if token_type_hint == "refresh_token" else ("access", "refresh")
        for kind in kinds:
            row = _TOKEN_LOOKUPS[kind].first(conn, digest)
            if row is not None:
                return _TokenView(kind, row, clock_of(db).now())
        return None

    def _jwt_view(self, token_string: str) -> _TokenView | None:
        """A JWT access token is checked, not looked up: its signature, expiry and the
        revocation markers in memory (idp/oidc/access_jwt.py)."""
        ctx, now = self.server.ctx, clock_of(_endpoint_db.get()).now()
        claims = access_jwt.read(token_string, keys=ctx.keys, issuer=ctx.issuer, revocations=ctx.revocations, now=now)
        return None if claims is None else _TokenView("jwt", _JwtRow(claims), now)

    def check_params(self, request: IdpRequest, client: Any) -> None:
        try:
            super().check_params(request, client)  # type: ignore[misc]
        except UnsupportedTokenTypeError:
            raise _UnsupportedTokenType() from None

    def create_endpoint_request(self, request: IdpRequest) -> IdpRequest:
        # Endpoint objects are shared by all threads: the request's session goes in a context var.
        _endpoint_db.set(request.db)
        return request


class _UnsupportedTokenType(UnsupportedTokenTypeError):
    """RFC 7009 §2.2.1: a 400, not Authlib's 401 without a challenge."""

    status_code = 400

    def get_headers(self) -> list[tuple[str, str]]:
        return [("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Pragma", "no-cache")]


def _lookup(model: type[AccessToken] | type[RefreshToken], *extra: Any) -> PreparedRead:
    # Core rows joined with the user in one query, run on the driver (idp/db/prepared.py):
    # the ORM's per-object work was most of an introspection request's CPU.
    return PreparedRead(
        select(
            model.id,
            model.client_id,
            model.scope,
            model.issued_at,
            model.expires_at,
            model.revoked_at,
            model.user_id,
            User.subject,
            User.username,
            User.disabled,
            *extra,
        )
        .outerjoin(User, User.id == model.user_id)
        .where(model.token_digest == bindparam("digest"))
    )


_TOKEN_LOOKUPS = {
    "access": _lookup(AccessToken),
    "refresh": _lookup(
        RefreshToken,
        RefreshToken.family_id,
        RefreshToken.family_expires_at,
        RefreshToken.rotated_at,
        RefreshToken.successor_encrypted,
        RefreshToken.successor_handed_out,
        SUCCESSOR_ROTATED.label("successor_rotated"),
    ),
}


class _JwtRow:
    """A verified JWT access token in the shape _TokenView reads from a row."""

    def __init__(self, claims: access_jwt.AccessClaims) -> None:
        self.claims = claims
        self.client_id = claims.client_id
        self.scope = claims.scope
        self.expires_at = datetime.fromtimestamp(claims.expires_at, UTC)
        self.revoked_at = None  # access_jwt.read returns no revoked token


class _TokenView:
    def __init__(self, kind: str, row: Any, now: datetime) -> None:
        self.kind = kind
        self.row = row
        self.now = now  # of the request that looked it up

    def check_client(self, client: Any) -> bool:
        return bool(self.row.client_id == client.get_client_id())

    def get_scope(self) -> str:
        return self.row.scope

    def is_expired(self) -> bool:
        row, now = self.row, self.now
        return not (is_refresh_usable(row, now) if self.kind == "refresh" else row.expires_at > now)

    def is_revoked(self) -> bool:
        return self.row.revoked_at is not None


class Revocation(_TokenLookup, RevocationEndpoint):
    CLIENT_AUTH_METHODS = CONFIDENTIAL_AUTH_METHODS + ["none"]

    def revoke_token(self, token: _TokenView, request: IdpRequest) -> None:
        row = token.row
        record_audit(
            request.db,
            "token.revoked",
            user_id=_user_id_of(request.db, row.claims) if token.kind == "jwt" else row.user_id,
            client_id=row.client_id,
            ip=request.client_ip,
            user_agent=request.headers.get("user-agent"),
            outcome="success",
            token_type=token.kind,
        )
        if token.kind == "jwt":
            claims = row.claims
            until = datetime.fromtimestamp(claims.expires_at, UTC)
            mark_revoked(request.db, [("token", claims.jti)], until=until)
            self.server.ctx.revocations.note("token", claims.jti, clock_of(request.db).now())
        elif token.kind == "refresh":
            revoke_family(request.db, row.family_id)  # RFC 7009 §2.1: and the access tokens of that grant
        elif row.revoked_at is None:
            request.db.execute(
                update(AccessToken).where(AccessToken.id == row.id).values(revoked_at=clock_of(request.db).now())
            )


class Introspection(_TokenLookup, IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = CONFIDENTIAL_AUTH_METHODS  # RFC 7662 §2.1: callers must authenticate

    def check_permission(self, token: _TokenView, client: Any, request: IdpRequest) -> bool:
        # A client may introspect only what was issued to it: no token scanning across RPs.
        return token.check_client(client)

    def introspect_token(self, token: _TokenView) -> dict[str, Any]:
        row = token.row
        if token.kind == "jwt":
            return _introspect_jwt(row.claims, self.server.ctx.issuer)
        if token.kind == "refresh" and not is_refresh_active(row, self.server.ctx.lifetimes, token.now):
            return {"active": False}  # RFC 7662 §2.2: rotated out, and no grace hand-out still due
        payload: dict[str, Any] = {
            "active": True,
            "client_id": row.client_id,
            "scope": row.scope,
            "iss": self.server.ctx.issuer,
            "token_type": "Bearer" if token.kind == "access" else "refresh_token",
            "exp": epoch(row.expires_at),
            "iat": epoch(row.issued_at),
        }
        if row.user_id is not None:
            if row.subject is None or row.disabled:
                return {"active": False}
            payload.update(sub=row.subject, username=row.username)
        return payload


def _introspect_jwt(claims: access_jwt.AccessClaims, issuer: str) -> dict[str, Any]:
    """RFC 7662 §2.2 from the token alone: no username (that would be a lookup; the sub is
    there), and a user the admin disabled is covered by the revocation markers."""
    return {
        "active": True,
        "client_id": claims.client_id,
        "scope": claims.scope,
        "iss": issuer,
        "token_type": "Bearer",
        "exp": claims.expires_at,
        "iat": claims.issued_at,
        "sub": claims.subject,
        "aud": claims.audience,
        "jti": claims.jti,
    }


def _user_id_of(db: Session, claims: access_jwt.AccessClaims) -> int | None:
    return db.scalar(select(User.id).where(User.subject == claims.subject)) if claims.for_user else None
