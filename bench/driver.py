"""The flow driver: virtual browsers that run complete authorization-code flows (PKCE S256,
through idp's hosted login form or the peer's interactions) and refresh-token chains.

Runs as its own process, so that its CPU is counted apart from the server's:

    python -m bench.driver '{"target": {…}, "flow": "refresh", "users": 16, "duration": 10, "warmup": 1}'

It sets up every virtual user (sessions, first refresh tokens), warms up, prints READY, waits
for GO on stdin, runs the measured phase and prints one JSON line: completed flows, errors,
latencies and its own CPU time (from /proc/self/stat)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit

from bench import seed
from bench.http1 import (
    Connection,
    CookieJar,
    HTTPFailure,
    Response,
    basic_authorization,
    form_body,
)
from bench.servers import cpu_seconds

MAX_REDIRECTS = 12
MAX_ERRORS = 10_000
SETUP_TIMEOUT_SECONDS = 120.0
FINISH_GRACE_SECONDS = 30.0  # in-flight flows may finish after the deadline, not forever
ERROR_PAUSE_SECONDS = 0.01  # a failing server is not hammered in a tight loop
FAILURES = (HTTPFailure, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, KeyError)
_HIDDEN_INPUT = re.compile(r'name="(csrf_token|tx)" value="([^"]*)"')


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    host_header: str
    paths: dict[str, str]


class Browser:
    """One virtual user agent: a keep-alive connection and a cookie jar."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.connection = Connection(target.port, target.host_header)
        self.jar = CookieJar()

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Response:
        response = await self.connection.request("GET", path, headers={**self.jar.header(), **(headers or {})})
        self.jar.update(response)
        return response

    async def post_form(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None) -> Response:
        all_headers = {**self.jar.header(), "Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        response = await self.connection.request("POST", path, headers=all_headers, body=form_body(fields))
        self.jar.update(response)
        return response


# ---- protocol steps ----------------------------------------------------------------------


async def authorize(browser: Browser) -> tuple[str, str]:
    """GET /authorize with PKCE S256, then login, consent or interactions as they come,
    until the redirect to the client. Returns (code, code_verifier)."""
    verifier = secrets.token_urlsafe(32)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    state = secrets.token_urlsafe(12)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": seed.CLIENT_ID,
            "redirect_uri": seed.REDIRECT_URI,
            "scope": seed.SCOPE,
            "state": state,
            "nonce": secrets.token_urlsafe(12),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    path = f"{browser.target.paths['authorize']}?{query}"
    response = await browser.get(path)
    for _ in range(MAX_REDIRECTS):
        location = _redirect_location(response, path)
        if location.startswith(seed.REDIRECT_URI):
            return _code_from_callback(location, state), verifier
        path = _local_path(location, browser.target)
        response = await _visit(browser, path)
    raise HTTPFailure(f"more than {MAX_REDIRECTS} redirects")


async def _visit(browser: Browser, path: str) -> Response:
    if path.startswith("/login"):
        return await _submit_page(browser, path, "/login", {"username": seed.USERNAME, "password": seed.PASSWORD})
    if path.startswith("/consent"):
        return await _submit_page(browser, path, "/consent", {"decision": "allow"})
    return await browser.get(path)  # /authorize/resume, the peer's /interaction/… and /auth/…


async def _submit_page(browser: Browser, page_path: str, action: str, fields: dict[str, str]) -> Response:
    page = await browser.get(page_path)
    if page.status != 200:
        raise HTTPFailure(f"GET {page_path.split('?')[0]}: {page.status}")
    hidden = dict(_HIDDEN_INPUT.findall(page.body.decode()))
    return await browser.post_form(action, {**hidden, **fields})


def _redirect_location(response: Response, path: str) -> str:
    location = response.header("location")
    if response.status not in (302, 303) or location is None:
        raise HTTPFailure(f"{path.split('?')[0]}: {response.status} {response.body[:120]!r}")
    return location


def _local_path(location: str, target: Target) -> str:
    parts = urlsplit(location)
    if parts.netloc and parts.netloc not in (target.host_header, f"127.0.0.1:{target.port}"):
        raise HTTPFailure(f"redirect off the server under test: {parts.netloc}")
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _code_from_callback(location: str, state: str) -> str:
    query = {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}
    if query.get("state") != state or "code" not in query:
        raise HTTPFailure(f"callback without code: {query.get('error', '')} {query.get('error_description', '')}")
    return query["code"]


async def redeem(browser: Browser, code: str, verifier: str) -> dict[str, Any]:
    return await _token_request(
        browser,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": seed.REDIRECT_URI,
            "code_verifier": verifier,
        },
    )


async def refresh(browser: Browser, refresh_token: str) -> dict[str, Any]:
    return await _token_request(browser, {"grant_type": "refresh_token", "refresh_token": refresh_token})


async def _token_request(browser: Browser, fields: dict[str, str]) -> dict[str, Any]:
    authorization = basic_authorization(seed.CLIENT_ID, seed.CLIENT_SECRET)
    response = await browser.connection.request(
        "POST",
        browser.target.paths["token"],
        body=form_body(fields),
        headers={"Authorization": authorization, "Content-Type": "application/x-www-form-urlencoded"},
    )
    if response.status != 200:
        raise HTTPFailure(f"token {fields['grant_type']}: {response.status} {response.body[:160]!r}")
    return json.loads(response.body)  # type: ignore[no-any-return]


