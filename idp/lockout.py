"""Account lockout (predecessor fix F-02, improved): one failure counter per account, shared
by the password, TOTP and backup-code steps.

- Real accounts keep their counter in SQL (users.failed_logins / failures_since /
  locked_until): it is durable, and counting is one conditional UPDATE, so concurrent
  failures from any number of processes can never record more than the limit, and a
  success (also one conditional UPDATE) is refused once the lock has been taken, whatever
  the order the requests of a burst finish their Argon2 work in.
- Unknown account names get phantom counters in the state store with the same window,
  limit and lock, so the remaining-attempt warnings are the same for a name that does not
  exist as for one that does (the predecessor's warnings enumerated accounts).
- Failures count within a window of `seconds` from the first one; the N-th failure in the
  window locks the account for `seconds`. A lock answers like a bad credential (401, same
  page); the caller decides the words, this module only counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Row, Table, bindparam, case, or_, select, update
from sqlalchemy.orm import Session

from idp.clock import clock_of
from idp.db.models import User
from idp.state.store import StateStore

WARN_AT_REMAINING = 3  # the page warns from this many attempts left (F-02)


@dataclass(frozen=True)
class FailureRecord:
    remaining: int  # attempts left before the lock; 0 once locked
    locked_now: bool  # this very failure took the lock
    was_locked: bool  # the account was already locked: nothing was counted

    @property
    def warn(self) -> bool:
        return self.locked_now or (not self.was_locked and 0 < self.remaining <= WARN_AT_REMAINING)


_users = cast(Table, User.__table__)
_restart = or_(_users.c.failures_since.is_(None), _users.c.failures_since <= bindparam("window_start"))
_new_count = case((_restart, 1), else_=_users.c.failed_logins + 1)
_not_locked = or_(_users.c.locked_until.is_(None), _users.c.locked_until <= bindparam("now"))
_COUNT_FAILURE = (
    update(_users)
    .where(_users.c.id == bindparam("user_id"), _not_locked)
    .values(
        failed_logins=_new_count,
        failures_since=case((_restart, bindparam("now")), else_=_users.c.failures_since),
        locked_until=case((_new_count >= bindparam("limit"), bindparam("until")), else_=None),
    )
    .returning(_users.c.failed_logins, _users.c.locked_until)
)
_CLEAR_ON_SUCCESS = (
    update(_users)
    .where(_users.c.id == bindparam("user_id"), _not_locked)
    .values(failed_logins=0, failures_since=None, locked_until=None)
)
_UNLOCK = (
    update(_users)
    .where(_users.c.id == bindparam("user_id"))
    .values(failed_logins=0, failures_since=None, locked_until=None)
)


class Lockout:
    def __init__(self, store: StateStore, *, attempts: int, seconds: int) -> None:
        self.store = store
        self.attempts = attempts
        self.seconds = seconds

    # ---- real accounts (SQL) ----------------------------------------------------------

    def record_failure(self, db: Session, user_id: int) -> FailureRecord:
        """Counts one failure in the caller's transaction (commit it promptly: the UPDATE
        holds the user's row lock on PostgreSQL until then)."""
        now = clock_of(db).now()
        row: Row | None = (
            db.connection()
            .execute(
                _COUNT_FAILURE,
                {  # type: ignore[type-arg]
                    "user_id": user_id,
                    "now": now,
                    "window_start": now - timedelta(seconds=self.seconds),
                    "limit": self.attempts,
                    "until": now + timedelta(seconds=self.seconds),
                },
            )
            .first()
        )
        if row is None:  # locked (or gone): nothing counted
            return FailureRecord(remaining=0, locked_now=False, was_locked=True)
        locked_now = row.locked_until is not None
        return FailureRecord(
            remaining=max(self.attempts - row.failed_logins, 0), locked_now=locked_now, was_locked=False
        )

    def record_success(self, db: Session, user_id: int) -> bool:
        """Resets the counter; False when the account is locked (the success must be refused)."""
        result = db.connection().execute(_CLEAR_ON_SUCCESS, {"user_id": user_id, "now": clock_of(db).now()})
        return result.rowcount == 1

    @staticmethod
    def is_locked(db: Session, user_id: int) -> bool:
        """For steps that continue a chain (the code step): the password's success did not
        reset the counter, so code guesses keep counting toward the same lock."""
        until = db.scalar(select(User.locked_until).where(User.id == user_id))
        return until is not None and until > clock_of(db).now()

    @staticmethod
    def unlock(db: Session, user_id: int) -> None:
        db.connection().execute(_UNLOCK, {"user_id": user_id})

    @staticmethod
    def locked_until(user: User, now: datetime) -> datetime | None:
        return user.locked_until if user.locked_until is not None and user.locked_until > now else None

    # ---- unknown names (state store) --------------------------------------------------

    def record_phantom_failure(self, name_digest: str) -> FailureRecord:
        """The same arithmetic for a name with no account, so its pages match a real one's."""
        locked_key, count_key = f"lockout:{name_digest}:locked", f"lockout:{name_digest}:count"
        if self.store.get(locked_key) is not None:
            return FailureRecord(remaining=0, locked_now=False, was_locked=True)
        count = self.store.incr(count_key, ttl_seconds=self.seconds)  # window from the first failure
        if count < self.attempts:
            return FailureRecord(remaining=self.attempts - count, locked_now=False, was_locked=False)
        took_lock = self.store.add(locked_key, b"1", ttl_seconds=self.seconds)
        self.store.delete(count_key)
        return FailureRecord(remaining=0, locked_now=took_lock, was_locked=not took_lock)


def failure_words(failure: FailureRecord, words: str, *, lock_seconds: int) -> str:
    """`words` (what was wrong) and the counter's arithmetic: the same sentences for
    unknown, wrong and locked, on the login steps and on /account's forms alike."""
    minutes = max(1, lock_seconds // 60)
    if failure.locked_now:
        return f"{words} Too many failed attempts: sign-in for this account is paused for {minutes} minutes."
    if failure.warn:
        left = f"{failure.remaining} attempt{'s' if failure.remaining != 1 else ''}"
        return f"{words} {left} left before sign-in is paused for {minutes} minutes."
    return words
