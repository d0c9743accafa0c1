"""Time in one place: a Clock gives aware UTC datetimes, and epoch seconds for JWT claims.

The composition root (idp/app.py; the CLI's commands alike) builds one Clock and hands it on,
so a test moves time by advancing its clock instead of sleeping. The rule for who reads which:

- Code that works in a unit of work reads the clock its database session carries:
  `clock_of(db)`. make_sessionmaker (idp/db/engine.py) puts it in every Session's `info`,
  and the columns' default timestamps (idp/db/models.py) read the same clock from the
  engine's execution options. This is how the login chain, lockout, second factors,
  passkeys, IdP sessions, the OIDC grants and the audit trail get their time.
- Code without a session (the web layer's log lines, back-channel logout tokens, the
  userinfo endpoint's bare connection) takes the clock from the composition root:
  `services.clock`, or a `now` argument.
- Left on the process's own time, on purpose: durations (time.perf_counter, monotonic),
  sleeps and polling, the rate-limit windows (the `limits` library keeps its own time), the
  state store's TTLs (idp/state/memory.py has its own clock argument; Redis its server's),
  and the private_key_jwt replay marker, whose lifetime must cover the window joserfc
  checked the assertion's `exp` in, against the wall clock (idp/oidc/server.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

SESSION_INFO_KEY = "clock"  # in Session.info and in the engine's execution options


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC."""
        ...

    def time(self) -> float:
        """Epoch seconds: the same instant as now()."""
        ...


class SystemClock:
    """The wall clock: the only place idp reads it."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return time.time()


def clock_of(db: Session) -> Clock:
    """The clock of this unit of work (make_sessionmaker put it there)."""
    return cast(Clock, db.info[SESSION_INFO_KEY])


def epoch(at: datetime) -> int:
    return int(at.timestamp())
