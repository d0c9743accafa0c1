"""What a one-time link lets its browser do, once confirmed (idp/links/records.py), and the
sign-in that follows. No HTTP: idp/web/links.py parses and calls.

- invite: a user without a password chooses one (the policy's rules), then the login chain
  runs from there with the password proven, and enrols what the user or their groups
  require (TOTP; a passkey for phr) before the first session. A user who has a password
  signs in with it (and the factors they have), then enrols what is missing: the link
  alone never signs in to an account that has a password. Mailed to the address on file,
  using it verifies that address.
- recover (an admin's, for a user who lost a factor or the password): a new password; the
  user chooses which factors to remove; every session ends and every grant is revoked.
  The sign-in that follows has proven the password only: acr pwd, amr ["pwd"]. Reaching
  mfa or phr takes a factor the user kept (proven again), or a new one enrolled and
  confirmed in the chain.
- reset (Forgot password?, idp/links/forgot.py): a new password, every session ended and
  every grant revoked; the chain then asks for the second factor like any sign-in: a reset
  never bypasses it.
- verify: the address the link was sent to is verified (its confirming POST is its use).

The change and the link's use are one unit of work: a link spent elsewhere meanwhile
changes nothing."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from idp import retired_names
from idp.audit.trail import record_audit
from idp.db.models import BackupCode, OneTimeLink, Passkey, TotpCredential, User
from idp.links import records
from idp.links.records import Link, Refused
from idp.login import transaction as tx_store
from idp.login.flow import FlowServices
from idp.login.outcomes import Attempt
from idp.login.sessions import EndedSession, end_all_sessions
from idp.login.transaction import LoginTransaction
from idp.mail import notices
from idp.mail.mailer import Mailer
from idp.revocation import revoke_all_grants
from idp.security.keyring import Keyring
from idp.security.password_policy import (
    MIN_LENGTH_SINGLE_FACTOR,
    MIN_LENGTH_WITH_SECOND_FACTOR,
    PasswordRejected,
    check_password,
)

NOT_THE_SAME = "The two passwords are not the same."
ENTER_BOTH = "Enter a new password, then the same again."
# what a recovering user may remove: the factors they lost
LOST_FACTORS = ("totp", "backup_codes", "passkeys")


@dataclass(frozen=True)
class LinkContext:
    flow: FlowServices
    mail: Mailer


@dataclass(frozen=True)
class Preview:
    """What the confirmation page (GET) says: the kind and whose account. It uses nothing."""

    kind: str
    username: str
    expires_at: datetime


@dataclass(frozen=True)
class ChoosePassword:
    """The page after the confirmation of an invitation (no password yet), a recovery or a reset."""

    link_id: str
    kind: str
    username: str
    password_min: int
    held: tuple[str, ...] = ()  # recover: the factors the user has (LOST_FACTORS), to choose from
    error: str | None = None


@dataclass(frozen=True)
class SignIn:
    """The login chain takes over: /login?tx=<tx.id> (bound to this browser)."""

    tx: LoginTransaction
    ended: tuple[EndedSession, ...] = ()  # their RPs hear of it (back-channel logout)


@dataclass(frozen=True)
class Verified:
    username: str


@dataclass(frozen=True)
class PasswordForm:
    new: str = field(repr=False)
    confirm: str = field(repr=False)
    remove: frozenset[str] = frozenset()


def preview(ctx: LinkContext, secret: str) -> Preview | Refused:
    with ctx.flow.sessions() as db:
        found = records.peek(db, ctx.flow.keyring, secret)
        if isinstance(found, Refused):
            return found
        user = _live_user(db, found.user_id)
        if user is None:  # disabled or deleted: nothing to show, nothing to confirm
            return Refused("unknown")
        return Preview(found.kind, user.username, found.expires_at)


def confirm(ctx: LinkContext, secret: str, attempt: Attempt) -> ChoosePassword | SignIn | Verified | Refused:
    """The confirmation page's POST: binds the link to this browser (`attempt.new_browser`, the
    browser's login binding) and says what comes next."""
    keyring = ctx.flow.keyring
    try:
        with ctx.flow.sessions.begin() as db:
            if _is_verification(db, keyring, secret):
                return _verify(db, keyring, secret, attempt)
            found = records.confirm(
                db, keyring, secret, attempt.new_browser, ip=attempt.ip, user_agent=attempt.user_agent
            )
            if isinstance(found, Refused):
                return found
            user = _live_user(db, found.user_id)
            if user is None:  # disabled or deleted: the binding and its audit row roll back
                raise _RolledBack(Refused("unknown"))
            if found.kind != "invite" or user.password_hash is None:
                return _choose(db, ctx, found, user)
            # an account with a password: the link alone signs nobody in; the chain asks for it
            if not records.use(db, found.link_id, attempt.new_browser, ip=attempt.ip, user_agent=attempt.user_agent):
                return Refused("used", user.id)
            tx = _chain(found, user, attempt.new_browser, proven_password=False)
            _verify_address(db, keyring, found, user, attempt)
    except _RolledBack as undone:
        return undone.refusal
    tx_store.save_transaction(ctx.flow.store, tx, ttl_seconds=ctx.flow.ttl_seconds)
    return SignIn(tx)


