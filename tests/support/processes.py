"""Real `idp serve` processes for tests, as an admin runs them: the CLI in subprocesses on
127.0.0.1, PostgreSQL (one fresh schema per use) and Redis (the shared server on a
dedicated DB number, or a private `redis-server` a test can stop and start again), plus a
browserless relying party and browser over httpx that can walk one login across several
processes.

Everything that a test needs but the machine lacks (PostgreSQL, Redis, redis-server) skips
the test with the reason, or fails it under CI (tests/conftest.py's `unavailable`)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.conftest import POSTGRES_SERVER_URL, unavailable
from tests.support.seed import PASSWORD, SHOP_SECRET, _toml_with_inline_jwks

IDP_COMMAND = Path(sys.executable).with_name("idp")
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
DISCOVERY_PATH = "/.well-known/openid-configuration"
SECRET_KEY = "scale-test-master-key-0123456789abcdefghijklmnopqrstuvwxyz"  # fixed, ≥ 32 characters
SHARED_REDIS_URL = "redis://127.0.0.1:6379/13"  # a DB number of our own, flushed at start
SHOP = ("shop", SHOP_SECRET)
SHOP_REDIRECT = "https://shop.example/callback"
RATE_LIMITS_OFF = {
    "IDP_RATE_LIMIT_LOGIN_IP": "off",
    "IDP_RATE_LIMIT_LOGIN_ACCOUNT": "off",
    "IDP_RATE_LIMIT_SITE_IP": "off",
    "IDP_RATE_LIMIT_TOKEN_CLIENT": "off",
    "IDP_RATE_LIMIT_LOGIN_FAILURES_IP": "off",
    "IDP_RATE_LIMIT_PASSKEY_OPTIONS_IP": "off",
    "IDP_RATE_LIMIT_AUTHORIZE_IP": "off",
}
_schema_numbers = itertools.count(1)


# ---- ports and logs ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"
    except OSError:
        return "(no log)"


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group we created; SIGKILL to whatever of it is left."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process.pid, signal.SIGKILL)  # also a worker that outlived its supervisor
    process.wait(timeout=STOP_TIMEOUT_SECONDS)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---- PostgreSQL and the shared Redis ----------------------------------------------------------


def _libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextmanager
def postgres_schema(prefix: str = "idp_scale") -> Iterator[str]:
    """A new, empty schema on the test server, dropped afterwards; yields the database URL
    (search_path set to it) that idp takes in IDP_DATABASE_URL."""
    import psycopg

    server = _libpq_url(POSTGRES_SERVER_URL)
    schema = f"{prefix}_{os.getpid()}_{next(_schema_numbers)}"
    try:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")  # type: ignore[arg-type]
            connection.execute(f"CREATE SCHEMA {schema}")  # type: ignore[arg-type]
    except psycopg.Error as exc:
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_SERVER_URL}: {type(exc).__name__}")
    try:
        yield f"{server}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")  # type: ignore[arg-type]


def shared_redis(url: str = SHARED_REDIS_URL) -> str:
    """The machine's Redis, on a DB number of our own, emptied; returns the URL."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
        client.flushdb()
    except redis.RedisError as exc:
        unavailable(f"Redis is not reachable at {url}: {type(exc).__name__}")
    finally:
        client.close()
    return url


# ---- a private redis-server -----------------------------------------------------------------


