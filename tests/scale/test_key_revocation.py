"""Scheduled rotation and revocation across processes: two `idp serve` processes (A, B) on one
PostgreSQL schema with IDP_KEY_ROTATION_DAYS=1, nothing said to either of them.

- The keys are made two days old (their created_at moved back in the database: another
  process's clock cannot be moved). Within REFRESH_SECONDS + 2 s one successor of the RS256
  key (the only algorithm the clients use) is in the table, not one per process, and both
  publish it; it does not sign yet; a few more ticks of both processes add no other key.
- `idp keys revoke OLD_KID`, run on its own: within REFRESH_SECONDS + 2 s neither process
  publishes the old RS256 key, and both sign with the successor (brought forward)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from sqlalchemy import text

from idp.app import REFRESH_SECONDS
from idp.db.engine import make_engine
from tests.support.processes import IdpProcess, ScriptedRP, run_cli, two_processes

pytestmark = [pytest.mark.postgres, pytest.mark.multiprocess]

PICKUP_BOUND_SECONDS = REFRESH_SECONDS + 2.0


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], IdpProcess, IdpProcess]]:
    with two_processes(tmp_path_factory.mktemp("key-schedule"), IDP_KEY_ROTATION_DAYS="1") as running:
        yield running


def sql(env: dict[str, str], statement: str) -> list[Any]:
    engine = make_engine(env["IDP_DATABASE_URL"], pool_size=1)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement))
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def rs256_kids(http: httpx.Client, process: IdpProcess) -> set[str]:
    return {key["kid"] for key in http.get(f"{process.url}/jwks").json()["keys"] if key["alg"] == "RS256"}


def header_kid(token: str) -> str:
    return str(pyjwt.get_unverified_header(token)["kid"])


def within(seconds: float, condition: Callable[[], bool]) -> float:
    """How long `condition` took to hold (polled); fails past `seconds`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started <= seconds, f"not within {seconds:.1f} s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_one_scheduled_successor_for_two_processes_then_a_revocation_reaches_both(deployment) -> None:
    env, a, b = deployment
    with ScriptedRP(issuer=env["IDP_ISSUER"]) as rp, httpx.Client(timeout=10) as http:
        [old_kid] = rs256_kids(http, a)
        tokens = rp.full_login(authorize_on=a.url, login_on=b.url, resume_on=a.url, token_on=b.url)
        assert header_kid(tokens["id_token"]) == old_kid

        # -- due: both processes find it on their next tick; the table gets one successor
        sql(env, "UPDATE signing_keys SET created_at = created_at - interval '2 days'")
        within(PICKUP_BOUND_SECONDS, lambda: len(rs256_kids(http, a)) == 2 and len(rs256_kids(http, b)) == 2)
        time.sleep(2 * REFRESH_SECONDS)  # more ticks of both: nothing more
        rows = sql(env, "SELECT alg, kid, replaces_kid FROM signing_keys ORDER BY id")
        successors = [(alg, kid) for alg, kid, replaces in rows if replaces is not None]
        assert [alg for alg, _ in successors] == ["RS256"], rows
        [(_, new_kid)] = successors
        assert sorted(alg for alg, _, _ in rows) == ["ES256", "Ed25519", "RS256", "RS256"], rows
        assert sql(env, "SELECT count(*) FROM audit_events WHERE kind = 'key.rotated'") == [(1,)]
        refreshed = rp.refresh(b.url, tokens["refresh_token"]).json()
        assert header_kid(refreshed["id_token"]) == old_kid  # published first, signing later

        # -- the old key leaked: revoked by the CLI on its own, neither process is told
        output = run_cli(env, "keys", "revoke", old_kid)
        assert re.search(r"relying parties must refetch their key sets", output), output
        for process in (a, b):
            within(PICKUP_BOUND_SECONDS, lambda p=process: rs256_kids(http, p) == {new_kid})  # type: ignore[misc]
        refresh_token = refreshed["refresh_token"]
        for process in (a, b):
            answer = rp.refresh(process.url, refresh_token).json()
            assert header_kid(answer["id_token"]) == new_kid
            assert rp.verify_id_token(process.url, answer["id_token"])["aud"] == "shop"
            refresh_token = answer["refresh_token"]
