"""Fixtures for end-to-end tests: idp run as an admin runs it (the `idp` CLI in
subprocesses, a fresh SQLite database per test), a relying party's callback server, and
Debian's Chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ALICE_PASSWORD = "correct horse battery staple"
IDP_COMMAND = Path(sys.executable).with_name("idp")


# --- relying party callback -------------------------------------------------------------


@dataclass
class Callback:
    """The RP's redirect_uri (`url`, path /callback) and its post-logout page (path
    /logged-out): a real HTTP server that records each query either receives."""

    url: str
    queries: list[str] = field(default_factory=list)
    logged_out: list[str] = field(default_factory=list)
    posted: list[str] = field(default_factory=list)  # form bodies POSTed to /callback (response_mode=form_post)

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def logged_out_url(self) -> str:
        return f"{self.origin}/logged-out"


def _callback_handler(callback: Callback) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            parts = urlsplit(self.path)
            if parts.path == "/callback":
                callback.queries.append(parts.query)
                body = b"<!doctype html><title>Shop</title><p>Signed in.</p>"
            elif parts.path == "/logged-out":
                callback.logged_out.append(parts.query)
                body = b"<!doctype html><title>Shop</title><p>Signed out.</p>"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            if urlsplit(self.path).path != "/callback":
                self.send_error(404)
                return
            length = int(self.headers.get("content-length") or 0)
            callback.posted.append(self.rfile.read(min(length, 65536)).decode("ascii", "replace"))
            body = b"<!doctype html><title>Shop</title><p>Signed in (form post).</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def rp_callback() -> Iterator[Callback]:
    callback = Callback(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _callback_handler(callback))
    callback.url = f"http://localhost:{server.server_address[1]}/callback"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield callback
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# --- the identity provider ---------------------------------------------------------------


@dataclass(frozen=True)
class RunningIdp:
    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str
    username: str
    password: str
    log: Path
    post_logout_redirect_uri: str  # shop's, on the RP's origin
    first_party_client_id: str  # "portal": first_party = true (no consent page), same redirect_uri
    first_party_client_secret: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _idp(env: dict[str, str], *args: str, stdin: str | None = None) -> None:
    result = subprocess.run([str(IDP_COMMAND), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"`idp {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}"


def _clients_toml(secret: str, redirect_uri: str, post_logout_redirect_uri: str, first_party_secret: str) -> str:
    return f"""\
[[clients]]
client_id = "shop"
client_name = "Shop"
client_secret = "{secret}"
redirect_uris = ["{redirect_uri}"]
post_logout_redirect_uris = ["{post_logout_redirect_uri}"]
grant_types = ["authorization_code", "refresh_token"]
token_endpoint_auth_method = "client_secret_basic"
scope = "openid profile email offline_access"

[[clients]]
client_id = "portal"
client_name = "Portal"
client_secret = "{first_party_secret}"
redirect_uris = ["{redirect_uri}"]
grant_types = ["authorization_code", "refresh_token"]
token_endpoint_auth_method = "client_secret_basic"
scope = "openid profile email offline_access"
first_party = true
"""


def _wait_until_serving(issuer: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"`idp serve` exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"`idp serve` did not answer discovery within 20 s:\n{log.read_text()}")


@pytest.fixture
def idp(tmp_path: Path, rp_callback: Callback) -> Iterator[RunningIdp]:
    """A fresh idp: migrated database, user alice, clients shop and portal (first-party, same
    redirect_uri), `idp serve` on a free port."""
    port = _free_port()
    issuer = f"http://localhost:{port}"
    secret, first_party_secret = secrets.token_urlsafe(36), secrets.token_urlsafe(36)  # 48 characters
    clients_file = tmp_path / "clients.toml"
    clients_file.write_text(_clients_toml(secret, rp_callback.url, rp_callback.logged_out_url, first_party_secret))
    env = {
        **os.environ,
        "IDP_DATABASE_URL": f"sqlite:///{tmp_path}/idp.db",
        "IDP_DATA_DIR": str(tmp_path / "var"),
        "IDP_ISSUER": issuer,
        "IDP_ARGON2_TIME_COST": "1",
        "IDP_ARGON2_MEMORY_KIB": "8192",
        "IDP_CLIENTS_FILE": str(clients_file),
    }
    env.pop("IDP_CONFIG", None)
    env.pop("IDP_REDIS_URL", None)
    _idp(env, "db", "upgrade")
    _idp(
        env,
        "user",
        "add",
        "alice",
        "--email",
        "alice@example.com",
        "--name",
        "Alice Liddell",
        "--password-stdin",
        stdin=ALICE_PASSWORD + "\n",
    )

    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(IDP_COMMAND), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_serving(issuer, process, log)
        yield RunningIdp(
            issuer,
            "shop",
            secret,
            rp_callback.url,
            "alice",
            ALICE_PASSWORD,
            log,
            post_logout_redirect_uri=rp_callback.logged_out_url,
            first_party_client_id="portal",
            first_party_client_secret=first_party_secret,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")  # Playwright's sync API holds an event loop: stop it before other modules run
def browser():  # type: ignore[no-untyped-def]
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        message = f"{CHROMIUM} is missing: install Debian's chromium package (never `playwright install`)"
        if os.environ.get("CI"):
            pytest.fail(message + " [CI is set: the browser test must run, not skip]")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    """A fresh browser profile (no cookies) per test."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


# --- the admin's command line against a running idp ----------------------------------------


@pytest.fixture
def idp_cli(idp: RunningIdp, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Runs `idp <args>` as the admin would, on the database and data directory of the `idp`
    fixture's server (the same settings it was started with); fails the test on an error."""
    env = {
        **os.environ,
        "IDP_DATABASE_URL": f"sqlite:///{tmp_path}/idp.db",
        "IDP_DATA_DIR": str(tmp_path / "var"),
        "IDP_ISSUER": idp.issuer,
        "IDP_ARGON2_TIME_COST": "1",
        "IDP_ARGON2_MEMORY_KIB": "8192",
        "IDP_CLIENTS_FILE": str(tmp_path / "clients.toml"),
    }
    env.pop("IDP_CONFIG", None)
    env.pop("IDP_REDIS_URL", None)

    def run(*args: str, stdin: str | None = None) -> None:
        _idp(env, *args, stdin=stdin)

    return run
