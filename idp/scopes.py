"""The scopes idp serves and the claims each one releases (OIDC Core §5.4, plus `groups`),
and the claim names that belong to the protocol or to idp itself: no admin may set them as
a user's attribute nor declare them as a custom claim in the clients file's [[scopes]]."""

from __future__ import annotations

from dataclasses import dataclass

# OIDC Core §5.1 claims of the profile scope; `name`, `preferred_username` and `updated_at`
# come from the user's own columns, the others from the attributes an admin set.
PROFILE_CLAIMS = (
    "name",
    "family_name",
    "given_name",
    "middle_name",
    "nickname",
    "preferred_username",
    "profile",
    "picture",
    "website",
    "gender",
    "birthdate",
    "zoneinfo",
    "locale",
    "updated_at",
)
PHONE_CLAIMS = ("phone_number", "phone_number_verified")
STANDARD_SCOPES: dict[str, tuple[str, ...]] = {
    "openid": ("sub",),
    "profile": PROFILE_CLAIMS,
    "email": ("email", "email_verified"),
    "phone": PHONE_CLAIMS,
    "groups": ("groups",),  # only the groups the client may see (its groups_claim)
    "offline_access": (),
}
SUPPORTED_SCOPES = tuple(STANDARD_SCOPES)
# What an ID token carries besides the scopes' claims (RFC 7519 §4.1, OIDC Core §2 and
# §3.1.3.6, Back-Channel Logout §2.1)
ID_TOKEN_CLAIMS = ("iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "azp", "at_hash", "sid")
# Claims idp fills in itself (from the user's columns or memberships), or does not offer
# (`address` is a structured claim; there is no address scope).
SERVED_CLAIMS = frozenset({"name", "preferred_username", "email", "email_verified", "updated_at", "groups", "address"})
# Registered in IANA's "JSON Web Token Claims" registry for tokens, protocols and
# confirmation (JWT, OIDC, SET, token exchange, DPoP, RAR, SCIM-in-JWT): an attribute or a
# custom claim of these names would mean something else to every library that reads it.
REGISTERED_CLAIMS = frozenset(
    {
        *ID_TOKEN_CLAIMS,
        "nbf",
        "jti",
        "c_hash",
        "s_hash",
        "sub_jwk",
        "cnf",
        "events",
        "toe",
        "txn",
        "act",
        "scope",
        "client_id",
        "may_act",
        "roles",
        "entitlements",
        "htm",
        "htu",
        "ath",
        "authorization_details",
        "vot",
        "vtm",
        "nationalities",
        "auth_req_id",
    }
)
RESERVED_CLAIMS = REGISTERED_CLAIMS | SERVED_CLAIMS


@dataclass(frozen=True)
class ScopeDeclaration:
    """A scope the admin declared in the clients file ([[scopes]]) and the custom claims (user
    attributes, `idp user set U --attr NAME=VALUE`) it releases; `description` is shown on the
    consent page."""

    name: str
    claims: tuple[str, ...]
    description: str | None = None
