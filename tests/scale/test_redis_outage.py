"""Redis down: what needs the state store (parking a login, the login form of a parked
login) answers 503 with an HTML page and Retry-After, never a 500; what does not need it
(discovery, JWKS, client_credentials, userinfo) keeps serving. Redis back on the same
port: logins work again, without restarting idp."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import (
    DISCOVERY_PATH,
    Authorization,
    IdpProcess,
    PrivateRedis,
    ScriptedRP,
    free_port,
    on,
    prepared_environment,
    private_redis,
    run_idp,
)

pytestmark = [pytest.mark.postgres, pytest.mark.multiprocess]

RECOVERY_SECONDS = 10.0


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[IdpProcess, PrivateRedis]]:
    port = free_port()
    with (
        private_redis(free_port(), tmp_path) as redis_server,
        prepared_environment(tmp_path, issuer_port=port, redis_url=redis_server.url) as env,
    ):
        with run_idp(env, port, tmp_path) as idp:
            yield idp, redis_server


def _unavailable_problem(step: str, response: httpx.Response) -> str | None:
    """What is wrong with this response as a 'state store down' answer, or None."""
    problems = []
    if response.status_code != 503:
        problems.append(f"status {response.status_code}, expected 503")
    if not response.headers.get("content-type", "").startswith("text/html"):
        problems.append(f"content-type {response.headers.get('content-type')!r}, expected text/html")
    if "temporarily unavailable" not in response.text.lower():
        problems.append("the page does not say 'temporarily unavailable'")
    if "retry-after" not in response.headers:
        problems.append("no Retry-After header")
    if not problems:
        return None
    return f"{step}: {'; '.join(problems)}\n    body: {' '.join(response.text.split())[:400]}"


def _ok_problem(step: str, response: httpx.Response) -> str | None:
    if response.status_code == 200:
        return None
    return f"{step}: status {response.status_code}, expected 200\n    body: {' '.join(response.text.split())[:400]}"


def test_a_redis_outage_refuses_logins_cleanly_and_spares_everything_else(
    deployment: tuple[IdpProcess, PrivateRedis],
) -> None:
    idp, redis_server = deployment
    base = idp.url
    problems: list[str | None] = []
    with ScriptedRP(issuer=base) as rp:
        # Redis up: a full login works
        tokens = rp.full_login(authorize_on=base, login_on=base, resume_on=base, token_on=base)

        # a login parked while Redis was up, its form shown
        rp.browser.cookies.clear()
        parked_login = rp.start_login(base, Authorization())
        parked_form = rp.login_form(base, parked_login)

        redis_server.stop()
        try:
            problems.append(_unavailable_problem("GET /authorize", rp.authorize(base, Authorization())))
            problems.append(_unavailable_problem("GET /login?tx=…", rp.browser.get(on(base, parked_login))))
            problems.append(_unavailable_problem("POST /login", rp.post_login(base, parked_form)))

            problems.append(_ok_problem("GET discovery", rp.backend.get(f"{base}{DISCOVERY_PATH}")))
            problems.append(_ok_problem("GET /jwks", rp.backend.get(f"{base}/jwks")))
            problems.append(_ok_problem("POST /token client_credentials", rp.client_credentials(base, "profile")))
            problems.append(
                _ok_problem("GET /userinfo (token from before the outage)", rp.userinfo(base, tokens["access_token"]))
            )
        finally:
            redis_server.start()

        # Redis back on the same port: a full login works again, same idp process
        problems.append(_recovered_problem(rp, base, tokens["id_token"]))

    assert idp.process is not None and idp.process.poll() is None, f"idp exited:\n{idp.log()}"
    found = [p for p in problems if p]
    assert not found, "\n".join(found) + f"\n--- idp log tail ---\n{idp.log(40)}"


def _recovered_problem(rp: ScriptedRP, base: str, earlier_id_token: str) -> str | None:
    deadline = time.monotonic() + RECOVERY_SECONDS
    while True:
        rp.browser.cookies.clear()
        probe = rp.authorize(base, Authorization())
        if probe.status_code == 303:
            break
        if time.monotonic() > deadline:
            return (
                f"after Redis came back, GET /authorize still answers {probe.status_code} after "
                f"{RECOVERY_SECONDS:.0f} s\n    body: {' '.join(probe.text.split())[:400]}"
            )
        time.sleep(0.5)
    try:
        again = rp.full_login(authorize_on=base, login_on=base, resume_on=base, token_on=base)
        assert rp.verify_id_token(base, again["id_token"])["sub"] == rp.verify_id_token(base, earlier_id_token)["sub"]
    except AssertionError as exc:
        return f"full login after Redis came back: {exc}"
    return None
