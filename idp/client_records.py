"""`idp clients list|show`: the registered relying parties as stored by `idp clients sync`,
for an admin to read. A client's secret is never shown, not even its digest: only whether
one is set."""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.db.models import Client

_NEVER_SHOWN = frozenset({"client_secret"})  # not stored (clients_sync drops it); never shown if it were


class ClientNotFound(ValueError):
    pass


def list_lines(db: Session) -> list[str]:
    """One line per client: id, name, auth method, grant types, allowed_groups."""
    return [
        "\t".join(
            (
                row.client_id,
                str(row.config.get("client_name") or row.client_id),
                str(row.config.get("token_endpoint_auth_method") or "-"),
                _joined(row.config.get("grant_types")),
                _allowed_groups(row.config.get("allowed_groups")),
            )
        )
        for row in db.scalars(select(Client).order_by(Client.client_id))
    ]


def describe(db: Session, client_id: str) -> list[tuple[str, str]]:
    """Every stored field of one client, as labelled lines, but the secret digest."""
    row = db.scalar(select(Client).where(Client.client_id == client_id))
    if row is None:
        raise ClientNotFound(f"no client {client_id!r}")
    secret = "set (stored as a keyed digest; never shown)" if row.secret_digest else "none"
    fields = [
        (key, _shown(value)) for key, value in sorted(row.config.items()) if key not in _NEVER_SHOWN | {"client_id"}
    ]
    return [
        ("client_id", row.client_id),
        ("client_secret", secret),
        *fields,
        ("updated", f"{row.updated_at:%Y-%m-%d %H:%M:%S}Z"),
    ]


def _joined(values: Iterable[str] | None) -> str:
    return ",".join(values) if values else "-"


def _allowed_groups(groups: Iterable[str] | None) -> str:
    return "everyone" if groups is None else (",".join(groups) or "nobody")


def _shown(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "), sort_keys=True)
