"""Hot read queries run straight on the driver: a Core SELECT compiled once per dialect,
its rows converted by SQLAlchemy's own result processors, without SQLAlchemy's
per-execution machinery (execution context, cursor result, row proxies).

Measured on userinfo (bench.inprocess, SQLite): that machinery was a fifth of the request,
455 -> 358 µs with the token-and-user query run here. Only for single-row lookups on the
hottest endpoints; everything else goes through `Connection.execute`.

The engine's `before_cursor_execute` listeners still see each statement (the statement
counts in tests/oidc/test_token_statement_counts.py, any tracing an operator adds)."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from sqlalchemy import Connection, Select
from sqlalchemy.engine import Dialect


class _Compiled(NamedTuple):
    sql: str
    positional: tuple[str, ...] | None  # bind names in order (qmark drivers), None for named
    processors: tuple[Callable[[Any], Any] | None, ...]
    row: Callable[..., Any]


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
        return compiled.row(
            *(value if p is None else p(value) for p, value in zip(compiled.processors, raw, strict=True))
        )

    def _compiled(self, dialect: Dialect) -> _Compiled:
        found = self._by_dialect.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            if any(b.type.dialect_impl(dialect).bind_processor(dialect) for b in compiled.binds.values()):
                raise TypeError("PreparedRead takes only parameters the driver accepts as they are")
            processors = tuple(t.dialect_impl(dialect).result_processor(dialect, None) for t in self._types)
            positional = tuple(compiled.positiontup or ()) if compiled.positional else None
            found = _Compiled(str(compiled), positional, processors, self._row)
            self._by_dialect[dialect.name] = found
        return found
