"""Sensitive account actions need a recent sign-in (DESIGN.md §2), and adding a credential
also needs one at the user's current assurance level.

- Every sensitive action (SENSITIVE below): a sign-in no older than
  settings.reauth_seconds, so a stolen session cookie alone cannot change what signs in.
- Adding a credential (a passkey, TOTP set-up and its confirmation, backup codes): besides,
  the session's acr must reach what the login chain would ask of this user now:
  mfa once they have a second factor (confirmed TOTP, a passkey) or must have one, else
  pwd. Otherwise a password-only session, e.g. one older than the user's TOTP, could plant
  a passkey that skips the second factor from then on.

- The invitation's grace (idp/links/records.py `in_grace`): the session an invitation's
  chain started may add ONE credential without either rule, within 15 minutes of the link's
  confirmation: the user just proved the link and chose (or typed) the password, and asking
  them to sign in again at once to add their first factor would only teach them to.

A refusal is audited (account.reauth_required, with the action and why) in its own unit of
work and raised as NeedsReauth before anything else is looked at; the user signs in again
and comes back. The login chain's own enrolment steps (/login/enrol_totp,
/login/enrol_passkey) are not account actions and do not come here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from idp.account import events
from idp.account.current import Caller, SignedIn, get_signed_in, get_user
from idp.account.errors import NeedsReauth, ReauthReason
from idp.account.services import AccountServices
from idp.clock import clock_of
from idp.links import records as link_records
from idp.login import policy
from idp.settings import Settings


@dataclass(frozen=True)
class Sensitive:
    name: str  # the audit's `action`
    adds_credential: bool = False
    completes: bool = False  # the call that stores the credential (spends an invitation's grace)


TOTP_SETUP = Sensitive("totp.setup", adds_credential=True)
TOTP_CONFIRM = Sensitive("totp.confirm", adds_credential=True, completes=True)
TOTP_DISABLE = Sensitive("totp.disable")
BACKUP_CODES = Sensitive("backup_codes.regenerate", adds_credential=True, completes=True)
PASSWORD_CHANGE = Sensitive("password.change")
PASSKEY_OPTIONS = Sensitive("passkey.options", adds_credential=True)
PASSKEY_REGISTER = Sensitive("passkey.register", adds_credential=True, completes=True)
PASSKEY_REMOVE = Sensitive("passkey.remove")


def needs_reauth(settings: Settings, auth_time: datetime, *, now: datetime) -> bool:
    """True when the session's last interactive sign-in is older than settings.reauth_seconds."""
    return (now - auth_time).total_seconds() > settings.reauth_seconds


def admit(services: AccountServices, caller: Caller, action: Sensitive | None = None) -> SignedIn:
    """The browser's signed-in user, once `action`'s rule lets them through (None: no rule,
    a session is enough). Raises NotSignedIn, or NeedsReauth once its audit row is committed."""
    with services.sessions.begin() as db:
        who = get_signed_in(db, services, caller)
        if action is None:
            return who
        reason = reason_to_refuse(db, services, who, action)
        if reason is not None:  # audited in this unit of work, which commits before the raise
            events.record_refusal(
                db, "account.reauth_required", who.user_id, caller, action=action.name, reason=reason, acr=who.acr
            )
    if reason is not None:
        raise NeedsReauth(action.name, reason)
    return who


def reason_to_refuse(db: Session, services: AccountServices, who: SignedIn, action: Sensitive) -> ReauthReason | None:
    reason = _usual_reason(db, services, who, action)
    if reason is None or not action.adds_credential or not link_records.in_grace(db, who.user_id, who.sid):
        return reason
    # the invitation's grace: one credential, by the session its chain started. The call that
    # stores it spends the grace here, in the admission's unit of work, so two racing
    # registrations cannot both pass on it (a registration that then fails spent it too)
    if action.completes and not link_records.claim_grace(db, who.user_id, who.sid):
        return reason
    return None


def _usual_reason(db: Session, services: AccountServices, who: SignedIn, action: Sensitive) -> ReauthReason | None:
    if needs_reauth(services.settings, who.auth_time, now=clock_of(db).now()):
        return "stale"
    if action.adds_credential and not policy.satisfies(who.acr, required_level(db, services, who.user_id)):
        return "level"
    return None


def required_level(db: Session, services: AccountServices, user_id: int) -> str:
    """What the login chain would ask of this user today, with nothing asked by an RP."""
    return policy.required_level("pwd", services.factors.factors_of(db, get_user(db, user_id)))