def password_page(ctx: LinkContext, link_id: str, attempt: Attempt) -> ChoosePassword | Refused:
    """The page after the confirmation, for the browser that confirmed it only."""
    with ctx.flow.sessions.begin() as db:
        found = records.bound(db, link_id, attempt.browser, ip=attempt.ip, user_agent=attempt.user_agent)
        if isinstance(found, Refused):
            return found
        user = _live_user(db, found.user_id)
        if user is None or found.kind == "verify" or (found.kind == "invite" and user.password_hash is not None):
            return Refused("unknown")
        return _choose(db, ctx, found, user)


def choose_password(
    ctx: LinkContext, link_id: str, form: PasswordForm, attempt: Attempt
) -> SignIn | ChoosePassword | Refused:
    """The new password (and, for a recovery, the factors to remove): checked, hashed, then
    in one unit of work the link spent and the account changed; a ChoosePassword with the
    error when the form cannot be taken (nothing spent)."""
    services = ctx.flow
    with services.sessions.begin() as db:  # a refusal's audit row is kept
        found = records.bound(db, link_id, attempt.browser, ip=attempt.ip, user_agent=attempt.user_agent)
        if isinstance(found, Refused):
            return found
        user = _live_user(db, found.user_id)
        if user is None or found.kind == "verify" or (found.kind == "invite" and user.password_hash is not None):
            return Refused("unknown")
        page = _choose(db, ctx, found, user)
        username, email = user.username, user.email
        remove = form.remove & set(page.held) if found.kind == "recover" else frozenset()
        second = _second_factor_after(db, user, remove)
    if not form.new or not form.confirm:
        return _again(page, ENTER_BOTH)
    if form.new != form.confirm:
        return _again(page, NOT_THE_SAME)
    try:
        check_password(form.new, username=username, email=email, has_second_factor=second)
    except PasswordRejected as exc:
        return _again(page, exc.reason)
    new_hash = services.hashing.hash(form.new)
    assert attempt.browser is not None  # bound() found the link confirmed by this browser
    try:
        with services.sessions.begin() as db:
            if not records.use(db, link_id, attempt.browser, ip=attempt.ip, user_agent=attempt.user_agent):
                return Refused("used", found.user_id)
            user = _live_user(db, found.user_id)
            if user is None:
                raise _RolledBack(Refused("unknown", found.user_id))  # disabled or deleted meanwhile
            ended = _apply(db, services.keyring, found, user, new_hash, remove, attempt)
            tx = _chain(found, user, attempt.browser, proven_password=True)
    except _RolledBack as undone:
        return undone.refusal
    tx_store.save_transaction(services.store, tx, ttl_seconds=services.ttl_seconds)
    if found.kind == "recover":
        ctx.mail.notify(notices.ACCOUNT_RECOVERED, found.user_id, ip=attempt.ip)
    elif found.kind == "reset":
        ctx.mail.notify(notices.PASSWORD_RESET, found.user_id, ip=attempt.ip)
    return SignIn(tx, tuple(ended))


class _RolledBack(Exception):
    """Raised inside a unit of work so that everything it wrote (a binding, a spent link, their
    audit rows) rolls back; `refusal` is what the caller answers then."""

    def __init__(self, refusal: Refused) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


def _again(page: ChoosePassword, error: str) -> ChoosePassword:
    return ChoosePassword(page.link_id, page.kind, page.username, page.password_min, page.held, error)


def _apply(
    db: Session, keyring: Keyring, link: Link, user: User, new_hash: str, remove: Collection[str], attempt: Attempt
) -> list[EndedSession]:
    """The account's change, in the unit of work that spent the link."""
    user.password_hash = new_hash
    user.password_must_change = False
    records.revoke_open(db, user.id, reason="password_changed")
    common = {"ip": attempt.ip, "user_agent": attempt.user_agent, "outcome": "success", "link_id": link.link_id}
    if link.kind == "invite":
        record_audit(db, "user.password_set", user_id=user.id, by="invitation", **common)
        _verify_address(db, keyring, link, user, attempt)
        return []
    removed = _remove_factors(db, user.id, remove)
    ended = end_all_sessions(db, user.id)
    revoke_all_grants(db, user.id)
    kind = "account.recovered" if link.kind == "recover" else "password.reset"
    record_audit(db, kind, user_id=user.id, removed=sorted(removed), sessions_ended=len(ended), **common)
    return ended


