"""Hot statements run straight on the driver: a Core SELECT or INSERT compiled once per
dialect, its values and rows converted by SQLAlchemy's own type processors, without
SQLAlchemy's per-execution machinery (execution context, cursor result, row proxies).
Run on the unit of work's own connection, they are part of its transaction.

Measured on userinfo (bench.inprocess, SQLite): that machinery was a fifth of the request,
455 -> 358 µs with the token-and-user query run here. Only for the single-row lookups and
inserts of the hottest endpoints; everything else goes through `Connection.execute`.

The engine's `before_cursor_execute` listeners still see each statement (the statement
counts in tests/oidc/test_token_statement_counts.py, any tracing an operator adds), with
no execution context (None): there is none to give."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from sqlalchemy import Connection, Select, Table, bindparam, insert
from sqlalchemy.engine import Dialect


class _Compiled(NamedTuple):
    sql: str
    positional: tuple[str, ...] | None  # bind names in order (qmark drivers), None for named
    processors: tuple[Callable[[Any], Any] | None, ...]


class PreparedRead:
    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        columns = list(statement.selected_columns)
        self._names = tuple(str(column.key) for column in columns)
        self._types = tuple(column.type for column in columns)
        self._row = namedtuple("Row", self._names)  # type: ignore[misc]
        self._by_dialect: dict[str, _Compiled] = {}

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first row as a named tuple (attributes as a Core row's), or None."""
        compiled = self._compiled(conn.dialect)
        arguments: Any = tuple(params[name] for name in compiled.positional) if compiled.positional else dict(params)
        cursor = conn.connection.cursor()
        try:
            conn.dispatch.before_cursor_execute(conn, cursor, compiled.sql, arguments, None, False)
            cursor.execute(compiled.sql, arguments)
            raw = cursor.fetchone()
        finally:
            cursor.close()
        if raw is None:
            return None
        return self._row(*(value if p is None else p(value) for p, value in zip(compiled.processors, raw, strict=True)))

    def _compiled(self, dialect: Dialect) -> _Compiled:
        found = self._by_dialect.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            if any(b.type.dialect_impl(dialect).bind_processor(dialect) for b in compiled.binds.values()):
                raise TypeError("PreparedRead takes only parameters the driver accepts as they are")
            processors = tuple(t.dialect_impl(dialect).result_processor(dialect, None) for t in self._types)
            positional = tuple(compiled.positiontup or ()) if compiled.positional else None
            found = _Compiled(str(compiled), positional, processors)
            self._by_dialect[dialect.name] = found
        return found


class _CompiledInsert(NamedTuple):
    sql: str
    positional: bool
    binds: tuple[tuple[str, Callable[[Any], Any] | None], ...]  # name and its value converter, in order


class PreparedInsert:
    """One row into `table`, every column named in `columns` given (no Python-side defaults
    are applied here: a column left out gets the database's default or NULL).

    Measured on client_credentials (bench.inprocess, SQLite): the token and audit inserts
    through `Connection.execute` cost about 60 µs each beyond the driver's own work."""

    def __init__(self, table: Table, columns: tuple[str, ...]) -> None:
        self.columns = columns
        self._column_set = frozenset(columns)
        self.statement = insert(table).values({c: bindparam(c, type_=table.c[c].type) for c in columns})
        self._by_dialect: dict[str, _CompiledInsert] = {}

    def run(self, conn: Connection, values: Mapping[str, Any]) -> None:
        if values.keys() != self._column_set:  # a column left out would be stored as NULL
            raise TypeError(f"PreparedInsert: values for {sorted(values)}, columns {sorted(self.columns)}")
        compiled = self._compiled(conn.dialect)
        converted = {name: values[name] if p is None else p(values[name]) for name, p in compiled.binds}
        arguments: Any = tuple(converted.values()) if compiled.positional else converted
        cursor = conn.connection.cursor()
        try:
            conn.dispatch.before_cursor_execute(conn, cursor, compiled.sql, arguments, None, False)
            cursor.execute(compiled.sql, arguments)
        finally:
            cursor.close()

    def _compiled(self, dialect: Dialect) -> _CompiledInsert:
        found = self._by_dialect.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.binds)
            if sorted(names) != sorted(self.columns):
                raise TypeError(f"PreparedInsert: compiled binds {names} are not the columns {self.columns}")
            binds = tuple(
                (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in names
            )
            found = _CompiledInsert(str(compiled), compiled.positional, binds)
            self._by_dialect[dialect.name] = found
        return found
