"""`idp group …`: the group commands (idp/groups.py does the work, one transaction each).

Removing members can withdraw access to apps: their back-channel logouts are sent after
the commit, as `idp user disable` sends its own."""

from __future__ import annotations

import argparse
from typing import Any

from idp.settings import Settings


def register(commands: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    group = commands.add_parser("group", help="groups: who may use which app, and their minimum assurance")
    sub = group.add_subparsers(dest="group_command", required=True, parser_class=parser_class)

    add = sub.add_parser("add", help="add a group")
    add.add_argument("name", help="an identifier: a-z 0-9 . _ - (any case is carried in lower case)")
    add.add_argument("--display-name", help="a name for people")
    add.add_argument("--min-acr", choices=("mfa", "phr"), help="the least assurance of every member's sign-in")
    add.set_defaults(handler=_add)

    change = sub.add_parser("set", help="change a group; only the options given change")
    change.add_argument("name")
    change.add_argument("--display-name", help="a name for people ('' removes it)")
    change.add_argument(
        "--min-acr",
        choices=("mfa", "phr", "none"),
        help="members reach at least this level on every app, whatever the app asks (none: no minimum)",
    )
    change.set_defaults(handler=_set)

    remove = sub.add_parser("remove", help="remove a group (refused while a client's allowed_groups names it)")
    remove.add_argument("name")
    remove.set_defaults(handler=_remove)

    sub.add_parser("list", help="list groups").set_defaults(handler=_list)

    show = sub.add_parser("show", help="a group's members, minimum and the apps that require it")
    show.add_argument("name")
    show.set_defaults(handler=_show)

    add_member = sub.add_parser("add-member", help="add users to a group")
    add_member.add_argument("name")
    add_member.add_argument("users", nargs="+", metavar="USER")
    add_member.set_defaults(handler=_add_member)

    remove_member = sub.add_parser(
        "remove-member",
        help="take users out of a group; at an app that required it they lose their tokens and are logged out",
    )
    remove_member.add_argument("name")
    remove_member.add_argument("users", nargs="+", metavar="USER")
    remove_member.set_defaults(handler=_remove_member)


def _database(settings: Settings) -> Any:
    from idp.cli import _database as database

    return database(settings)


def _add(settings: Settings, args: argparse.Namespace) -> None:
    from idp.groups import add_group

    with _database(settings).begin() as db:
        group = add_group(db, args.name, display_name=args.display_name, min_acr=args.min_acr)
        name = group.name
    print(f"added group {name}")


def _set(settings: Settings, args: argparse.Namespace) -> None:
    from idp.groups import group_name, set_group

    if args.display_name is None and args.min_acr is None:
        raise ValueError("nothing to change: give --display-name or --min-acr")
    with _database(settings).begin() as db:
        before, after = set_group(db, args.name, display_name=args.display_name, min_acr=args.min_acr)
    line = f"changed group {group_name(args.name)}"
    if args.min_acr is not None:
        line += f": minimum {before or 'none'} -> {after or 'none'}"
        if after is not None:
            line += " (members below it are asked to step up at their next authorization)"
    print(line)


def _remove(settings: Settings, args: argparse.Namespace) -> None:
    from idp.groups import group_name, remove_group

    with _database(settings).begin() as db:
        remove_group(db, args.name)
    print(f"removed group {group_name(args.name)}")


def _list(settings: Settings, args: argparse.Namespace) -> None:
    from idp.groups import list_groups

    with _database(settings)() as db:
        for info in list_groups(db):
            print(
                f"{info.name}\t{info.display_name or '-'}\tmin_acr={info.min_acr or '-'}\t"
                f"{len(info.members)} member(s)\trequired by: {', '.join(info.required_by) or '-'}"
            )


def _show(settings: Settings, args: argparse.Namespace) -> None:
    from idp.groups import show_group

    with _database(settings)() as db:
        info = show_group(db, args.name)
    print(f"group:        {info.name}")
    print(f"display name: {info.display_name or '-'}")
    print(f"min acr:      {info.min_acr or '-'}")
    print(f"required by:  {', '.join(info.required_by) or '-'}")
    print(f"members:      {', '.join(info.members) or '-'}")


def _add_member(settings: Settings, args: argparse.Namespace) -> None:
    from idp.groups import add_members, group_name

    with _database(settings).begin() as db:
        added = add_members(db, args.name, args.users)
    print(f"added to {group_name(args.name)}: {', '.join(added) or 'nobody (already members)'}")


def _remove_member(settings: Settings, args: argparse.Namespace) -> None:
    from idp.cli import _tell_relying_parties
    from idp.groups import group_name, remove_members

    with _database(settings).begin() as db:
        removal = remove_members(db, args.name, args.users)
    print(f"removed from {group_name(args.name)}: {', '.join(removal.removed) or 'nobody (not members)'}")
    for username, client_id in removal.withdrawn:
        print(f"{username} may no longer use {client_id}: tokens there revoked")
    _tell_relying_parties(settings, list(removal.ended))
