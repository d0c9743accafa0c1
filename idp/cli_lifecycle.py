"""`idp user enable|delete|set-password` and `idp clients list|show` (idp/user_lifecycle.py
and idp/client_records.py do the work). Each command is one transaction, audited when it
changes something; input is checked before it starts; sessions it ends hear of it through
back-channel logouts after the commit, as `idp user disable` does."""

from __future__ import annotations

import argparse
from typing import Any

from idp.settings import Settings


def register_user_commands(user: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    enable = user.add_parser("enable", help="let a disabled user sign in again")
    enable.add_argument("username")
    enable.set_defaults(handler=_enable)

    delete = user.add_parser(
        "delete",
        help="delete a user: end their sessions (back-channel logouts), revoke their tokens, remove their "
        "credentials and personal data; the audit trail keeps a pseudonymous id and the `sub` is never reused",
    )
    delete.add_argument("username")
    delete.add_argument("--yes", action="store_true", help="do it (without: say what would be deleted)")
    delete.add_argument(
        "--allow-reuse",
        action="store_true",
        help="let the username and the verified address be given to a new user (default: retired for good)",
    )
    delete.set_defaults(handler=_delete)

    password = user.add_parser(
        "set-password", help="give a user a new password: ends their sessions and revokes their tokens"
    )
    password.add_argument("username")
    password.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    password.add_argument(
        "--must-change",
        action="store_true",
        help="the next sign-in must choose a new password before any app is signed in to",
    )
    password.set_defaults(handler=_set_password)


def register_client_commands(clients: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    listing = clients.add_parser("list", help="one line per client: id, name, auth method, grant types, allowed_groups")
    listing.set_defaults(handler=_clients_list)
    show = clients.add_parser("show", help="every stored field of a client (never its secret)")
    show.add_argument("client_id", metavar="ID")
    show.set_defaults(handler=_clients_show)


def _cli() -> Any:
    from idp import cli

    return cli


def _enable(settings: Settings, args: argparse.Namespace) -> None:
    from idp.user_lifecycle import enable_user
    from idp.users import UserError

    with _cli()._database(settings).begin() as db:
        try:
            changed = enable_user(db, args.username)
        except UserError as exc:
            raise _cli().CommandError(str(exc)) from None
    print(f"enabled user {args.username}" if changed else f"user {args.username} was not disabled; unchanged")


def _delete(settings: Settings, args: argparse.Namespace) -> None:
    from idp.db.erasure import truncate_log, zero_freed_space
    from idp.user_lifecycle import delete_user, holdings_of
    from idp.users import UserError

    cli = _cli()
    sessions, keyring = cli._database(settings), cli._keyring(settings)
    with sessions.begin() as db:
        try:
            if not args.yes:
                held = holdings_of(db, args.username)
                kept = "stay free for reuse" if args.allow_reuse else "are retired for good"
                raise cli.CommandError(
                    f"user delete {args.username}: would end and remove {held.describe()}; "
                    f"the username and verified address {kept}. Give --yes to delete"
                )
            zero_freed_space(db)
            deleted = delete_user(db, keyring, args.username, allow_reuse=args.allow_reuse)
        except UserError as exc:
            raise cli.CommandError(str(exc)) from None
    print(
        f"deleted user {args.username}: now {deleted.pseudonym} (sub {deleted.subject}, never reused); "
        + ("retired: " + " and ".join(deleted.retired) if deleted.retired else "nothing retired (--allow-reuse)")
    )
    if not truncate_log(sessions):
        print(
            "warning: the database's write-ahead log is in use; SQLite overwrites the erased pages at its next checkpoint"
        )
    cli._tell_relying_parties(settings, deleted.ended)


def _set_password(settings: Settings, args: argparse.Namespace) -> None:
    from idp.cli_notices import notify
    from idp.mail import notices
    from idp.user_lifecycle import set_password
    from idp.users import UserError, get_user

    cli = _cli()
    sessions = cli._database(settings)
    with sessions() as db:  # a known user first: no password is read or hashed for a typo
        try:
            user = get_user(db, args.username)
        except UserError as exc:
            raise cli.CommandError(str(exc)) from None
        username, email, user_id = user.username, user.email, user.id
    password = cli._read_password(args.password_stdin)
    if password is None:
        raise cli.CommandError("no password given: use --password-stdin (or run it in a terminal)")
    password_hash = cli._hash_password(settings, password, username=username, email=email)
    with sessions.begin() as db:
        try:
            ended = set_password(db, username, password_hash, must_change=args.must_change)
        except UserError as exc:
            raise cli.CommandError(str(exc)) from None
    then = "; it must be changed at the next sign-in" if args.must_change else ""
    print(f"new password set for user {username}{then}")
    cli._tell_relying_parties(settings, ended)
    notify(settings, sessions, notices.PASSWORD_SET_BY_ADMIN, user_id)


def _clients_list(settings: Settings, args: argparse.Namespace) -> None:
    from idp.client_records import list_lines

    with _cli()._database(settings)() as db:
        for line in list_lines(db):
            print(line)


def _clients_show(settings: Settings, args: argparse.Namespace) -> None:
    from idp.client_records import ClientNotFound, describe

    cli = _cli()
    with cli._database(settings)() as db:
        try:
            lines = describe(db, args.client_id)
        except ClientNotFound as exc:
            raise cli.CommandError(str(exc)) from None
    width = max(len(label) for label, _ in lines) + 2
    for label, value in lines:
        print(f"{label + ':':{width}s}{value}")
