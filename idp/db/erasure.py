"""Erasing what a unit of work deletes, not only unlinking it. SQLite keeps deleted rows'
bytes in free space and old page images in its write-ahead log: `zero_freed_space` makes
this unit of work overwrite what it frees (PRAGMA secure_delete), and `truncate_log`,
after the commit, copies the log into the database file and empties it. PostgreSQL keeps
dead row versions until VACUUM, which neither can force from inside a transaction."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker


def zero_freed_space(db: Session) -> None:
    """Before the unit of work's first write: what it deletes or overwrites is zeroed."""
    if db.get_bind().dialect.name == "sqlite":
        db.connection().exec_driver_sql("PRAGMA secure_delete=ON")


def truncate_log(sessions: sessionmaker[Session]) -> bool:
    """After the commit: the write-ahead log checkpointed and truncated. False when a reader
    (a running `idp serve`) still needs old pages: SQLite then overwrites them later, at a
    checkpoint of its own."""
    with sessions() as db:
        if db.get_bind().dialect.name != "sqlite":
            return True
        busy, _, _ = db.execute(text("PRAGMA wal_checkpoint(TRUNCATE)")).one()
        return not busy
