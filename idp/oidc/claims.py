"""The claims a token releases about its user (OIDC Core §5.3.2, §5.4): those of the scopes
that the grant holds *and* the client still registers, `groups` as far as the client may
see them (its groups_claim), and the custom claims of the clients file's [[scopes]]. One
function serves the ID token, the refreshed ID token and userinfo; what the consent page
lists comes from the same table."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from idp.clock import epoch
from idp.login.memberships import memberships_of
from idp.oidc.clients import RegisteredClient
from idp.scopes import PROFILE_CLAIMS

# the profile claims that come from the attributes an admin set (the others are columns)
_PROFILE_ATTRIBUTES = tuple(c for c in PROFILE_CLAIMS if c not in ("name", "preferred_username", "updated_at"))

GroupsLoader = Callable[[], Iterable[str]]  # the user's group names, read only when released


def released_scopes(client: RegisteredClient | None, scope: str) -> set[str]:
    """The granted scopes the client still registers (a clients file may have narrowed it
    since the grant); nothing but openid for a client that is gone."""
    granted = set(scope.split())
    return granted & (client.scopes if client is not None else {"openid"})


def visible_groups(client: RegisteredClient, names: Iterable[str]) -> list[str]:
    """The groups the client may see: its allowed_groups, or all with groups_claim = "all"."""
    if client.groups_claim_all:
        return sorted(set(names))
    allowed = client.allowed_groups or frozenset()
    return sorted({name for name in names if name in allowed})


def build_user_info(
    user: Any, scope: str, client: RegisteredClient | None, load_groups: GroupsLoader
) -> dict[str, Any]:
    """`user` is a User or a row with its columns (subject, username, name, email,
    email_verified, updated_at, attributes)."""
    scopes = released_scopes(client, scope)
    attributes: dict[str, Any] = user.attributes or {}
    info: dict[str, Any] = {"sub": user.subject}
    if "profile" in scopes:
        info["preferred_username"] = user.username
        if user.name:
            info["name"] = user.name
        info.update(_present(attributes, _PROFILE_ATTRIBUTES))
        info["updated_at"] = epoch(user.updated_at)
    if "email" in scopes and user.email:
        info["email"] = user.email
        info["email_verified"] = bool(user.email_verified)  # set by an admin (idp user add/set)
    if "phone" in scopes and "phone_number" in attributes:
        info["phone_number"] = attributes["phone_number"]
        info["phone_number_verified"] = attributes.get("phone_number_verified") is True
    if client is not None:
        if "groups" in scopes:
            info["groups"] = visible_groups(client, load_groups())  # [] : in none of the groups it may see
        for name in sorted(scopes & client.declared_scopes.keys()):
            info.update(_present(attributes, client.declared_scopes[name].claims))
    return info


@dataclass(frozen=True)
class SharedScope:
    """What the consent page says one scope shares."""

    scope: str
    claims: tuple[str, ...] = ()  # a declared scope's custom claim names
    description: str | None = None  # a declared scope's description
    groups: tuple[str, ...] | None = None  # `groups`: the names the client will see (None: not known)


def shared_on_consent(db: Session, client: RegisteredClient, scope: str, user_id: int | None) -> list[SharedScope]:
    """Per requested scope, in the request's order: what the user would let the client see
    (their groups are read only when `groups` is asked; None: the user is not known here)."""
    shared = []
    for name in dict.fromkeys(scope.split()):
        if name == "groups" and user_id is not None:
            names = (m.name for m in memberships_of(db, user_id))
            shared.append(SharedScope(name, groups=tuple(visible_groups(client, names))))
        elif name in client.declared_scopes:
            declared = client.declared_scopes[name]
            shared.append(SharedScope(name, claims=declared.claims, description=declared.description))
        else:
            shared.append(SharedScope(name))  # a standard scope: the page says what it shares
    return shared


def _present(attributes: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    return {name: attributes[name] for name in names if name in attributes}
