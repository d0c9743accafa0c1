"""`idp user invite|recover|verify-email|links|revoke-link` (issue 18): one-time links an admin
issues (idp/links/records.py), and how each reaches its user (idp/links/delivery.py): mailed
when mail is on and the address may receive it, else shown once for the admin to hand over.
Also the verification mail that a new, unverified address gets from `idp user add|set --email`.

Imports are made inside the commands: the parser is built for `idp serve` too, which must
set up metrics before anything imports prometheus_client (idp/audit does)."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from idp.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from idp.db.models import User
    from idp.links.records import Issued, Kind
    from idp.security.keyring import Keyring

MAIL_WAIT_SECONDS = 30.0  # for the outbox's verdict; a transient failure's first retry falls within it
MAIL_CLOSE_SECONDS = 5.0
NOUNS = {
    "invite": "invitation",
    "recover": "recovery link",
    "reset": "password reset link",
    "verify": "address verification link",
}
COMMANDS = {"invite": "invite", "recover": "recover", "verify": "verify-email"}  # what issues one again
_DURATION = re.compile(r"([1-9][0-9]{0,4})([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


@dataclass(frozen=True)
class Handover:
    """An issued link on its way: mailed `to` an address, or shown to the admin, and `why`."""

    issued: Issued
    username: str
    to: str | None
    why_shown: str | None


def register_user_commands(user: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    # the defaults are records.LIFETIMES' (tests/test_cli_links.py checks that they agree)
    invite = user.add_parser(
        "invite",
        help="a one-time link to set up the account: choose a password (if none), then enrol what the user's "
        "groups require (e.g. a passkey for min_acr phr); mailed when mail is on, else printed",
    )
    _issuing_options(invite, default="72h")
    invite.set_defaults(handler=_invite)
    recover = user.add_parser(
        "recover",
        help="a one-time link for a user who lost a factor or the password: a new password, the lost factors "
        "removed, every session ended; mailed only to a verified address, else printed",
    )
    _issuing_options(recover, default="24h")
    recover.set_defaults(handler=_recover)
    verify = user.add_parser(
        "verify-email", help="a one-time link that verifies the user's unverified address; mailed, else printed"
    )
    verify.add_argument("username")
    verify.add_argument("--print", action="store_true", help="print the link to hand over instead of mailing it")
    verify.set_defaults(handler=_verify_email, expires=None)
    links = user.add_parser("links", help="a user's one-time links: id, kind, state, created, expires, issued by")
    links.add_argument("username")
    links.set_defaults(handler=_links)
    revoke = user.add_parser("revoke-link", help="revoke one of a user's open one-time links (its id: idp user links)")
    revoke.add_argument("username")
    revoke.add_argument("link_id")
    revoke.set_defaults(handler=_revoke_link)


def _issuing_options(command: argparse.ArgumentParser, *, default: str) -> None:
    command.add_argument("username")
    command.add_argument(
        "--expires",
        metavar="DURATION",
        help=f"how long it waits to be used: 30m, 72h, 7d… (5 minutes to 14 days; default {default})",
    )
    command.add_argument("--print", action="store_true", help="print the link to hand over instead of mailing it")


def _cli() -> Any:
    from idp import cli

    return cli


def _invite(settings: Settings, args: argparse.Namespace) -> None:
    _issue(settings, args, "invite")


def _recover(settings: Settings, args: argparse.Namespace) -> None:
    _issue(settings, args, "recover")


def _verify_email(settings: Settings, args: argparse.Namespace) -> None:
    _issue(settings, args, "verify")


def _issue(settings: Settings, args: argparse.Namespace, kind: Kind) -> None:
    cli = _cli()
    lifetime = _lifetime(kind, args.expires)  # before the transaction: bad input changes nothing
    sessions, keyring = cli._database(settings), cli._keyring(settings)
    with sessions.begin() as db:
        user = _live_user(db, args.username)
        if kind == "verify":
            _check_unverified(user)
        handover = _issue_for(settings, db, keyring, user, kind, lifetime=lifetime, asked_to_print=args.print)
    if handover.to is None:
        _show(settings, handover)
        return
    failure = _mail(settings, sessions, handover.issued)
    if failure is not None:
        raise cli.CommandError(f"{_not_mailed(handover, failure)}; {_print_instead(handover)}")
    print(_mailed(handover))


def _lifetime(kind: Kind, text: str | None) -> timedelta | None:
    """--expires: a number and a unit (30m, 72h, 7d), within records.lifetime_of's bounds."""
    from idp.links.records import lifetime_of

    if text is None:
        return None
    found = _DURATION.fullmatch(text.strip())
    try:
        if found is None:
            raise ValueError("must be a number and a unit like 30m, 72h or 7d, between 5 minutes and 14 days")
        return lifetime_of(kind, timedelta(**{_UNITS[found[2]]: int(found[1])}))
    except ValueError as exc:
        raise _cli().CommandError(f"--expires {text[:20]!r}: {exc}") from None


