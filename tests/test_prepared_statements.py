"""idp/db/prepared.py: a hot statement run on the driver must do what Connection.execute does,
value for value and type for type, on SQLite and PostgreSQL (datetimes through idp's UTC
type, JSON, booleans, NULLs), and its statement must still reach the engine's listeners."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import bindparam, event, insert, select

from idp.db.engine import make_engine
from idp.db.models import AuditEvent, User
from idp.db.prepared import PreparedInsert, PreparedRead

_COLUMNS = (
    User.id,
    User.subject,
    User.email,
    User.email_verified,
    User.disabled,
    User.updated_at,
    User.locked_until,
    User.attributes,
)
_BY_SUBJECT = select(*_COLUMNS).where(User.subject == bindparam("subject"))
_PREPARED = PreparedRead(_BY_SUBJECT)


def test_a_prepared_read_gives_what_connection_execute_gives(database_url):
    engine = make_engine(database_url)
    at = datetime(2031, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    try:
        with engine.begin() as conn:
            for subject, attributes in (("s-1", {"department": "R&D", "level": 3, "tags": ["a", "é"]}), ("s-2", None)):
                conn.execute(
                    insert(User),
                    {
                        "subject": subject,
                        "username": subject,
                        "email": None if attributes is None else f"{subject}@example.com",
                        "email_verified": attributes is not None,
                        "disabled": False,
                        "created_at": at,
                        "updated_at": at,
                        "attributes": attributes,
                    },
                )
        seen: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
        with engine.connect() as conn:
            for subject in ("s-1", "s-2"):
                expected = conn.execute(_BY_SUBJECT, {"subject": subject}).first()
                got = _PREPARED.first(conn, {"subject": subject})
                assert expected is not None and got is not None
                assert tuple(got) == tuple(expected)
                assert [type(v) for v in got] == [type(v) for v in expected]
                assert got.updated_at == at and got.updated_at.tzinfo is not None
                assert got.subject == subject  # named like a Core row's attributes
            assert _PREPARED.first(conn, {"subject": "nobody"}) is None
        assert sum(statement.lstrip().upper().startswith("SELECT") for statement in seen) == 5  # 2 + 3 prepared
    finally:
        engine.dispose()


def test_a_prepared_insert_stores_what_connection_execute_stores(database_url):
    table = AuditEvent.__table__
    columns = ("at", "kind", "user_id", "client_id", "ip", "user_agent", "outcome", "detail")
    prepared = PreparedInsert(table, columns)  # type: ignore[arg-type]
    at = datetime(2031, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    row = {
        "at": at,
        "kind": "token.issued",
        "user_id": None,
        "client_id": "shop",
        "ip": "192.0.2.1",
        "user_agent": "ünïcode agent",
        "outcome": "success",
        "detail": {"grant_type": "client_credentials", "refresh": False, "n": [1, "two"]},
    }
    engine = make_engine(database_url)
    try:
        seen: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
        with engine.begin() as conn:
            conn.execute(insert(table), {**row, "kind": "by.execute"})
            prepared.run(conn, {**row, "kind": "by.prepared"})
        with engine.connect() as conn:
            stored = {r.kind: r for r in conn.execute(select(*(table.c[c] for c in columns)))}
        assert tuple(stored["by.prepared"])[2:] == tuple(stored["by.execute"])[2:]
        assert stored["by.prepared"].at == stored["by.execute"].at == at
        assert any(statement.lstrip().upper().startswith("INSERT") for statement in seen[1:])
        with engine.begin() as conn, pytest.raises(TypeError):  # a value missing is refused, not stored as NULL
            prepared.run(conn, {k: v for k, v in row.items() if k != "ip"})
    finally:
        engine.dispose()
