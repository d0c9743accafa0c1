"""The login chain's policy (DESIGN.md §2): from what is asked and what the user and the
session already have, the next step. Pure functions, so the whole table is tested.

Ladder: pwd (one factor) < mfa (two factors) < phr (phishing-resistant, a passkey).
What is asked: the request's `acr_values` (space-separated, in the RP's order of
preference: any listed level satisfies it, so the lowest known one is the minimum), else
the client's `default_acr_values`; values idp does not know are ignored (OIDC Core
§3.1.2.1: acr_values is a voluntary claim). Whatever is asked, a user with a second factor
or an admin's MFA requirement never gets less than mfa.

Methods done are RFC 8176 `amr` values: pwd (password), otp (a TOTP code or a backup code,
both one-time passwords), hwk or swk (a passkey: hardware-bound or synced key) with user
(user verification), and mfa whenever two independent factors were used. A passkey with
user verification is phishing-resistant and multi-factor on its own: phr, which satisfies
mfa and pwd too.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from idp.mfa.held import UserFactors

LEVELS = {"pwd": 1, "mfa": 2, "phr": 3}
SUPPORTED_ACR = ("pwd", "mfa", "phr")
PASSKEY_METHODS = frozenset({"hwk", "swk"})
FIRST_FACTORS = PASSKEY_METHODS | {"pwd"}
KNOWN_METHODS = ("pwd", "otp", "hwk", "swk", "user")

# next steps: each is the name of a registered step (idp/login/steps/)
PASSWORD = "password"
TOTP = "totp"  # a TOTP code (its page offers the backup_code step instead)
CODE = TOTP
PASSKEY = "passkey"  # a passkey as the next step (after a password, or for a step-up to phr)
ENROL_TOTP = "enrol_totp"
ENROL_PASSKEY = "enrol_passkey"  # an invitation's or a recovery's chain, for a level only a passkey reaches
NEW_PASSWORD = "new_password"  # an admin's `set-password --must-change`: once every factor asked for is proven
DONE = "done"
UNMET = "unmet"
NOT_ALLOWED = "not_allowed"  # the user may not use the app the chain signs in to


class GroupPolicy(Protocol):
    """A group the user is in, as policy reads it (idp.groups.Membership)."""

    @property
    def name(self) -> str: ...

    @property
    def min_acr(self) -> str | None: ...


@dataclass(frozen=True)
class Requirement:
    """The level a user must reach for one request, and each source that asked for it
    (`idp explain` prints them; the flow and the authorization endpoint use `level`)."""

    level: str
    sources: tuple[tuple[str, str], ...]  # (level, why), strongest first

    @property
    def by_group(self) -> bool:
        """A group's minimum is what sets the level (an administrator's rule, not the RP's)."""
        return any(level == self.level and why.startswith("group ") for level, why in self.sources)


def may_use(allowed_groups: Collection[str] | None, member_of: Iterable[str]) -> bool:
    """A client open to everyone (no allowed_groups), or the user is in one of its groups."""
    return allowed_groups is None or not set(allowed_groups).isdisjoint(member_of)


def requirement(requested: str, factors: UserFactors | None, groups: Iterable[GroupPolicy] = ()) -> Requirement:
    """What this user must reach: what was asked (acr_values, else the client's default),
    raised to mfa once they have, or must have, a second factor, and to the strictest
    minimum of their groups, whatever the client asks."""
    sources = [(requested, "asked for by the request (acr_values) or the client (default_acr_values)")]
    if factors is not None and factors.has_second_factor:
        sources.append(("mfa", "the user has a second factor: every sign-in uses it"))
    if factors is not None and factors.require_mfa:
        sources.append(("mfa", "an administrator requires MFA of this user (idp user require-mfa)"))
    for group in groups:
        if group.min_acr in LEVELS:
            sources.append((group.min_acr, f"group {group.name} requires at least {group.min_acr}"))
    ranked = sorted(sources, key=lambda source: -LEVELS.get(source[0], 0))
    return Requirement(ranked[0][0], tuple(ranked))


def requested_level(acr_values: str | None, client_default: Sequence[str] = ()) -> str:
    """The minimum level the RP asked for: the lowest known value it listed."""
    for source in ((acr_values or "").split(), list(client_default)):
        known = [value for value in source if value in LEVELS]
        if known:
            return min(known, key=LEVELS.__getitem__)
    return "pwd"


def required_level(requested: str, factors: UserFactors | None, groups: Iterable[GroupPolicy] = ()) -> str:
    return requirement(requested, factors, groups).level


def acr_of(methods: Iterable[str]) -> str:
    done = set(methods)
    if done & PASSKEY_METHODS and "user" in done:
        return "phr"
    if "pwd" in done and "otp" in done:
        return "mfa"
    return "pwd"


def amr_of(methods: Iterable[str]) -> list[str]:
    done = list(dict.fromkeys(m for m in methods if m in KNOWN_METHODS))
    return done + ["mfa"] if acr_of(done) in ("mfa", "phr") else done


def satisfies(acr: str, required: str) -> bool:
    return LEVELS.get(acr, 0) >= LEVELS[required]


def next_step(
    required: str,
    methods: Iterable[str],
    factors: UserFactors | None,
    *,
    can_enrol: bool = True,
    can_enrol_passkey: bool = False,
) -> str:
    """The step that comes next, given the methods done so far in this login (or carried
    over from the IdP session for a step-up). `can_enrol_passkey`: the chain may add the
    user's first passkey (an invitation's or a recovery's, LoginTransaction.enrolling);
    any other chain cannot, since a password alone must not be enough to plant a passkey."""
    done = set(methods)
    if not done & FIRST_FACTORS:
        return PASSWORD  # first factor first (or a passkey, offered on the same page): a code alone is nothing
    if satisfies(acr_of(done), required):
        # last, not right after the password: whoever sets the new password has proven every
        # factor, so knowing the temporary password alone cannot take the account over
        return NEW_PASSWORD if factors is not None and factors.password_must_change else DONE
    if required not in SUPPORTED_ACR:
        return UNMET
    assert factors is not None  # past the first factor, the user is known
    if required == "phr":  # only a passkey is phishing-resistant
        if factors.passkeys:
            return PASSKEY
        if not can_enrol_passkey:
            return UNMET
        if factors.totp and "otp" not in done:
            return CODE  # the factor the user holds first: a passkey planted on the password alone would skip it
        # enrolled, the new passkey then signs in as the PASSKEY step: that is what makes it phr
        return ENROL_PASSKEY
    if factors.totp:
        return CODE
    if factors.passkeys:
        return PASSKEY
    return ENROL_TOTP if can_enrol else UNMET
