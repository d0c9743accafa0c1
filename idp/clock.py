"""Time in one place: aware UTC datetimes, and epoch seconds for JWT claims."""
from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def epoch(at: datetime) -> int:
    return int(at.timestamp())