def _live_user(db: Session, username: str) -> User:
    """A link is for someone who can use it: not a deleted user, nor a disabled one."""
    user = _known_user(db, username)
    if user.disabled:
        raise _cli().CommandError(f"user {user.username!r} is disabled: `idp user enable {user.username}` first")
    return user


def _known_user(db: Session, username: str) -> User:
    from idp.users import UserError, get_user

    try:
        return get_user(db, username)
    except UserError as exc:
        raise _cli().CommandError(str(exc)) from None


def _check_unverified(user: User) -> None:
    if user.email is None:
        raise _cli().CommandError(
            f"user {user.username!r} has no address to verify: `idp user set {user.username} --email ADDRESS`"
        )
    if user.email_verified:
        raise _cli().CommandError(f"the address of user {user.username!r} is verified already")


def _issue_for(
    settings: Settings,
    db: Session,
    keyring: Keyring,
    user: User,
    kind: Kind,
    *,
    lifetime: timedelta | None,
    asked_to_print: bool,
) -> Handover:
    from idp.links.records import issue

    why_shown = _why_shown(settings, user, kind, asked_to_print=asked_to_print)
    mailed = why_shown is None
    # the address it was mailed to: an invitation's use verifies only that one (a printed
    # invitation, handed over in person, proves nothing about the address), and changing
    # the address revokes every link mailed to the old one
    email = user.email if kind == "verify" or mailed else None
    issued = issue(db, keyring, user.id, kind, lifetime=lifetime, by="cli", email=email)
    return Handover(issued, user.username, user.email if mailed else None, why_shown)


def _why_shown(settings: Settings, user: User, kind: Kind, *, asked_to_print: bool) -> str | None:
    """Why the link is shown to the admin rather than mailed; None: it is mailed."""
    from idp.links.delivery import Recipient

    if asked_to_print:
        return "--print was given"
    if not settings.smtp_url:
        return "mail is off (IDP_SMTP_URL is not set)"
    if user.email is None:
        return f"user {user.username} has no e-mail address"
    if not Recipient(user.email, user.email_verified).may_receive(kind):
        return f"the address of user {user.username} is not verified, and a {NOUNS[kind]} goes only to a verified one"
    return None


def _show(settings: Settings, handover: Handover) -> None:
    from idp.links.delivery import url_of

    print(f"{NOUNS[handover.issued.kind]} for {handover.username} ({_facts(handover.issued)})")
    print(
        f"shown here because {handover.why_shown}. The link is a secret that works once: "
        f"hand it to {handover.username} privately (not in a ticket or a shared channel)"
    )
    print(url_of(settings.issuer, handover.issued.secret))


def _facts(issued: Issued) -> str:
    replaced = f"; replaces {issued.superseded} open one" if issued.superseded else ""
    return f"link {issued.link_id}, expires {_when(issued.expires_at)}{replaced}"


def _mailed(handover: Handover) -> str:
    issued = handover.issued
    return f"{NOUNS[issued.kind]} for {handover.username} sent to {masked(handover.to)} ({_facts(issued)})"


def _not_mailed(handover: Handover, failure: str) -> str:
    issued = handover.issued
    return (
        f"{NOUNS[issued.kind]} for {handover.username} (link {issued.link_id}) "
        f"was not mailed to {masked(handover.to)}: {failure}"
    )


def _print_instead(handover: Handover) -> str:
    """A new link (superseding the unsent one) to hand over in person."""
    return f"`idp user {COMMANDS[handover.issued.kind]} {handover.username} --print` shows a new one to hand over"


