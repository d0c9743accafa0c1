"""Passkeys on /account (WebAuthn registration with py_webauthn, idp/mfa/passkeys.py):
registration options and registration, which add a credential (a recent sign-in at the
user's level, reauth.py, checked on both calls: options fetched while fresh do not carry
over), renaming, and removal (a recent sign-in; with settings.passkey_removal_ends_sessions
= 1 the other sessions end and every refresh token is revoked)."""

from __future__ import annotations

from typing import Any

from idp.account import events, reauth, sessions
from idp.account.current import Caller, get_user
from idp.account.errors import AccountRefused
from idp.account.services import AccountServices
from idp.login.sessions import EndedSession
from idp.mail import notices
from idp.mfa.passkeys import Challenge, PasskeyError, clean_name

NOT_ADDED = "The passkey could not be added. Try again."
NO_SUCH_PASSKEY = "No such passkey."


def registration_options(services: AccountServices, caller: Caller) -> Challenge:
    who = reauth.admit(services, caller, reauth.PASSKEY_OPTIONS)
    with services.sessions.begin() as db:
        return services.passkeys.registration_options(db, get_user(db, who.user_id))


def register(services: AccountServices, caller: Caller, data: dict[str, Any]) -> None:
    """`data`: the JSON body passkeys.js posts (challenge_id, credential, name)."""
    who = reauth.admit(services, caller, reauth.PASSKEY_REGISTER)
    try:
        with services.sessions.begin() as db:
            row = services.passkeys.register(
                db, get_user(db, who.user_id), data.get("challenge_id"), data.get("credential"), data.get("name")
            )
            events.record(db, "passkey.added", who.user_id, caller, passkey=row.id, name=row.name)
    except PasskeyError as exc:  # the failed unit of work rolled back; its audit gets its own
        with services.sessions.begin() as db:
            events.record_failure(db, "passkey.registration_failed", who.user_id, caller, reason=exc.reason)
        raise AccountRefused(NOT_ADDED, 400) from None
    services.mail.notify(notices.PASSKEY_ADDED, who.user_id, ip=caller.ip)


def rename(services: AccountServices, caller: Caller, passkey_id: object, name: object) -> None:
    who = reauth.admit(services, caller)
    with services.sessions.begin() as db:
        row = services.passkeys.find(db, who.user_id, sessions.row_id(passkey_id))
        if row is None:
            raise AccountRefused(NO_SUCH_PASSKEY, 404)
        row.name = clean_name(name)
        events.record(db, "passkey.renamed", who.user_id, caller, passkey=row.id)


def remove(services: AccountServices, caller: Caller, passkey_id: object) -> list[EndedSession]:
    """Returns the sessions the removal ended (for their back-channel logouts)."""
    who = reauth.admit(services, caller, reauth.PASSKEY_REMOVE)
    ends_sessions = bool(services.settings.passkey_removal_ends_sessions)
    with services.sessions.begin() as db:
        row = services.passkeys.find(db, who.user_id, sessions.row_id(passkey_id))
        if row is None:
            raise AccountRefused(NO_SUCH_PASSKEY, 404)
        removed, name = row.id, row.name
        db.delete(row)
        ended = (
            sessions.end_others_and_revoke_tokens(db, who.user_id, who.session_id, caller, reason="passkey.removed")
            if ends_sessions
            else []
        )
        events.record(
            db,
            "passkey.removed",
            who.user_id,
            caller,
            passkey=removed,
            name=name,
            sessions_ended=len(ended),
            refresh_tokens_revoked=ends_sessions,
        )
    services.mail.notify(notices.PASSKEY_REMOVED, who.user_id, ip=caller.ip)
    return ended
