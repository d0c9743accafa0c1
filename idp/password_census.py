"""The census of stored password-hash parameters: {parameter set: number of users}, which
idp/security/passwords.py draws an unknown name's dummy parameters from. It lives here
because idp/security does not touch the database.

Taken at start-up and then every CENSUS_REFRESH_SECONDS in the background, never on a
login's path (a login never waits for this query, and a refresh runs no Argon2). Ten
minutes: the census only drifts as outdated hashes are rehashed at their users' sign-ins
(one count each) or as users are added, which moves the odds by a hair per interval while
a change of parameters takes weeks to work through; parameters themselves change only
with a restart, which takes a fresh census. The query reads one column of every user, so
a shorter interval would cost each process a table scan for no measurable gain.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from idp.db.models import User
from idp.security.passwords import HashParameters, PasswordHashing

log = logging.getLogger("idp")

CENSUS_REFRESH_SECONDS = 600.0
# Any valid Argon2 prefix fits in 52 characters (m and t up to 2^32 - 1, p up to 2^24 - 1):
# the salt and digest need not leave the database.
_PREFIX_CHARS = 64


def take_census(db: Session) -> dict[HashParameters, int]:
    """{parameter set: number of password hashes that have it}; hashes that are not Argon2
    (another scheme, or corrupt) are not counted."""
    prefixes = select(func.substr(User.password_hash, 1, _PREFIX_CHARS)).where(User.password_hash.is_not(None))
    counts: Counter[HashParameters] = Counter()
    for prefix in db.scalars(prefixes.execution_options(yield_per=5000)):
        if (parameters := HashParameters.of(prefix)) is not None:
            counts[parameters] += 1
    return dict(counts)


def refresh_census(sessions: sessionmaker[Session], hashing: PasswordHashing) -> None:
    with sessions() as db:
        hashing.set_census(take_census(db))


async def keep_census_fresh(
    sessions: sessionmaker[Session], hashing: PasswordHashing, every: float = CENSUS_REFRESH_SECONDS
) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(refresh_census, sessions, hashing)
        except Exception:  # a database blip must not stop the refresher
            log.exception("taking the census of password-hash parameters failed; keeping the previous one")
