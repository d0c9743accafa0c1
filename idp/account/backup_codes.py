"""Backup codes on /account (DESIGN.md §4): ten new codes with a newly confirmed
authenticator, or on request (the password and a current code, proof.py) replacing every
old one. New codes add a credential: the request needs a recent sign-in at the user's
level (reauth.py). The caller hashes the codes (Argon2, outside any unit of work) between
`new_codes` and `store`; the plain codes are shown once and never stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from idp.account import events, proof, reauth
from idp.account.current import Caller
from idp.account.errors import FormRefused, lockout_words
from idp.account.services import AccountServices
from idp.mail import notices
from idp.mfa import backup_codes

GENERATED = "mfa.backup_codes.generated"  # the first set, with a newly confirmed authenticator
REGENERATED = "mfa.backup_codes.regenerated"


@dataclass(frozen=True)
class NewCodes:
    user_id: int
    kind: str  # the audit kind when stored: GENERATED or REGENERATED
    codes: tuple[str, ...] = field(repr=False)


def new_codes(user_id: int, kind: str) -> NewCodes:
    return NewCodes(user_id=user_id, kind=kind, codes=tuple(backup_codes.generate()))


def begin_regeneration(
    services: AccountServices, caller: Caller, password: str | None, code: str | None
) -> proof.PasswordAndCode:
    return proof.begin(services, reauth.admit(services, caller, reauth.BACKUP_CODES), password, code)


def verify_regeneration(
    services: AccountServices, caller: Caller, started: proof.PasswordAndCode, password_ok: bool
) -> NewCodes:
    with services.sessions.begin() as db:
        failure = proof.check(db, services, started, password_ok)
        if failure is not None:
            events.record(
                db,
                "mfa.backup_codes.regenerate_failed",
                started.user_id,
                caller,
                failure=failure,
                reason="code" if password_ok else "password",
            )
    if failure is not None:  # raised after the commit: the failure stays counted
        raise FormRefused(lockout_words(failure, proof.WRONG, lock_seconds=services.lockout.seconds), 401)
    return new_codes(started.user_id, REGENERATED)


def store(services: AccountServices, caller: Caller, new: NewCodes, hashes: Sequence[str]) -> None:
    """The new codes (their Argon2 hashes, in order) replace every old one, used or not."""
    with services.sessions.begin() as db:
        services.factors.replace_backup_codes(db, new.user_id, list(zip(new.codes, hashes, strict=True)))
        events.record(db, new.kind, new.user_id, caller, count=len(new.codes))
    if new.kind == REGENERATED:  # the first set comes with the authenticator, whose notice says so
        services.mail.notify(notices.BACKUP_CODES_REGENERATED, new.user_id, ip=caller.ip)
