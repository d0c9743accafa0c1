"""`idp clients sync FILE`: the database's clients become exactly the file's, in one
transaction (a bad file changes nothing). Secrets are stored as keyed digests."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from idp.audit.trail import record_audit
from idp.clients_file import ClientConfig, ClientsFileError, parse_clients_file
from idp.db.models import Client
from idp.security.keyring import Keyring


@dataclass(frozen=True)
class SyncReport:
    added: tuple[str, ...]
    updated: tuple[str, ...]
    removed: tuple[str, ...]
    warnings: tuple[str, ...] = ()  # what the admin should know about clients the file allows


def sync_clients_file(
    sessions: sessionmaker[Session], keyring: Keyring, path: str, *, allow_empty: bool = False
) -> SyncReport:
    configs = parse_clients_file(path)  # raises ClientsFileError before anything is touched
    if not configs and not allow_empty:
        # a truncated or wrong file must not quietly unregister every relying party
        raise ClientsFileError(
            f"{path}: no clients in the file: syncing it would remove every registered client "
            "(to do exactly that, pass --allow-empty)"
        )
    with sessions.begin() as db:
        report = sync_clients(db, keyring, configs)
    return dataclasses.replace(report, warnings=warnings_for(configs))


def warnings_for(configs: list[ClientConfig]) -> tuple[str, ...]:
    return tuple(
        f'client "{c.client_id}": require_pkce = false: authorization requests without PKCE are '
        "accepted (with a nonce, each one audited); turn PKCE on in the relying party and remove this line"
        for c in configs
        if not c.require_pkce
    )


def sync_clients(db: Session, keyring: Keyring, configs: list[ClientConfig]) -> SyncReport:
    existing = {row.client_id: row for row in db.scalars(select(Client))}
    added, updated = [], []
    for config in configs:
        stored = _stored_config(config)
        digest = keyring.digest(config.client_secret) if config.client_secret else None
        row = existing.pop(config.client_id, None)
        if row is None:
            db.add(Client(client_id=config.client_id, secret_digest=digest, config=stored))
            added.append(config.client_id)
        elif row.config != stored or row.secret_digest != digest:
            row.config, row.secret_digest = stored, digest
            updated.append(config.client_id)
    for row in existing.values():
        db.delete(row)
    report = SyncReport(tuple(added), tuple(updated), tuple(existing))
    if added or updated or existing:
        record_audit(db, "clients.synced", added=report.added, updated=report.updated, removed=report.removed)
    return report


def _stored_config(config: ClientConfig) -> dict[str, object]:
    stored = dataclasses.asdict(config)
    stored.pop("client_secret")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in stored.items()}