def _remove_factors(db: Session, user_id: int, remove: Collection[str]) -> set[str]:
    from sqlalchemy import delete

    removed: set[str] = set()
    if "totp" in remove:
        db.execute(delete(TotpCredential).where(TotpCredential.user_id == user_id))
        removed.add("totp")
    if "backup_codes" in remove:
        db.execute(delete(BackupCode).where(BackupCode.user_id == user_id))
        removed.add("backup_codes")
    if "passkeys" in remove:
        db.execute(delete(Passkey).where(Passkey.user_id == user_id))
        removed.add("passkeys")
    return removed


def _held(db: Session, user_id: int) -> tuple[str, ...]:
    held = []
    if db.scalar(select(TotpCredential.id).where(TotpCredential.user_id == user_id).limit(1)) is not None:
        held.append("totp")
    if db.scalar(select(BackupCode.id).where(BackupCode.user_id == user_id, BackupCode.used_at.is_(None)).limit(1)):
        held.append("backup_codes")
    if db.scalar(select(func.count()).select_from(Passkey).where(Passkey.user_id == user_id)):
        held.append("passkeys")
    return tuple(held)


def _second_factor_after(db: Session, user: User, remove: Collection[str]) -> bool:
    kept = set(_held(db, user.id)) - set(remove)
    return bool(kept & {"totp", "passkeys"})


def _choose(db: Session, ctx: LinkContext, link: Link, user: User) -> ChoosePassword:
    held = _held(db, user.id) if link.kind == "recover" else ()
    factors = ctx.flow.factors.factors_of(db, user)
    second = factors.has_second_factor
    return ChoosePassword(
        link.link_id,
        link.kind,
        user.username,
        MIN_LENGTH_WITH_SECOND_FACTOR if second else MIN_LENGTH_SINGLE_FACTOR,
        held,
    )


def _chain(link: Link, user: User, browser: str, *, proven_password: bool) -> LoginTransaction:
    """The login transaction the link hands over to, bound to the browser that confirmed it,
    ending at /account: with the password proven (it was just chosen), or naming the user
    for the password step (an invitation to an account that has one)."""
    tx = tx_store.new_transaction(
        {},
        "",
        "",
        user.username,
        return_to="/account",
        browser=browser,
        link_id=link.link_id,
        enrolling=link.kind in ("invite", "recover"),
        # named from the start: only this user's password continues the chain, so nobody else
        # signs in with the link's allowance to enrol
        user_id=user.id,
        username=user.username,
    )
    if proven_password:
        return tx.with_step("pwd", user_id=user.id, username=user.username)
    return tx


def _live_user(db: Session, user_id: int) -> User | None:
    user = db.get(User, user_id)
    return None if user is None or user.deleted_at is not None or user.disabled else user


def _is_verification(db: Session, keyring: Keyring, secret: str) -> bool:
    digest = records.secret_digest(keyring, secret)
    return db.scalar(select(OneTimeLink.kind).where(OneTimeLink.secret_digest == digest)) == "verify"


def _verify(db: Session, keyring: Keyring, secret: str, attempt: Attempt) -> Verified | Refused:
    found = records.use_unbound(db, keyring, secret, ip=attempt.ip, user_agent=attempt.user_agent)
    if isinstance(found, Refused):
        return found
    user = _live_user(db, found.user_id)
    if user is None or not _verify_address(db, keyring, found, user, attempt):
        # the address changed, or another account verified it, since the link was sent: the
        # link stays unspent
        raise _RolledBack(Refused("revoked", found.user_id))
    return Verified(user.username)


def _verify_address(db: Session, keyring: Keyring, link: Link, user: User, attempt: Attempt) -> bool:
    """The address the link was sent to is the user's: verified, unless the address on file
    changed since, another account has it verified (a verified address is one user's), or it
    is a deleted user's retired address (as `idp user set --email-verified` refuses it)."""
    if link.email is None or user.email is None or user.email.lower() != link.email.lower():
        return False
    if user.email_verified:
        return True
    taken = db.scalar(
        select(User.id).where(func.lower(User.email) == user.email.lower(), User.email_verified, User.id != user.id)
    )
    if taken is not None or retired_names.is_retired(db, keyring, retired_names.EMAIL, user.email):
        return False
    try:
        with db.begin_nested():  # another account verifying it at this moment: the unique index decides
            user.email_verified = True
            db.flush()
    except IntegrityError:
        return False
    record_audit(
        db,
        "email.verified",
        user_id=user.id,
        ip=attempt.ip,
        user_agent=attempt.user_agent,
        outcome="success",
        by=link.kind,
        link_id=link.link_id,
    )
    return True