class PrivateRedis:
    """`redis-server` on a port of our own, no persistence; stop() and start() again on the
    same port, as an outage and its end."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.workdir = workdir
        self.log_path = workdir / f"redis-{port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        assert not self.running, "redis-server is already running"
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed (apt-get install redis-server)")
        command = [
            binary,
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
        ]
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                command,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_for_ping()

    def stop(self) -> None:
        if self._process is not None:
            _stop_group(self._process)
            self._process = None

    def _wait_for_ping(self) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited with status {self._process.returncode}:\n{log_tail(self.log_path)}"
                    )
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(
            f"redis-server on port {self.port} did not answer PING within 10 s:\n{log_tail(self.log_path)}"
        )


@contextmanager
def private_redis(port: int, workdir: Path | None = None) -> Iterator[PrivateRedis]:
    with tempfile.TemporaryDirectory(prefix="idp-redis-") as scratch:
        server = PrivateRedis(port, workdir or Path(scratch))
        server.start()
        try:
            yield server
        finally:
            server.stop()


# ---- idp ----------------------------------------------------------------------------------------


def idp_environment(
    workdir: Path, *, issuer_port: int, database_url: str, redis_url: str, **extra: str
) -> dict[str, str]:
    """The environment of every idp process of one deployment: nothing IDP_* inherited
    from the caller; the issuer is the first process's localhost URL; rate limits off."""
    workdir.mkdir(parents=True, exist_ok=True)
    clients_file = workdir / "clients.toml"
    clients_file.write_text(_toml_with_inline_jwks(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(
        IDP_ISSUER=f"http://localhost:{issuer_port}",
        IDP_DATABASE_URL=database_url,
        IDP_REDIS_URL=redis_url,
        IDP_SECRET_KEY=SECRET_KEY,
        IDP_DATA_DIR=str(workdir / "data"),
        IDP_CLIENTS_FILE=str(clients_file),
        IDP_ARGON2_TIME_COST="1",
        IDP_ARGON2_MEMORY_KIB="8192",
        **RATE_LIMITS_OFF,
    )
    env.update(extra)
    return env


def run_cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(IDP_COMMAND), *args], env=env, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"`idp {' '.join(args)}` exited with {done.returncode}: {done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout


def prepare_database(env: dict[str, str]) -> None:
    """Migrations, then alice with tests/support/seed.py's password (clients come from
    IDP_CLIENTS_FILE when a process starts)."""
    run_cli(env, "db", "upgrade")
    run_cli(env, "user", "add", "alice", "--email", "alice@example.com", "--password-stdin", stdin=PASSWORD + "\n")


@contextmanager
def prepared_environment(
    workdir: Path, *, issuer_port: int, redis_url: str | None = None, schema_prefix: str = "idp_scale", **extra: str
) -> Iterator[dict[str, str]]:
    """One deployment's environment on a fresh PostgreSQL schema (dropped afterwards),
    migrated and with alice: Redis is `redis_url`, or the shared server's own DB, emptied."""
    redis_url = redis_url or shared_redis()
    with postgres_schema(schema_prefix) as database_url:
        env = idp_environment(workdir, issuer_port=issuer_port, database_url=database_url, redis_url=redis_url, **extra)
        prepare_database(env)
        yield env


@contextmanager
def two_processes(workdir: Path, **extra: str) -> Iterator[tuple[dict[str, str], IdpProcess, IdpProcess]]:
    """Two `idp serve` processes, A and B, on one prepared deployment (A's URL is the issuer)."""
    port_a, port_b = free_port(), free_port()
    with prepared_environment(workdir, issuer_port=port_a, **extra) as env:
        # one after the other: the first start creates the signing key and syncs the clients
        with run_idp(env, port_a, workdir) as a, run_idp(env, port_b, workdir) as b:
            yield env, a, b


@dataclass
class IdpProcess:
    env: dict[str, str]
    port: int
    log_path: Path
    workers: int = 1
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where a browser reaches it: cookies for `localhost` are shared by every port."""
        return f"http://localhost:{self.port}"

    def start(self) -> None:
        command = [
            str(IDP_COMMAND),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        cwd = Path(self.env.get("IDP_DATA_DIR", str(self.log_path.parent))).parent
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            _stop_group(self.process)
            self.process = None

    def log(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        last = "no answer"
        with httpx.Client(timeout=2) as probe:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(
                        f"idp on port {self.port} exited with status {self.process.returncode}:\n{self.log()}",
                        pytrace=False,
                    )
                try:
                    response = probe.get(f"http://127.0.0.1:{self.port}{DISCOVERY_PATH}")
                    if response.status_code == 200:
                        return
                    last = f"status {response.status_code}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                time.sleep(0.1)
        pytest.fail(
            f"idp on port {self.port} not ready after {READY_TIMEOUT_SECONDS:.0f} s ({last}):\n{self.log()}",
            pytrace=False,
        )


@contextmanager
def run_idp(env: dict[str, str], port: int, log_dir: Path | None = None, *, workers: int = 1) -> Iterator[IdpProcess]:
    """`idp serve --workers N` on 127.0.0.1:port with this environment, ready (discovery answers 200)."""
    with tempfile.TemporaryDirectory(prefix="idp-log-") as scratch:
        directory = log_dir or Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        server = IdpProcess(env=env, port=port, log_path=directory / f"idp-{port}.log", workers=workers)
        server.start()
        try:
            yield server
        finally:
            server.stop()


# ---- a scripted relying party and browser --------------------------------------------------------


class _Forms(HTMLParser):
    """The inputs and buttons of each <form> on a page (attribute values unescaped)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(
                {"action": a.get("action", ""), "method": a.get("method", "get").lower(), "hidden": {}, "buttons": []}
            )
        elif self.forms and tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.forms[-1]["hidden"][a["name"]] = a.get("value", "")
        elif self.forms and tag == "button" and a.get("name"):
            self.forms[-1]["buttons"].append((a["name"], a.get("value", "")))


def post_form(html: str, action: str) -> dict[str, Any]:
    parser = _Forms()
    parser.feed(html)
    for form in parser.forms:
        if form["method"] == "post" and form["action"] == action:
            return form
    raise AssertionError(f"no POST form to {action} in the page:\n{html[:2000]}")


def on(base: str, location: str) -> str:
    """A redirect target sent to the process at `base`: relative or absolute, same path."""
    target, server = urlsplit(location), urlsplit(base)
    return urlunsplit((server.scheme, server.netloc, target.path, target.query, ""))


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _expect(response: httpx.Response, status: int, step: str) -> httpx.Response:
    assert response.status_code == status, (
        f"{step}: expected {status}, got {response.status_code} from {response.request.method} {response.request.url}\n"
        f"headers: {dict(response.headers)}\nbody: {response.text[:1500]}"
    )
    return response


def _expect_redirect(response: httpx.Response, path: str, step: str) -> str:
    _expect(response, 303, step)
    location = response.headers.get("location", "")
    assert urlsplit(location).path == path, f"{step}: expected a redirect to {path}, got {location!r}"
    return location


@dataclass
class Authorization:
    """One authorization request of the RP `shop` (code flow, PKCE S256)."""

    scope: str = "openid profile"
    state: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))

    def params(self) -> dict[str, str]:
        challenge = base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=").decode()
        return {
            "response_type": "code",
            "client_id": "shop",
            "redirect_uri": SHOP_REDIRECT,
            "scope": self.scope,
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }


