"""Rows read for a test's assertions, detached from their unit of work (so they can be read
after it closed, and no later query of the app sees them in an identity map)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session, sessionmaker


def detached(sessions: sessionmaker[Session], statement: Select[Any]) -> list[Any]:
    with sessions() as db:
        rows = list(db.scalars(statement))
        db.expunge_all()
        return rows
