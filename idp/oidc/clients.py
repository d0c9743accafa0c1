"""Relying parties as Authlib sees them (ClientMixin), served from an in-memory registry
that the app reloads from the database every few seconds, so a token request costs no
client query and a `clients sync` on any host reaches every process."""

from __future__ import annotations

import threading
from typing import Any

from authlib.oauth2.rfc6749 import ClientMixin
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from idp.db.models import Client
from idp.oidc import redirects
from idp.oidc.access_jwt import JwtAccessPolicy
from idp.oidc.origins import origin_of
from idp.scopes import ScopeDeclaration
from idp.security.keyring import Keyring


class RegisteredClient(ClientMixin):
    def __init__(self, row_config: dict[str, Any], secret_digest: str | None, keyring: Keyring) -> None:
        self.config = row_config
        self.client_id: str = row_config["client_id"]
        self._secret_digest = secret_digest
        self._keyring = keyring
        self.cors_origins = _cors_origins(row_config)
        groups = row_config.get("allowed_groups")
        # None: everyone may use the app; else members of any of these (read on every refresh)
        self.allowed_groups: frozenset[str] | None = frozenset(groups) if groups is not None else None
        # the clients file's [[scopes]] this client registered, by name (idp/oidc/claims.py)
        self.declared_scopes = {
            d["name"]: ScopeDeclaration(d["name"], tuple(d["claims"]), d.get("description"))
            for d in row_config.get("declared_scopes") or ()
        }
        # "all": the groups claim lists every group of the user, not only the allowed_groups
        self.groups_claim_all = row_config.get("groups_claim") == "all"
        # the scopes' claims only at userinfo, none in the ID token
        self.minimal_id_token = row_config.get("id_token_claims") == "minimal"
        # None: opaque access tokens (a row each); else RFC 9068 JWTs (idp/oidc/access_jwt.py)
        self.jwt_access = JwtAccessPolicy.of(row_config)
        # read on every token request: split once here, not per call
        self._scopes = frozenset(str(row_config.get("scope", "")).split())
        self._grant_types = frozenset(row_config.get("grant_types") or ())

    def __repr__(self) -> str:
        return f"RegisteredClient({self.client_id!r})"

    @property
    def client_name(self) -> str:
        return str(self.config.get("client_name") or self.client_id)

    @property
    def is_public(self) -> bool:
        return self.auth_method == "none"

    @property
    def auth_method(self) -> str:
        return str(self.config["token_endpoint_auth_method"])

    @property
    def pkce_required(self) -> bool:
        return self.is_public or self.config.get("require_pkce", True) is not False

    @property
    def first_party(self) -> bool:
        return bool(self.config.get("first_party"))

    @property
    def accepts_token_endpoint_audience(self) -> bool:
        """private_key_jwt: the token endpoint URL is also a good assertion `aud` (clients file:
        token_endpoint_audience_compat)."""
        return self.config.get("token_endpoint_audience_compat") is True

    @property
    def scopes(self) -> frozenset[str]:
        return self._scopes

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        # Never guess: a request without redirect_uri is valid only with exactly one registered.
        uris = self.config.get("redirect_uris") or []
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        # A scope outside the client's policy is refused (None → invalid_scope), never silently dropped.
        if not scope:
            return " ".join(sorted(self.scopes & {"openid", "profile", "email"}))
        requested = scope.split()
        return " ".join(requested) if set(requested) <= self.scopes else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # exact, but for a native app's loopback IP redirects any port (RFC 8252 §7.3)
        native = self.config.get("application_type") == "native"
        return redirects.check_redirect_uri(redirect_uri, self.config.get("redirect_uris") or (), native=native)

    def check_client_secret(self, client_secret: str) -> bool:
        if self._secret_digest is None:
            return False
        return self._keyring.check_digest(client_secret, self._secret_digest)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if method == "client_assertion_jwt":
            method = "private_key_jwt"
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type in (self.config.get("response_types") or ["code"])

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self._grant_types


def _cors_origins(config: dict[str, Any]) -> frozenset[str]:
    """The web origins whose pages may read this client's token and userinfo answers: those
    listed in allowed_cors_origins, and for a public client (an app in the browser) the
    origins of its redirect URIs. A confidential client's secret never belongs in a page."""
    origins = set(config.get("allowed_cors_origins") or ())
    if config.get("token_endpoint_auth_method") == "none":
        origins.update(o for o in map(origin_of, config.get("redirect_uris") or ()) if o is not None)
    return frozenset(origins)


class ClientRegistry:
    """All clients in memory. Loaded at start-up and reloaded by the app's background
    refresher, never inside a request: a request may hold the only database connection."""

    def __init__(self, sessions: sessionmaker[Session], keyring: Keyring) -> None:
        self._sessions = sessions
        self._keyring = keyring
        self._clients: dict[str, RegisteredClient] | None = None
        self._cors_origins: frozenset[str] = frozenset()
        self._declared_scopes: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def get(self, client_id: object) -> RegisteredClient | None:
        if not isinstance(client_id, str) or len(client_id) > 128:
            return None
        if self._clients is None:
            self.reload()
        assert self._clients is not None
        return self._clients.get(client_id)

    def reload(self) -> None:
        with self._lock, self._sessions() as db:
            rows = db.scalars(select(Client)).all()
            clients = {r.client_id: RegisteredClient(r.config, r.secret_digest, self._keyring) for r in rows}
            self._cors_origins = frozenset().union(*(c.cors_origins for c in clients.values()))
            declared = {d.name: d.claims for c in clients.values() for d in c.declared_scopes.values()}
            if declared != self._declared_scopes:
                self._declared_scopes = declared  # a new object only on a change: discovery rebuilds then
            self._clients = clients

    def cors_origins(self) -> frozenset[str]:
        """Every origin some client registered: the ones a CORS preflight is answered for."""
        if self._clients is None:
            self.reload()
        return self._cors_origins

    def declared_scopes(self) -> dict[str, tuple[str, ...]]:
        """Every custom scope some client registered ([[scopes]] in the clients file), with
        its claims: the scope names the server accepts, and what discovery lists."""
        if self._clients is None:
            self.reload()
        return self._declared_scopes
