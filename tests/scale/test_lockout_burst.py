"""The parallel-request lockout bypass, tried for real: fifty wrong passwords for one account
sent at once to two `idp serve` processes (one PostgreSQL, one Redis), and the right
password sent while they are still in flight. The counter stops at the limit, the lock is
taken once, and the right password is refused once the limit has been reached."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select

from idp.db.engine import make_engine
from idp.db.models import AuditEvent, User
from tests.support.processes import (
    IdpProcess,
    two_processes,
)
from tests.support.seed import PASSWORD

pytestmark = [pytest.mark.postgres, pytest.mark.multiprocess]

LIMIT = 5
WRONG = 50


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[IdpProcess, IdpProcess, str]]:
    with two_processes(
        tmp_path_factory.mktemp("lockout-burst"), schema_prefix="idp_burst", IDP_LOCKOUT_ATTEMPTS=str(LIMIT)
    ) as (env, a, b):
        yield a, b, env["IDP_DATABASE_URL"]


async def _form(client: httpx.AsyncClient, base: str) -> dict[str, str]:
    page = await client.get(f"{base}/login")
    assert page.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, "no csrf_token on the login page"
    return {"csrf_token": token.group(1), "username": "alice"}


async def _burst(a: IdpProcess, b: IdpProcess) -> tuple[list[httpx.Response], httpx.Response]:
    async with httpx.AsyncClient(timeout=60, follow_redirects=False) as client:
        form = await _form(client, a.url)  # the CSRF cookie and token are valid on every process
        wrong = [
            asyncio.create_task(client.post(f"{(a, b)[i % 2].url}/login", data={**form, "password": f"wrong {i}"}))
            for i in range(WRONG)
        ]
        # once the limit's worth of failures has been answered (each is recorded before its
        # answer), the right password goes in while the rest of the burst is still running
        while sum(task.done() for task in wrong) < LIMIT:
            await asyncio.sleep(0.002)
        in_flight = sum(not task.done() for task in wrong)
        right = await client.post(f"{b.url}/login", data={**form, "password": PASSWORD})
        responses = await asyncio.gather(*wrong)
    assert in_flight > 0, "the burst finished before the right password was sent: not a race"
    return responses, right


def test_fifty_parallel_failures_over_two_processes_lock_once_and_refuse_the_right_password(deployment):
    a, b, database_url = deployment
    responses, right = asyncio.run(_burst(a, b))

    assert sorted({r.status_code for r in responses}) == [401], {r.status_code for r in responses}
    assert right.status_code == 401, f"right password after the limit: {right.status_code}"
    assert "idp_session" not in right.headers.get("set-cookie", "")
    assert "The username or password is incorrect." in right.text

    engine = make_engine(database_url)
    try:
        with engine.connect() as db:
            failed_logins, locked_until = db.execute(
                select(User.failed_logins, User.locked_until).where(User.username == "alice")
            ).one()
            counted = db.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.kind == "login.password.failed", AuditEvent.outcome == "failure")
            )
            locks = db.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "account.locked"))
    finally:
        engine.dispose()
    assert failed_logins == LIMIT and locked_until is not None
    assert counted == LIMIT  # every other failure found the lock and was not counted
    assert locks == 1
