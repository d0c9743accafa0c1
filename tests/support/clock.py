"""A clock that moves only when a test moves it (idp/clock.py's Clock): the `clock` fixture
hands one to the app, and a test advances it instead of sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# A fixed instant in whole seconds (as auth_time and iat are), a TOTP step boundary plus 20 s,
# and far from the wall clock's today: a time read that bypasses the clock shows up as a failure.
START = datetime(2031, 1, 1, 0, 0, 20, tzinfo=UTC)


class ManualClock:
    def __init__(self, start: datetime = START) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def time(self) -> float:
        return self._now.timestamp()

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def set(self, at: datetime | float) -> None:
        """To `at`: an aware datetime, or epoch seconds (a TOTP test's T0)."""
        self._now = at if isinstance(at, datetime) else datetime.fromtimestamp(at, UTC)