def masked(address: str | None) -> str:
    """Enough of the address for the admin to recognise it, not enough to copy it from a
    terminal's scrollback: a…@example.com."""
    local, _, domain = (address or "").rpartition("@")
    return f"{local[:1]}…@{domain}"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _mail(settings: Settings, sessions: sessionmaker[Session], issued: Issued) -> str | None:
    """Sends the link's mail and waits for the outbox's verdict: None once sent, else why not.
    The CLI is a short process: the outbox's background thread ends with it."""
    import logging

    from idp.clock import SystemClock
    from idp.links.delivery import send
    from idp.mail.mailer import build_mailer

    # the outcome is this command's one line (from the audit rows), not the outbox's log lines
    logging.getLogger("idp.mail").setLevel(logging.ERROR)
    clock = SystemClock()
    since = _newest_audit_id(sessions)
    mailer = build_mailer(settings, sessions, clock)
    try:
        send(mailer, issued, settings.issuer, at=_when(clock.now()))
        finished = mailer.wait_idle(MAIL_WAIT_SECONDS)
    finally:
        mailer.close(MAIL_CLOSE_SECONDS)
    if not finished:
        return f"no answer from the mail server within {MAIL_WAIT_SECONDS:g} s"
    return _mail_verdict(sessions, issued, since)


def _newest_audit_id(sessions: sessionmaker[Session]) -> int:
    from sqlalchemy import func, select

    from idp.db.models import AuditEvent

    with sessions() as db:
        return int(db.scalar(select(func.coalesce(func.max(AuditEvent.id), 0))) or 0)


def _mail_verdict(sessions: sessionmaker[Session], issued: Issued, since: int) -> str | None:
    """What the outbox audited for this mail (mail.sent, or mail.failed and its reason)."""
    from sqlalchemy import select

    from idp.db.models import AuditEvent

    with sessions() as db:
        rows = db.execute(
            select(AuditEvent.kind, AuditEvent.detail)
            .where(
                AuditEvent.id > since,
                AuditEvent.user_id == issued.user_id,
                AuditEvent.kind.in_(("mail.sent", "mail.failed")),
            )
            .order_by(AuditEvent.id)
        ).all()
    for kind, detail in rows:
        if detail.get("mail") == f"link_{issued.kind}":
            return None if kind == "mail.sent" else f"the mail failed ({detail.get('reason', 'unknown reason')})"
    return "the address changed before it was sent"  # the outbox found no address it may go to


def _links(settings: Settings, args: argparse.Namespace) -> None:
    from idp.clock import clock_of
    from idp.links.records import links_of

    with _cli()._database(settings)() as db:
        user = _known_user(db, args.username)
        now = clock_of(db).now()
        for link in links_of(db, user.id):
            fields = (link.link_id, link.kind, link.state(now), _when(link.created_at), _when(link.expires_at))
            print("\t".join((*fields, link.issued_by)))


def _revoke_link(settings: Settings, args: argparse.Namespace) -> None:
    from idp.links.records import revoke

    cli = _cli()
    with cli._database(settings).begin() as db:
        user = _known_user(db, args.username)
        if not revoke(db, user.id, args.link_id, by="cli"):
            raise cli.CommandError(
                f"user {user.username!r} has no open link {args.link_id[:20]!r} (see `idp user links {user.username}`)"
            )
    print(f"revoked link {args.link_id} of user {user.username}")


# ---- `idp user add|set --email`: the new address's verification ---------------------------------


def begin_address_verification(
    settings: Settings, db: Session, keyring: Keyring, user: User, *, address_changed: bool
) -> Handover | None:
    """In the unit of work that gave `user` a new address: when mail is on and the address is
    unverified, a verification link for it (without mail, admins say --email-verified yes).
    A disabled user could not use one: none is issued (`idp user verify-email` once enabled)."""
    if not (settings.smtp_url and address_changed and user.email and not user.email_verified and not user.disabled):
        return None
    return _issue_for(settings, db, keyring, user, "verify", lifetime=None, asked_to_print=False)


def finish_address_verification(settings: Settings, sessions: sessionmaker[Session], handover: Handover | None) -> None:
    """After the commit: mails the link. A failure is a warning: the change itself stands."""
    import sys

    if handover is None:
        return
    failure = _mail(settings, sessions, handover.issued)
    if failure is None:
        print(_mailed(handover))
        return
    print(f"warning: {_not_mailed(handover, failure)}; {_print_instead(handover)}", file=sys.stderr)
