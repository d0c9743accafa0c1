"""Provider metadata (OIDC Discovery 1.0 §3, RFC 8414, RFC 9207 §3): one document, served
as precomputed bytes, built again only when the custom scopes that clients register (the
clients file's [[scopes]]) change, so that scopes_supported and claims_supported list what
idp releases: the standard scopes and claims, and the declared ones."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from idp.oidc.clients import ClientRegistry
from idp.oidc.server import ASSERTION_SIGNING_ALGS
from idp.oidc.signing_keys import ID_TOKEN_ALGS
from idp.scopes import ID_TOKEN_CLAIMS, STANDARD_SCOPES, SUPPORTED_SCOPES

ACR_VALUES = ["pwd", "mfa", "phr"]  # the ladder of idp/login/policy.py


def build_metadata(issuer: str, declared: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """`declared`: the custom scopes clients registered, with their claims."""
    declared = declared or {}
    claims = (*ID_TOKEN_CLAIMS, *(c for released in STANDARD_SCOPES.values() for c in released))
    claims += tuple(c for name in sorted(declared) for c in declared[name])
    auth_methods = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "jwks_uri": f"{issuer}/jwks",
        "revocation_endpoint": f"{issuer}/revoke",
        "introspection_endpoint": f"{issuer}/introspect",
        "end_session_endpoint": f"{issuer}/logout",
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "scopes_supported": [*SUPPORTED_SCOPES, *sorted(declared)],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "form_post"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        # per client (id_token_signed_response_alg); "EdDSA" is the older name of "Ed25519"
        "id_token_signing_alg_values_supported": list(ID_TOKEN_ALGS),
        "token_endpoint_auth_methods_supported": auth_methods,
        # private_key_jwt at each endpoint (RFC 8414 §2: required beside the method)
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_SIGNING_ALGS),
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_signing_alg_values_supported": list(ASSERTION_SIGNING_ALGS),
        "introspection_endpoint_auth_methods_supported": auth_methods[:3],
        "introspection_endpoint_auth_signing_alg_values_supported": list(ASSERTION_SIGNING_ALGS),
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": list(dict.fromkeys(claims)),
        "acr_values_supported": ACR_VALUES,
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "claims_parameter_supported": False,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "authorization_response_iss_parameter_supported": True,
    }


def metadata_bytes(issuer: str, declared: Mapping[str, tuple[str, ...]] | None = None) -> bytes:
    return json.dumps(build_metadata(issuer, declared), separators=(",", ":")).encode()


class DiscoveryDocument:
    """The document's bytes, rebuilt when the registry's declared scopes change (its reload
    keeps the same mapping object while they stay the same)."""

    def __init__(self, issuer: str, clients: ClientRegistry) -> None:
        self._issuer = issuer
        self._clients = clients
        self._built_for: object = None
        self._bytes = b""

    def current(self) -> bytes:
        declared = self._clients.declared_scopes()
        if declared is not self._built_for:
            self._bytes, self._built_for = metadata_bytes(self._issuer, declared), declared
        return self._bytes
