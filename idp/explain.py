"""`idp explain CLIENT USER`: what would happen if USER signed in to CLIENT now, worked out
by the login chain's own policy functions (idp/login/policy.py), on the same data the flow
and the authorization endpoint read: whether the user may use the app and why, the level
the chain would ask for and each source of it, the steps a fresh sign-in would take, and
the claims the app would be given. tests/test_explain.py holds its verdicts against what
idp answers over HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.db.models import Client
from idp.login import policy
from idp.login.memberships import Membership, memberships_of
from idp.mfa.held import UserFactors
from idp.users import get_user

_STEP_WORDS = {
    policy.PASSWORD: "password (or a passkey)",
    policy.TOTP: "a TOTP code (or a backup code)",
    policy.PASSKEY: "a passkey",
    policy.ENROL_TOTP: "set up TOTP (enrolment on the spot)",
    policy.NEW_PASSWORD: "choose a new password (idp user set-password --must-change)",
}


class ExplainError(ValueError):
    """The client or the user does not exist; one line."""


@dataclass(frozen=True)
class Explanation:
    client_id: str
    username: str
    allowed: bool
    access: str  # why the user may, or may not, use the app
    level: str  # what every sign-in must reach (pwd, mfa, phr)
    sources: tuple[tuple[str, str], ...]  # each source of a level, strongest first
    steps: tuple[str, ...]  # what a fresh sign-in asks, in order (policy.next_step's names)
    outcome: str  # "code" | "access_denied" | "unmet_authentication_requirements" | "disabled"
    scopes: tuple[str, ...]
    claims: dict[str, Any]


def explain(
    db: Session,
    factors_of: Any,
    client_id: str,
    username: str,
    *,
    acr_values: str | None = None,
    scope: str | None = None,
    claims_of: Any = None,
) -> Explanation:
    """`factors_of(db, user)`: the second factors the flow sees (SecondFactors.factors_of);
    `claims_of(db, user, scope, config)`: the claims the app would be given (None: none shown)."""
    row = db.scalar(select(Client).where(Client.client_id == client_id))
    if row is None:
        raise ExplainError(f"no client {client_id!r}")
    config: dict[str, Any] = row.config
    try:
        user = get_user(db, username)
    except ValueError as exc:
        raise ExplainError(str(exc)) from None
    factors: UserFactors = factors_of(db, user)
    groups = memberships_of(db, user.id)
    allowed_groups = config.get("allowed_groups")
    allowed = policy.may_use(allowed_groups, (g.name for g in groups))
    requested = policy.requested_level(acr_values, config.get("default_acr_values") or ())
    needed = policy.requirement(requested, factors, groups)
    steps = _fresh_sign_in(needed.level, factors)
    granted = _granted_scopes(config, scope)
    if user.disabled:
        outcome = "disabled"
    elif not allowed:
        outcome = "access_denied"
    elif steps and steps[-1] == policy.UNMET:
        outcome = "unmet_authentication_requirements"
    else:
        outcome = "code"
    return Explanation(
        client_id=client_id,
        username=user.username,
        allowed=allowed and not user.disabled,
        access=_access_words(allowed_groups, groups, user.disabled),
        level=needed.level,
        sources=needed.sources,
        steps=steps,
        outcome=outcome,
        scopes=granted,
        claims=claims_of(db, user, " ".join(granted), config) if claims_of is not None and outcome == "code" else {},
    )


def _fresh_sign_in(level: str, factors: UserFactors) -> tuple[str, ...]:
    """The steps policy.next_step names, from nothing to done, as the flow walks them
    (the first factor taken as the password; enrolment counted as giving an otp)."""
    done: list[str] = []
    steps: list[str] = []
    for _ in range(4):
        step = policy.next_step(level, done, factors)
        if step in (policy.DONE, policy.UNMET):
            if step == policy.UNMET:
                steps.append(step)
            break
        steps.append(step)
        if step == policy.NEW_PASSWORD:  # the last step: choosing it clears the flag
            break
        done += {policy.PASSWORD: ["pwd"], policy.PASSKEY: ["hwk", "user"]}.get(step, ["otp"])
    return tuple(steps)


def _granted_scopes(config: dict[str, Any], scope: str | None) -> tuple[str, ...]:
    registered = str(config.get("scope") or "").split()
    asked = scope.split() if scope else registered
    return tuple(value for value in dict.fromkeys(asked) if value in registered)


def _access_words(allowed_groups: list[str] | None, groups: tuple[Membership, ...], disabled: bool) -> str:
    if disabled:
        return "the user is disabled"
    if allowed_groups is None:
        return "the app is open to everyone (no allowed_groups)"
    mine = [g.name for g in groups if g.name in allowed_groups]
    if mine:
        return f"member of {', '.join(mine)} (allowed_groups: {', '.join(allowed_groups)})"
    return f"not a member of any of {', '.join(allowed_groups)}"


def describe(explanation: Explanation) -> list[str]:
    """The lines `idp explain` prints."""
    e = explanation
    verdict = {
        "code": "ALLOWED: the app gets a code",
        "access_denied": "REFUSED: the app gets access_denied",
        "unmet_authentication_requirements": "REFUSED: the app gets unmet_authentication_requirements",
        "disabled": "REFUSED: the user is disabled",
    }[e.outcome]
    lines = [f"{e.username} signing in to {e.client_id}: {verdict}", f"  access: {e.access}"]
    lines.append(f"  level:  {e.level}")
    for level, why in e.sources:
        lines.append(f"    {level:4s} {why}")
    if e.outcome in ("code", "unmet_authentication_requirements"):
        words = [_STEP_WORDS.get(step, step) for step in e.steps if step != policy.UNMET]
        if e.steps and e.steps[-1] == policy.UNMET:
            words.append("no step can reach it (a passkey is needed: an administrator's enrolment link)")
        lines.append("  a fresh sign-in asks: " + ", then ".join(words))
    if e.outcome == "code":
        lines.append(f"  scopes: {' '.join(e.scopes) or '-'}")
        for name, value in e.claims.items():
            lines.append(f"    {name} = {value!r}")
    return lines
