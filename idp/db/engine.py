"""Engine and unit-of-work factory for SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from idp.clock import SESSION_INFO_KEY, Clock


def normalize_database_url(url: str) -> str:
    """postgresql:// means psycopg 3 here (the driver we ship), not psycopg2."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, pool_size: int = 20) -> Engine:
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # One connection, handed from thread to thread: SQLite has one writer at a time, and
    # several connections contending for it sleep in SQLite's busy handler (measured: p99
    # over a second at 16 concurrent token requests). Queueing on the pool is far cheaper.
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=QueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=30,
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers run beside the one writer; foreign keys are off by default in SQLite.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        cursor.close()

    return engine


def make_sessionmaker(engine: Engine, clock: Clock) -> sessionmaker[Session]:
    """Units of work that carry `clock` (idp/clock.py): `clock_of(db)` for the code that runs
    in them, and the execution options for the columns' default timestamps."""
    return sessionmaker(
        engine.execution_options(**{SESSION_INFO_KEY: clock}),
        expire_on_commit=False,
        info={SESSION_INFO_KEY: clock},
    )
