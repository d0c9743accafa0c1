"""Time in one place: aware UTC datetimes, and epoch seconds for JWT claims."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def epoch(at: datetime) -> int:
    return int(at.timestamp())
