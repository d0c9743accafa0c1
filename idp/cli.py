"""The `idp` command line (DESIGN.md §3): serve, db upgrade, user, clients, keys.
Errors are one line on stderr and exit status 2; nothing is half-written (each command
is one transaction, and input is validated before it starts)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from idp.settings import (
    DEFAULT_PORT,
    Settings,
    SettingsError,
    find_issuer_port_mismatch,
    load_settings,
)


class CommandError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        # only `idp serve` has a port: an unset IDP_ISSUER is http://localhost:<that port>
        settings = load_settings(serve_port=getattr(args, "port", None))
        args.handler(settings, args)
    except (CommandError, SettingsError, ValueError, OSError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # database errors: the driver's own message, on one line
        from sqlalchemy.exc import SQLAlchemyError

        if not isinstance(exc, SQLAlchemyError):
            raise
        return _fail(f"database: {getattr(exc, 'orig', None) or exc}")
    return 0


def _fail(message: str) -> int:
    print(f"idp: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors are one line too, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="idp", description="OpenID Connect identity provider")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    serve = commands.add_parser("serve", help="serve HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"TCP port (default {DEFAULT_PORT}); with IDP_ISSUER unset the issuer is http://localhost:PORT",
    )
    serve.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        help="worker processes: a number, or 'auto' for one per core (more than one needs IDP_REDIS_URL)",
    )
    serve.set_defaults(handler=_serve)

    db = commands.add_parser("db", help="database").add_subparsers(
        dest="db_command", required=True, parser_class=_OneLineParser
    )
    db.add_parser("upgrade", help="apply migrations").set_defaults(handler=_db_upgrade)

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="user_command", required=True, parser_class=_OneLineParser
    )
    add = user.add_parser("add", help="add a user")
    add.add_argument("username")
    add.add_argument("--email")
    add.add_argument("--name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument(
        "--email-verified",
        action="store_true",
        help="the address is known to be the user's (the email_verified claim); needs --email",
    )
    add.set_defaults(handler=_user_add)
    user_set = user.add_parser("set", help="change a user's attributes; only the options given change")
    user_set.add_argument("username")
    user_set.add_argument("--email", help="a new address (unverified unless --email-verified yes); '' removes it")
    user_set.add_argument("--name", help="the display name (the name claim); '' removes it")
    user_set.add_argument(
        "--email-verified",
        choices=("yes", "no"),
        help="whether the address is known to be the user's; a verified address belongs to one user",
    )
    user_set.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a profile claim (given_name, family_name, nickname, picture, locale, zoneinfo, phone_number, "
        "phone_number_verified yes|no, …) or a custom claim for the clients file's [[scopes]]; "
        "NAME= removes it; repeatable",
    )
    user_set.set_defaults(handler=_user_set)
    user_list = user.add_parser("list", help="list users")
    user_list.add_argument(
        "--outdated-hashes",
        action="store_true",
        help="instead, count the password hashes per Argon2 parameter set and say which set is "
        "current (IDP_ARGON2_*); the others are rehashed at each user's next sign-in",
    )
    user_list.set_defaults(handler=_user_list)
    disable = user.add_parser("disable", help="disable a user, end their sessions, revoke their refresh tokens")
    disable.add_argument("username")
    disable.set_defaults(handler=_user_disable)
    unlock = user.add_parser("unlock", help="clear a user's failed-attempt counter and lock")
    unlock.add_argument("username")
    unlock.set_defaults(handler=_user_unlock)
    require = user.add_parser(
        "require-mfa", help="the user's next login must enrol a second factor; every login then needs it"
    )
    require.add_argument("username")
    require.set_defaults(handler=_user_require_mfa)
    reset = user.add_parser("reset-mfa", help="remove the user's second factors (TOTP, backup codes)")
    reset.add_argument("username")
    reset.set_defaults(handler=_user_reset_mfa)

    show = user.add_parser("show", help="a user's state, factors, groups and sessions")
    show.add_argument("username")
    show.set_defaults(handler=_user_show)

    from idp import cli_lifecycle

    cli_lifecycle.register_user_commands(user, _OneLineParser)

    from idp import cli_links

    cli_links.register_user_commands(user, _OneLineParser)

    from idp import cli_groups

    cli_groups.register(commands, _OneLineParser)

    explain = commands.add_parser(
        "explain", help="what would happen if USER signed in to CLIENT now: access, level, steps, claims"
    )
    explain.add_argument("client_id", metavar="CLIENT")
    explain.add_argument("username", metavar="USER")
    explain.add_argument("--acr-values", help="as the RP would send them (default: none; the client's default applies)")
    explain.add_argument("--scope", help="as the RP would ask (default: every scope the client registered)")
    explain.set_defaults(handler=_explain)

    audit = commands.add_parser("audit", help="the audit trail").add_subparsers(
        dest="audit_command", required=True, parser_class=_OneLineParser
    )
    tail = audit.add_parser("tail", help="print the newest audit events as JSON lines, oldest first")
    tail.add_argument("-n", "--lines", type=int, default=20, help="how many events (default 20, at most 10000)")
    tail.add_argument("--kind", default="", help="only kinds starting with this, e.g. login. or account.locked")
    tail.add_argument("--user", help="only events of this username")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events (Ctrl-C stops)")
    tail.set_defaults(handler=_audit_tail)

    clients = commands.add_parser("clients", help="relying parties").add_subparsers(
        dest="clients_command", required=True, parser_class=_OneLineParser
    )
    sync = clients.add_parser("sync", help="make the registered clients exactly those of FILE")
    sync.add_argument("file")
    sync.add_argument("--allow-empty", action="store_true", help="a file with no clients removes every client")
    sync.set_defaults(handler=_clients_sync)
    cli_lifecycle.register_client_commands(clients, _OneLineParser)

    keys = commands.add_parser("keys", help="signing keys").add_subparsers(
        dest="keys_command", required=True, parser_class=_OneLineParser
    )
    rotate = keys.add_parser(
        "rotate",
        help="publish a new key of each algorithm (or of --alg) now, sign with it "
        "from --signs-in seconds later; the old key stays published until its tokens expire",
    )
    rotate.add_argument(
        "--alg",
        action="append",
        metavar="ALG",
        help="rotate only this algorithm's key: RS256, ES256 or Ed25519 (EdDSA names the Ed25519 "
        "key); may be repeated; default: all three",
    )
    rotate.add_argument(
        "--signs-in",
        type=int,
        default=None,
        metavar="SECONDS",
        help="delay before the new key signs (default: long enough for every process and every "
        "relying party's cached JWKS to have it; 0 = at once, for a compromised key)",
    )
    rotate.set_defaults(handler=_keys_rotate)
    keys.add_parser("list", help="list signing keys").set_defaults(handler=_keys_list)
    revoke = keys.add_parser(
        "revoke",
        help="withdraw a leaked key: every process stops publishing it and signing with it within "
        "seconds (its tokens stop verifying); refused for the only key of an algorithm in use: rotate first",
    )
    revoke.add_argument("kid")
    revoke.set_defaults(handler=_keys_revoke)
    return parser


def _database(settings: Settings, *, migrated: bool = True):  # type: ignore[no-untyped-def]
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from idp.clock import SystemClock
    from idp.db.engine import make_engine, make_sessionmaker
    from idp.db.migrate import is_current

    url = make_url(settings.database_url)
    if migrated and url.drivername.startswith("sqlite") and url.database and not Path(url.database).exists():
        raise CommandError(f"no database at {url.database}; run `idp db upgrade`")  # and do not create an empty one
    engine = make_engine(settings.database_url)
    if migrated and not is_current(engine):
        raise CommandError("the database schema is not current; run `idp db upgrade`")
    return make_sessionmaker(engine, SystemClock())  # the CLI's time is the wall clock's


def _keyring(settings: Settings):  # type: ignore[no-untyped-def]
    from idp.app import master_key_of
    from idp.security.keyring import Keyring

    return Keyring(master_key_of(settings))


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return port


def _worker_count(value: str) -> int:
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a number nor 'auto'") from None
    if not 1 <= count <= 256:
        raise argparse.ArgumentTypeError("must be between 1 and 256")
    return count


# After SIGTERM, uvicorn stops accepting connections and waits this long for requests in
# flight to finish before closing the rest; then the app's shutdown gives back-channel
# deliveries up to 10 s more (idp/app.py). 18 + 10 stays under the 30 s that systemd
# (TimeoutStopSec in deploy/idp.service) and compose (stop_grace_period) wait before SIGKILL.
GRACEFUL_STOP_SECONDS = 18


def _serve(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    if args.workers > 1 and not settings.redis_url:
        raise CommandError(
            "--workers > 1 needs IDP_REDIS_URL: the in-process state store is not shared between processes"
        )
    from idp.observability.multiprocess import metrics_directory

    with metrics_directory(args.workers):  # before idp.app imports prometheus_client
        from idp.app import create_app
        from idp.logging_config import serve_log_config
        from idp.serving import serve_workers

        options = dict(
            host=args.host,
            port=args.port,
            proxy_headers=False,
            server_header=False,
            access_log=False,
            log_config=serve_log_config(access_log=bool(settings.access_log)),
            timeout_graceful_shutdown=GRACEFUL_STOP_SECONDS,
        )
        if args.workers == 1:
            app = create_app(settings)
            _announce_issuer(settings, args.port)
            uvicorn.run(app, **options)  # type: ignore[arg-type]
        else:
            create_app(settings)  # validate everything once before forking
            _announce_issuer(settings, args.port)
            # each worker loads its settings from the environment (idp.asgi): hand it the
            # issuer worked out here, so that every worker signs with the same `iss`
            os.environ["IDP_ISSUER"] = settings.issuer
            serve_workers("idp.asgi:create", workers=args.workers, **options)


def _announce_issuer(settings: Settings, port: int) -> None:
    from idp.mail.mailer import describe

    print(f"idp: issuer {settings.issuer}", file=sys.stderr, flush=True)
    print(f"idp: {describe(settings)}", file=sys.stderr, flush=True)  # "mail off (…)" or where it goes
    if warning := find_issuer_port_mismatch(settings.issuer, port):
        print(f"idp: warning: {warning}", file=sys.stderr, flush=True)


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> None:
    from idp.db.engine import make_engine
    from idp.db.migrate import upgrade

    upgrade(make_engine(settings.database_url))
    print("database is up to date")


def _user_add(settings: Settings, args: argparse.Namespace) -> None:
    from idp.cli_links import begin_address_verification, finish_address_verification
    from idp.users import UserError, add_user, check_new_user

    sessions, keyring = _database(settings), _keyring(settings)
    password = _read_password(args.password_stdin)
    with sessions() as db:
        try:
            username = check_new_user(
                db, args.username, args.email, name=args.name, email_verified=args.email_verified, keyring=keyring
            )
        except UserError as exc:
            raise CommandError(str(exc)) from None
    password_hash = None
    if password is not None:
        password_hash = _hash_password(settings, password, username=username, email=args.email)
    with sessions.begin() as db:
        try:
            check_new_user(
                db, args.username, args.email, name=args.name, email_verified=args.email_verified, keyring=keyring
            )
            user = add_user(
                db,
                username=username,
                email=args.email,
                name=args.name,
                password_hash=password_hash,
                email_verified=args.email_verified,
            )
        except UserError as exc:
            raise CommandError(str(exc)) from None
        verification = begin_address_verification(settings, db, keyring, user, address_changed=True)
    print(
        f"added user {username}"
        + ("" if password_hash else f" (no password yet: `idp user invite {username}` lets them choose one)")
    )
    finish_address_verification(settings, sessions, verification)


def _hash_password(settings: Settings, password: str, *, username: str, email: str | None) -> str:
    """The one password policy (a password the admin gives is the only factor until the user
    adds another), then its Argon2id hash with the configured parameters."""
    from idp.security.password_policy import PasswordRejected, check_password
    from idp.security.passwords import PasswordHashing

    try:
        check_password(password, username=username, email=email)
    except PasswordRejected as exc:
        raise CommandError(f"password: {exc.reason}") from None
    hashing = PasswordHashing(
        max_concurrent=1, time_cost=settings.argon2_time_cost, memory_cost_kib=settings.argon2_memory_kib
    )
    try:
        return hashing.hash(password)
    finally:
        hashing.close()


def _user_set(settings: Settings, args: argparse.Namespace) -> None:
    from idp.attributes import AttributeRejected, parse_assignment
    from idp.cli_links import begin_address_verification, finish_address_verification
    from idp.users import UserChanges, UserError, get_user, update_user

    verified = None if args.email_verified is None else args.email_verified == "yes"
    try:
        attributes = tuple(parse_assignment(text) for text in args.attr)
    except AttributeRejected as exc:
        raise CommandError(str(exc)) from None
    changes = UserChanges(email=args.email, name=args.name, email_verified=verified, attributes=attributes)
    if changes.is_empty():
        raise CommandError("user set: nothing to change; give at least one option (see idp user set --help)")
    sessions, keyring = _database(settings), _keyring(settings)
    with sessions.begin() as db:
        try:
            changed = update_user(db, args.username, changes, keyring=keyring)
        except UserError as exc:
            raise CommandError(str(exc)) from None
        user = get_user(db, args.username)
        verification = begin_address_verification(settings, db, keyring, user, address_changed="email" in changed)
    print(f"updated user {args.username}: {', '.join(changed)}" if changed else f"user {args.username} unchanged")
    finish_address_verification(settings, sessions, verification)


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        line = sys.stdin.readline()
        if not line.strip("\r\n"):
            raise CommandError("--password-stdin: no password on standard input")
        return line.rstrip("\r\n")
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat password: "):
            raise CommandError("the passwords do not match")
        return first
    return None


def _user_list(settings: Settings, args: argparse.Namespace) -> None:
    from idp.users import list_users

    if args.outdated_hashes:
        return _outdated_hashes(settings)
    with _database(settings)() as db:
        for u in list_users(db):
            state = (
                "disabled"
                if u.disabled
                else (f"locked until {u.locked_until:%Y-%m-%d %H:%M:%S}Z" if u.locked_until else "active")
            )
            if u.require_mfa:
                state += ",mfa-required"
            if u.deleted:
                state = "deleted"
            print(f"{u.username}\t{u.email or '-'}\t{state}\t{u.subject}")


def _outdated_hashes(settings: Settings) -> None:
    """One line per parameter set, `current|outdated<TAB>prefix<TAB>count` (the current set
    first, even with no hash yet), then a summary."""
    from idp.password_census import take_census
    from idp.security.passwords import HashParameters

    current = HashParameters.argon2id(time_cost=settings.argon2_time_cost, memory_cost_kib=settings.argon2_memory_kib)
    with _database(settings)() as db:
        census = take_census(db)
    outdated = sorted((p, n) for p, n in census.items() if p != current)
    print(f"current\t{current}\t{census.get(current, 0)}")
    for parameters, count in outdated:
        print(f"outdated\t{parameters}\t{count}")
    stale = sum(n for _, n in outdated)
    print(
        f"{stale} of {stale + census.get(current, 0)} password hashes use outdated parameters; "
        "each is rehashed at its user's next successful sign-in"
    )


def _user_show(settings: Settings, args: argparse.Namespace) -> None:
    from idp.users import describe_user

    with _database(settings)() as db:
        for label, value in describe_user(db, args.username):
            print(f"{label + ':':14s}{value}")


def _explain(settings: Settings, args: argparse.Namespace) -> None:
    from idp.explain import describe, explain
    from idp.lockout import Lockout
    from idp.mfa.factors import SecondFactors
    from idp.state.memory import MemoryStore

    # only factors_of is used: it reads the database, never the lockout's store
    lockout = Lockout(MemoryStore(), attempts=settings.lockout_attempts, seconds=settings.lockout_seconds)
    factors = SecondFactors(_keyring(settings), lockout, issuer=settings.issuer)
    with _database(settings)() as db:
        found = explain(
            db,
            lambda db, user: factors.factors_of(db, user, count_backup_codes=True),
            args.client_id,
            args.username,
            acr_values=args.acr_values,
            scope=args.scope,
            claims_of=_claims_of(settings),
        )
    print("\n".join(describe(found)))


def _claims_of(settings: Settings):  # type: ignore[no-untyped-def]
    """The claims an app would be given, as userinfo releases them (idp/oidc/claims.py)."""
    from idp.login.memberships import memberships_of
    from idp.oidc.claims import build_user_info
    from idp.oidc.clients import RegisteredClient

    keyring = _keyring(settings)

    def claims_of(db, user, scope, config):  # type: ignore[no-untyped-def]
        client = RegisteredClient(config, None, keyring)
        return build_user_info(user, scope, client, lambda: [m.name for m in memberships_of(db, user.id)])

    return claims_of


def _user_disable(settings: Settings, args: argparse.Namespace) -> None:
    _tell_relying_parties(settings, _with_user_command(settings, args.username, "disabled", "disable_user"))


def _user_unlock(settings: Settings, args: argparse.Namespace) -> None:
    _with_user_command(settings, args.username, "unlocked", "unlock_user")


def _user_require_mfa(settings: Settings, args: argparse.Namespace) -> None:
    _with_user_command(settings, args.username, "MFA now required for", "require_mfa")


def _user_reset_mfa(settings: Settings, args: argparse.Namespace) -> None:
    from idp.cli_notices import notify
    from idp.mail import notices
    from idp.users import UserError, get_user

    sessions = _database(settings)
    with sessions() as db:
        try:
            user_id = get_user(db, args.username).id
        except UserError as exc:
            raise CommandError(str(exc)) from None
    _tell_relying_parties(
        settings, _with_user_command(settings, args.username, "second factors removed for", "reset_mfa")
    )
    notify(settings, sessions, notices.FACTORS_REMOVED_BY_ADMIN, user_id)


def _audit_tail(settings: Settings, args: argparse.Namespace) -> None:
    import time

    from idp.audit.trail import recent_events
    from idp.login.steps.password import normalize_username

    if not 1 <= args.lines <= 10000:
        raise CommandError("--lines must be between 1 and 10000")
    sessions = _database(settings)
    username = normalize_username(args.user) if args.user is not None else None
    last_id = 0
    while True:
        with sessions() as db:
            events = recent_events(
                db,
                limit=args.lines if last_id == 0 else 1000,
                kind_prefix=args.kind,
                username=username,
                after_id=last_id,
            )
        for event_id, line in events:
            print(line, flush=True)
            last_id = event_id
        if not args.follow:
            return
        last_id = last_id or _newest_audit_id(sessions)
        time.sleep(1.0)


def _newest_audit_id(sessions) -> int:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from idp.db.models import AuditEvent

    with sessions() as db:
        return int(db.scalar(select(func.coalesce(func.max(AuditEvent.id), 0))) or 0)


def _with_user_command(settings: Settings, username: str, verb: str, function: str) -> object:
    import idp.users as users

    operation: Callable[..., object] = getattr(users, function)
    with _database(settings).begin() as db:
        try:
            result = operation(db, username)
        except users.UserError as exc:
            raise CommandError(str(exc)) from None
    print(f"{verb} user {username}")
    return result


def _tell_relying_parties(settings: Settings, ended: object) -> None:
    """Back-channel logouts for the sessions a command ended, after its commit (the change
    stands whatever the RPs answer), waited for so the admin sees the outcome. Failures are
    reported and audited, not fatal: the sessions are ended in any case."""
    import asyncio

    from idp.app import outbound_of
    from idp.clock import SystemClock
    from idp.oidc.clients import ClientRegistry
    from idp.oidc.signing_keys import KeyCache
    from idp.web.backchannel import Sender, deliver_all

    assert isinstance(ended, list)
    if not ended:
        return
    sessions, keyring = _database(settings), _keyring(settings)
    sender = Sender(
        settings.issuer,
        KeyCache(sessions, keyring),
        ClientRegistry(sessions, keyring),
        sessions,
        SystemClock(),
        outbound_of(settings),
    )
    sender.clients.reload()
    delivered = asyncio.run(deliver_all(sender, ended))
    failed = [d for d in delivered if d.outcome != "success"]
    print(
        f"{len(ended)} session(s) ended; back-channel logouts: {len(delivered) - len(failed)} delivered, "
        f"{len(failed)} failed" + "".join(f"; {d.client_id}: {d.detail}" for d in failed)
    )


def _clients_sync(settings: Settings, args: argparse.Namespace) -> None:
    from idp.app import outbound_of
    from idp.clients_file import ClientsFileError
    from idp.clients_sync import sync_clients_file

    try:
        report = sync_clients_file(
            _database(settings),
            _keyring(settings),
            args.file,
            allow_empty=args.allow_empty,
            outbound=outbound_of(settings),
        )
    except ClientsFileError as exc:
        raise CommandError(str(exc)) from None
    print(f"clients: {len(report.added)} added, {len(report.updated)} updated, {len(report.removed)} removed")
    for username, client_id in report.withdrawn:
        print(f"{username} may no longer use {client_id} (its allowed_groups narrowed): tokens there revoked")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    _tell_relying_parties(settings, list(report.ended))


def _keys_rotate(settings: Settings, args: argparse.Namespace) -> None:
    from idp.audit.trail import record_audit
    from idp.oidc.signing_keys import KEY_ALGS, PUBLISH_LEAD_SECONDS, family_of, rotate_signing_keys

    signs_in = PUBLISH_LEAD_SECONDS if args.signs_in is None else args.signs_in
    if not 0 <= signs_in <= 86400:
        raise CommandError("--signs-in must be between 0 and 86400 seconds")
    try:
        algs = [family_of(alg) for alg in args.alg or KEY_ALGS]
    except ValueError as exc:
        raise CommandError(f"--alg: {exc}") from None
    with _database(settings).begin() as db:
        rows = rotate_signing_keys(
            db,
            _keyring(settings),
            id_token_ttl_seconds=settings.id_token_ttl_seconds,
            signs_in_seconds=signs_in,
            algs=algs,
        )
        for row in rows:
            record_audit(
                db,
                "key.rotated",
                outcome="success",
                by="cli",
                kid=row.kid,
                alg=row.alg,
                signs_from=row.signs_from.isoformat() if row.signs_from else None,
            )
            when = "now" if row.signs_from is None else f"from {row.signs_from:%Y-%m-%d %H:%M:%S}Z ({signs_in} s)"
            print(
                f"new {row.alg} signing key {row.kid}: published now, signs {when}; "
                f"previous {row.alg} keys stay published until their tokens expire"
            )


def _keys_revoke(settings: Settings, args: argparse.Namespace) -> None:
    from idp.app import REFRESH_SECONDS
    from idp.oidc.key_revocation import KeyRevocationError, revoke_signing_key
    from idp.oidc.signing_keys import JWKS_MAX_AGE_SECONDS

    with _database(settings).begin() as db:
        try:
            done = revoke_signing_key(
                db, args.kid, id_token_ttl_seconds=settings.id_token_ttl_seconds, keyring=_keyring(settings)
            )
        except KeyRevocationError as exc:
            raise CommandError(str(exc)) from None
    print(
        f"revoked {done.alg} signing key {done.kid}: every process stops publishing it and signing with it "
        f"within {REFRESH_SECONDS:g} s; tokens it signed no longer verify"
    )
    if done.signer:
        print(f"{done.alg} tokens are now signed by {done.signer}")
    else:  # no client uses the algorithm (revoking its only key is refused otherwise)
        print(f"no {done.alg} key signs now: `idp keys rotate --alg {done.alg}` or the next start of idp makes one")
    print(
        f"relying parties must refetch their key sets (JWKS): a cached copy (max-age {JWKS_MAX_AGE_SECONDS} s, "
        f"longer where an RP keeps its own) still trusts {done.kid}"
    )


def _keys_list(settings: Settings, args: argparse.Namespace) -> None:
    from idp.clock import clock_of
    from idp.oidc.signing_keys import listed_keys

    with _database(settings)() as db:
        now = clock_of(db).now()
        for key in listed_keys(db):
            if key.revoked_at is not None:
                state = f"revoked at {key.revoked_at:%Y-%m-%d %H:%M:%S}Z"
            elif key.signs_from is not None and key.signs_from > now:
                state = f"next, published, signs from {key.signs_from:%Y-%m-%d %H:%M:%S}Z"
            elif key.retired_at is None:
                state = "active"
            elif key.retired_at > now:
                state = f"active until {key.retired_at:%Y-%m-%d %H:%M:%S}Z"
            else:
                state = f"retired, published until {key.unpublish_at:%Y-%m-%d %H:%M:%S}Z"
            print(f"{key.kid}\t{key.alg}\t{key.created_at:%Y-%m-%d %H:%M:%S}Z\t{state}")


if __name__ == "__main__":
    sys.exit(main())
