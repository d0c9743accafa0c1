"""`idp clients sync FILE`: the database's clients become exactly the file's, in one
transaction (a bad file changes nothing). Secrets are stored as keyed digests."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from idp.audit.trail import record_audit
from idp.clients_file import ClientConfig, ClientsFileError, parse_clients_file
from idp.db.models import Client, Group
from idp.groups import withdraw_where_no_longer_allowed
from idp.login.sessions import EndedSession
from idp.security.keyring import Keyring
from idp.security.outbound import Outbound


@dataclass(frozen=True)
class SyncReport:
    added: tuple[str, ...]
    updated: tuple[str, ...]
    removed: tuple[str, ...]
    warnings: tuple[str, ...] = ()  # what the admin should know about clients the file allows
    # users who lost an app because its allowed_groups narrowed: (username, client_id), and
    # their RP sessions there, for back-channel logouts after the commit
    withdrawn: tuple[tuple[str, str], ...] = ()
    ended: tuple[EndedSession, ...] = ()


def sync_clients_file(
    sessions: sessionmaker[Session],
    keyring: Keyring,
    path: str,
    *,
    allow_empty: bool = False,
    outbound: Outbound | None = None,
) -> SyncReport:
    """`outbound`: also warn for URIs idp would not call (resolved now; the CLI passes it,
    start-up does not, to not wait on DNS)."""
    with sessions() as db:
        known_groups = frozenset(db.scalars(select(Group.name)))
    # raises ClientsFileError before anything is touched (a group it names must exist)
    configs = parse_clients_file(path, known_groups=known_groups)
    if not configs and not allow_empty:
        # a truncated or wrong file must not quietly unregister every relying party
        raise ClientsFileError(
            f"{path}: no clients in the file: syncing it would remove every registered client "
            "(to do exactly that, pass --allow-empty)"
        )
    with sessions.begin() as db:
        report = sync_clients(db, keyring, configs)
    unreachable = outbound_warnings(configs, outbound) if outbound is not None else ()
    return dataclasses.replace(report, warnings=warnings_for(configs) + unreachable)


def warnings_for(configs: list[ClientConfig]) -> tuple[str, ...]:
    found = _open_to_everyone(configs) + tuple(
        f'client "{c.client_id}": require_pkce = false: authorization requests without PKCE are '
        "accepted (with a nonce, each one audited); turn PKCE on in the relying party and remove this line"
        for c in configs
        if not c.require_pkce
    )
    return found + _token_endpoint_audience(configs)


def _token_endpoint_audience(configs: list[ClientConfig]) -> tuple[str, ...]:
    return tuple(
        f'client "{c.client_id}": token_endpoint_audience_compat = true: private_key_jwt assertions naming '
        "the token endpoint URL as aud are accepted, so another authorization server this relying party uses "
        "can list that URL as its own endpoint, collect an assertion made for it and replay it here (audience "
        "injection, CVE-2025-27370); make the relying party send the issuer as aud and remove this line"
        for c in configs
        if c.token_endpoint_audience_compat
    )


def _open_to_everyone(configs: list[ClientConfig]) -> tuple[str, ...]:
    open_ones = [c.client_id for c in configs if c.allowed_groups is None]
    if not open_ones:
        return ()
    return (
        f"client(s) {', '.join(open_ones)}: open to every user (no allowed_groups): anyone with an "
        "account can sign in to them; set allowed_groups, or default_allowed_groups at the top of the file",
    )


def outbound_warnings(configs: list[ClientConfig], outbound: Outbound) -> tuple[str, ...]:
    """A jwks_uri or backchannel_logout_uri whose host resolves outside
    IDP_OUTBOUND_ALLOWED_NETWORKS (or not at all) would be refused when idp calls it."""
    found = []
    for c in configs:
        for name, uri in (("jwks_uri", c.jwks_uri), ("backchannel_logout_uri", c.backchannel_logout_uri)):
            reason = outbound.find_refusal(uri) if uri else None
            if reason:
                found.append(
                    f'client "{c.client_id}": {name} {uri}: {reason}; idp calls only addresses in '
                    "IDP_OUTBOUND_ALLOWED_NETWORKS, so it will refuse this one"
                )
    return tuple(found)


def sync_clients(db: Session, keyring: Keyring, configs: list[ClientConfig]) -> SyncReport:
    _check_groups_exist(db, configs)
    existing = {row.client_id: row for row in db.scalars(select(Client))}
    added, updated = [], []
    narrowed: list[tuple[str, tuple[str, ...]]] = []
    for config in configs:
        stored = _stored_config(config)
        digest = keyring.digest(config.client_secret) if config.client_secret else None
        row = existing.pop(config.client_id, None)
        if row is None:
            db.add(Client(client_id=config.client_id, secret_digest=digest, config=stored))
            added.append(config.client_id)
        elif row.config != stored or row.secret_digest != digest:
            before = row.config.get("allowed_groups")
            if config.allowed_groups is not None and (before is None or not set(config.allowed_groups) >= set(before)):
                narrowed.append((config.client_id, config.allowed_groups))
            row.config, row.secret_digest = stored, digest
            updated.append(config.client_id)
    for row in existing.values():
        db.delete(row)
    withdrawn, ended = [], []
    db.flush()  # the new configs first: what the withdrawal reads and what the refresh checks agree
    for client_id, allowed in narrowed:
        # a narrowed app ends at once what users outside its groups hold there, as removing
        # them from a group would (the refresh check alone would leave access tokens alive)
        users, their_sessions = withdraw_where_no_longer_allowed(db, client_id, allowed)
        withdrawn += [(username, client_id) for username in users]
        ended += their_sessions
    report = SyncReport(tuple(added), tuple(updated), tuple(existing), withdrawn=tuple(withdrawn), ended=tuple(ended))
    if added or updated or existing:
        record_audit(db, "clients.synced", added=report.added, updated=report.updated, removed=report.removed)
    return report


def _check_groups_exist(db: Session, configs: list[ClientConfig]) -> None:
    """In the sync's own transaction too: a group removed between parsing and syncing
    (or a caller that parsed without the database's groups) never gets stored."""
    known = frozenset(db.scalars(select(Group.name)))
    for config in configs:
        missing = sorted(set(config.allowed_groups or ()) - known)
        if missing:
            raise ClientsFileError(f'client "{config.client_id}": allowed_groups: no group named {missing[0]!r}')


def _stored_config(config: ClientConfig) -> dict[str, object]:
    stored = dataclasses.asdict(config)
    stored.pop("client_secret")
    return {k: _as_json(v) for k, v in stored.items()}


def _as_json(value: object) -> object:
    """Tuples as lists, at any depth (declared_scopes holds tables of arrays): what the JSON
    column gives back, so that an unchanged client compares equal to its stored row."""
    if isinstance(value, (tuple, list)):
        return [_as_json(item) for item in value]
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    return value