class ScriptedRP:
    """The relying party `shop` and its user's browser: one cookie jar, every process
    reached as http://localhost:PORT so the idp cookies follow the user between them."""

    def __init__(self, issuer: str, timeout: float = 15.0) -> None:
        self.issuer = issuer
        self.browser = httpx.Client(timeout=timeout, follow_redirects=False)  # the user's, with cookies
        self.backend = httpx.Client(timeout=timeout, follow_redirects=False)  # the RP's own, no cookies

    def close(self) -> None:
        self.browser.close()
        self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the browser's steps --

    def authorize(self, base: str, request: Authorization) -> httpx.Response:
        return self.browser.get(f"{base}/authorize", params=request.params())

    def start_login(self, base: str, request: Authorization) -> str:
        """GET /authorize; returns the /login?tx=… it redirects to."""
        return _expect_redirect(self.authorize(base, request), "/login", "GET /authorize")

    def login_form(self, base: str, login_location: str) -> dict[str, str]:
        """GET the login page; every hidden input of its form (csrf_token, tx)."""
        page = _expect(self.browser.get(on(base, login_location)), 200, "GET /login")
        assert "idp_csrf" in self.browser.cookies, f"GET /login set no idp_csrf cookie: {page.headers}"
        hidden: dict[str, str] = post_form(page.text, "/login")["hidden"]
        assert "csrf_token" in hidden and "tx" in hidden, f"login form without csrf_token/tx: {hidden}"
        return hidden

    def post_login(self, base: str, hidden: dict[str, str], password: str = PASSWORD) -> httpx.Response:
        return self.browser.post(f"{base}/login", data={**hidden, "username": "alice", "password": password})

    def sign_in(self, base: str, login_location: str) -> str:
        """The login form, filled and posted; returns the /authorize/resume?tx=… it leads to."""
        hidden = self.login_form(base, login_location)
        return _expect_redirect(self.post_login(base, hidden), "/authorize/resume", "POST /login")

    def resume_and_consent(self, base: str, resume_location: str) -> str:
        """/authorize/resume, then Allow on the consent page unless this user's consent is
        remembered already; returns the callback URL."""
        response = _expect(self.browser.get(on(base, resume_location)), 303, "GET /authorize/resume")
        consent = response.headers["location"]
        if consent.startswith(SHOP_REDIRECT + "?"):
            return consent
        assert urlsplit(consent).path == "/consent", f"GET /authorize/resume: redirect to {consent!r}"
        page = _expect(self.browser.get(on(base, consent)), 200, "GET /consent")
        form = post_form(page.text, "/consent")
        assert ("decision", "allow") in form["buttons"], f"consent form without an Allow button: {form}"
        response = self.browser.post(f"{base}/consent", data={**form["hidden"], "decision": "allow"})
        callback = _expect(response, 303, "POST /consent").headers["location"]
        assert callback.startswith(SHOP_REDIRECT + "?"), f"POST /consent: redirect to {callback!r}"
        return callback

    # -- the RP's back channel --

    def code_from(self, callback: str, request: Authorization) -> str:
        params = query_of(callback)
        assert params.get("state") == request.state, f"state mismatch in {callback}"
        assert params.get("iss") == self.issuer, f"iss {params.get('iss')!r} in {callback}, expected {self.issuer}"
        assert "code" in params, f"no code in {callback}"
        return params["code"]

    def redeem(self, base: str, request: Authorization, code: str) -> dict[str, Any]:
        response = self.backend.post(
            f"{base}/token",
            auth=SHOP,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": SHOP_REDIRECT,
                "code_verifier": request.verifier,
            },
        )
        tokens: dict[str, Any] = _expect(response, 200, "POST /token (authorization_code)").json()
        assert {"access_token", "id_token", "refresh_token"} <= tokens.keys(), f"token response: {tokens}"
        claims = self.verify_id_token(base, tokens["id_token"])
        assert claims["nonce"] == request.nonce and claims["aud"] == "shop", claims
        return tokens

    def refresh(self, base: str, refresh_token: str) -> httpx.Response:
        return self.backend.post(
            f"{base}/token", auth=SHOP, data={"grant_type": "refresh_token", "refresh_token": refresh_token}
        )

    def client_credentials(self, base: str, scope: str = "profile") -> httpx.Response:
        return self.backend.post(f"{base}/token", auth=SHOP, data={"grant_type": "client_credentials", "scope": scope})

    def userinfo(self, base: str, access_token: str) -> httpx.Response:
        return self.backend.get(f"{base}/userinfo", headers={"Authorization": f"Bearer {access_token}"})

    def verify_id_token(self, base: str, id_token: str) -> dict[str, Any]:
        keys = KeySet.import_key_set(_expect(self.backend.get(f"{base}/jwks"), 200, "GET /jwks").json())
        claims = dict(jwt.decode(id_token, keys, algorithms=["RS256"]).claims)
        assert claims["iss"] == self.issuer, claims
        assert claims["exp"] > time.time(), claims
        return claims

    # -- all of it --

    def full_login(
        self, *, authorize_on: str, login_on: str, resume_on: str, token_on: str, request: Authorization | None = None
    ) -> dict[str, Any]:
        """The whole code flow with the steps on the processes named; returns the tokens."""
        request = request or Authorization()
        self.browser.cookies.clear()  # a browser without an idp session: the login form is shown
        login = self.start_login(authorize_on, request)
        resume = self.sign_in(login_on, login)
        callback = self.resume_and_consent(resume_on, resume)
        return self.redeem(token_on, request, self.code_from(callback, request))