async def mint_tokens(target: Target) -> dict[str, Any]:
    """One complete code flow in a fresh browser (it also gives consent the first time)."""
    browser = Browser(target)
    try:
        code, verifier = await authorize(browser)
        return await redeem(browser, code, verifier)
    finally:
        browser.connection.close()


# ---- flows: what one virtual user repeats ----------------------------------------------------


class Flow(Protocol):
    ready: bool

    async def setup(self, browser: Browser) -> None: ...
    async def once(self, browser: Browser) -> None: ...


class PasswordLogin:
    """A fresh browser each time: authorize → login form (Argon2id) → code → tokens."""

    ready = True

    async def setup(self, browser: Browser) -> None:
        pass

    async def once(self, browser: Browser) -> None:
        browser.jar = CookieJar()
        code, verifier = await authorize(browser)
        await redeem(browser, code, verifier)


class SessionLogin:
    """One login in set-up, then every flow rides the IdP session: authorize → code → tokens."""

    ready = False

    async def setup(self, browser: Browser) -> None:
        browser.jar = CookieJar()
        await redeem(browser, *await authorize(browser))
        self.ready = True

    async def once(self, browser: Browser) -> None:
        code, verifier = await authorize(browser)
        await redeem(browser, code, verifier)


class RefreshChain:
    """One code flow in set-up, then refresh after refresh, each with the token just rotated in."""

    ready = False

    def __init__(self) -> None:
        self.refresh_token = ""

    async def setup(self, browser: Browser) -> None:
        browser.jar = CookieJar()
        self.refresh_token = (await redeem(browser, *await authorize(browser)))["refresh_token"]
        self.ready = True

    async def once(self, browser: Browser) -> None:
        self.ready = False  # a failed refresh leaves the chain broken: start a new one
        self.refresh_token = (await refresh(browser, self.refresh_token))["refresh_token"]
        self.ready = True


FLOWS: dict[str, type[PasswordLogin] | type[SessionLogin] | type[RefreshChain]] = {
    "code_flow_password": PasswordLogin,
    "code_flow_session": SessionLogin,
    "refresh": RefreshChain,
}


# ---- the load loop ----------------------------------------------------------------------------


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])


async def run_users(users: list[tuple[Browser, Flow]], seconds: float, tally: Tally) -> float:
    """Every user repeats its flow until the deadline; returns the elapsed wall time."""
    started = time.monotonic()
    deadline = started + seconds
    tasks = [asyncio.create_task(_user_loop(browser, flow, deadline, tally)) for browser, flow in users]
    _, pending = await asyncio.wait(tasks, timeout=seconds + FINISH_GRACE_SECONDS)
    for task in pending:
        task.cancel()
    return time.monotonic() - started


async def _user_loop(browser: Browser, flow: Flow, deadline: float, tally: Tally) -> None:
    while time.monotonic() < deadline and tally.errors < MAX_ERRORS:
        began = time.perf_counter()
        try:
            if not flow.ready:
                await flow.setup(browser)
                continue
            await flow.once(browser)
        except FAILURES as exc:
            tally.failed(exc)
            browser.connection.close()
            await asyncio.sleep(ERROR_PAUSE_SECONDS)
            continue
        tally.latencies_ms.append(round((time.perf_counter() - began) * 1000, 3))


async def _set_up(users: list[tuple[Browser, Flow]]) -> Tally:
    tally = Tally()

    async def one(browser: Browser, flow: Flow) -> None:
        try:
            await flow.setup(browser)
        except FAILURES as exc:
            tally.failed(exc)  # the user retries set-up in its loop

    await asyncio.wait_for(asyncio.gather(*(one(b, f) for b, f in users)), SETUP_TIMEOUT_SECONDS)
    return tally


async def drive(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target(**spec["target"])
    users: list[tuple[Browser, Flow]] = [(Browser(target), FLOWS[spec["flow"]]()) for _ in range(spec["users"])]
    setup = await _set_up(users)
    if spec.get("warmup", 0) > 0:
        await run_users(users, spec["warmup"], Tally())
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":  # blocks the loop on purpose: nothing else runs
        raise SystemExit("driver: no GO on stdin")
    cpu_before, tally = cpu_seconds([os.getpid()]), Tally()
    elapsed = await run_users(users, spec["duration"], tally)
    cpu_used = cpu_seconds([os.getpid()]) - cpu_before
    for browser, _ in users:
        browser.connection.close()
    return {
        "completed": len(tally.latencies_ms),
        "errors": tally.errors,
        "error_samples": tally.error_samples,
        "setup_errors": setup.errors,
        "setup_error_samples": setup.error_samples,
        "elapsed": elapsed,
        "cpu_seconds": cpu_used,
        "latencies_ms": tally.latencies_ms,
    }


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    try:
        import uvloop

        result = uvloop.run(drive(spec))
    except ImportError:
        result = asyncio.run(drive(spec))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
