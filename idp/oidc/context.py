"""What the OIDC layer needs from the rest of idp, handed over once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from idp.oidc.access_jwt import RevocationList
from idp.oidc.client_key_sets import ClientKeySets
from idp.oidc.clients import ClientRegistry
from idp.oidc.signing_keys import KeyCache
from idp.oidc.token_store import Lifetimes
from idp.security.keyring import Keyring
from idp.state.store import StateStore


@dataclass(frozen=True)
class OidcContext:
    issuer: str
    keyring: Keyring
    keys: KeyCache
    clients: ClientRegistry
    store: StateStore
    lifetimes: Lifetimes
    code_ttl_seconds: int
    id_token_ttl_seconds: int
    client_key_sets: ClientKeySets  # private_key_jwt clients' jwks_uri, fetched off the request path
    revocations: RevocationList  # what JWT access tokens must hear of (idp/oidc/access_jwt.py)
    # RateLimits (idp/security/rate_limits.py): the token endpoint's per-client limit,
    # counted after the client has authenticated, so nobody can spend another client's quota.
    rate_limits: Any = None
    # IDP_CLIENT_ASSERTION_MAX_SECONDS: how far a private_key_jwt assertion's exp may lie after
    # its iat and after its receipt (RFC 7523 §3)
    client_assertion_max_seconds: int = 300

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"
