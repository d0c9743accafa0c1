"""What one login POST costs the server in hand-offs and database transactions (issue 15):
the web layer makes one call into the flow in the threadpool, and the flow one read (the
stored hash, before Argon2) and one write transaction (lock, claim, counter, audit, the
chain's next step or its end).

Counted, not timed: every hand-off to another thread (Starlette's threadpool, which runs
on anyio's worker threads, and the Argon2 pool's executor) and every BEGIN on the engine,
for a password POST that finishes the chain, one that fails, and a TOTP code POST. Measured
with this file on the code before the flow (c4fda87, the chain in the web layer), on
PostgreSQL: a finishing password POST made 9 hand-offs and 4 transactions, a failing one 5
and 2, a finishing code POST 7 and 3. Now each is 1 and 2."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio.to_thread
import pyotp
import pytest
from sqlalchemy import event, select

from idp.db.models import User
from tests.support.clock import START
from tests.support.rp import AuthRequest, form_value, start
from tests.support.seed import PASSWORD

T0 = START.timestamp()  # the app's clock starts there (tests/support/clock.py)


@dataclass
class Counts:
    hops: int = 0
    transactions: int = 0


@contextmanager
def counted(client, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counts]:  # type: ignore[no-untyped-def]
    counts = Counts()
    original_run_sync = anyio.to_thread.run_sync
    original_executor = asyncio.BaseEventLoop.run_in_executor

    async def run_sync(*args, **kwargs):  # type: ignore[no-untyped-def]
        counts.hops += 1
        return await original_run_sync(*args, **kwargs)

    def run_in_executor(self, executor, func, *args):  # type: ignore[no-untyped-def]
        if executor is not None:  # the Argon2 pool (anyio's own threads are counted above)
            counts.hops += 1
        return original_executor(self, executor, func, *args)

    def began(conn) -> None:  # type: ignore[no-untyped-def]
        counts.transactions += 1

    engine = client.app.state.services.engine
    monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)
    monkeypatch.setattr(asyncio.BaseEventLoop, "run_in_executor", run_in_executor)
    event.listen(engine, "begin", began)
    try:
        yield counts
    finally:
        event.remove(engine, "begin", began)
        monkeypatch.undo()


def login_form(client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    page = client.get(start(client, AuthRequest()).headers["location"])
    return {"csrf_token": form_value(page.text, "csrf_token"), "tx": form_value(page.text, "tx")}


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_password_post_that_finishes_the_chain_is_one_hop_and_two_transactions(client, monkeypatch):
    form = login_form(client)
    with counted(client, monkeypatch) as counts:
        response = client.post(
            "/login", data={**form, "username": "alice", "password": PASSWORD}, follow_redirects=False
        )
    assert response.status_code == 303 and response.headers["location"].startswith("/authorize/resume?")
    assert (counts.hops, counts.transactions) == (1, 2), counts


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_failed_password_post_is_one_hop_and_two_transactions(client, monkeypatch):
    form = login_form(client)
    with counted(client, monkeypatch) as counts:
        response = client.post(
            "/login", data={**form, "username": "alice", "password": "wrong"}, follow_redirects=False
        )
    assert response.status_code == 401
    assert (counts.hops, counts.transactions) == (1, 2), counts


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_code_post_that_finishes_the_chain_is_one_hop_and_two_transactions(client, clock, monkeypatch):
    services = client.app.state.services
    with services.sessions() as db:
        alice = db.scalar(select(User.id).where(User.username == "alice"))
    with services.sessions.begin() as db:
        secret = services.factors.begin_totp(db, alice)
        assert services.factors.confirm_totp(db, alice, pyotp.TOTP(secret).at(T0)).ok
    form = login_form(client)
    code_step = client.post("/login", data={**form, "username": "alice", "password": PASSWORD}, follow_redirects=False)
    page = client.get(code_step.headers["location"])
    clock.advance(30)  # the next step's code: enrolment used this one
    data = {
        "csrf_token": form_value(page.text, "csrf_token"),
        "tx": form_value(page.text, "tx"),
        "code": pyotp.TOTP(secret).at(T0 + 30),
    }
    with counted(client, monkeypatch) as counts:
        response = client.post(code_step.headers["location"].split("?")[0], data=data, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/authorize/resume?")
    assert (counts.hops, counts.transactions) == (1, 2), counts
