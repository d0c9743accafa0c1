"""deploy/nginx.conf in front of a real idp (predecessor fix F-03).

Debian's nginx runs THIS file, changed by text substitution only (ports, upstream
addresses, the issuer host name, certificate, pid, log and temp paths, the worker user), in
front of `idp serve` started like an admin would, with IDP_TRUSTED_PROXIES=127.0.0.1/32
(nginx's address). A client on another loopback address (127.0.0.7; Linux routes all of
127/8 to lo) sends a spoofed X-Forwarded-For and fails a password login: the audit row must
name 127.0.0.7, neither the spoofed address nor nginx. The same request straight to idp
must be judged by its peer address too, and plain http must only redirect.

No nginx here: the tests skip, or fail under CI (tests/conftest.py's `unavailable`)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.conftest import unavailable
from tests.support.nginx import (
    CONFIG,
    Rule,
    adapted_config,
    local_rules,
    nginx_binary,
    self_signed,
)

pytestmark = pytest.mark.nginx

IDP_COMMAND = Path(sys.executable).with_name("idp")
CLIENT_IP = "127.0.0.7"  # the real client: not nginx (127.0.0.1), not a trusted proxy
SPOOFED_IP = "203.0.113.66"  # what the client claims to be (TEST-NET-3)
USERNAME, PASSWORD = "alice", "correct horse battery staple 42"
FAILED_KIND = "login.password.failed"
PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12"]  # F-03: the only set_real_ip_from lines
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
DISCOVERY_PATH = "/.well-known/openid-configuration"

# Directives that must reach the running nginx exactly as written in deploy/nginx.conf.
SECURITY_DIRECTIVES = {
    "set_real_ip_from",
    "real_ip_header",
    "real_ip_recursive",
    "proxy_set_header",
    "proxy_http_version",
    "proxy_next_upstream",
    "proxy_next_upstream_tries",
    "proxy_hide_header",
    "add_header",
    "proxy_pass",
    "limit_req_zone",
    "limit_req",
    "limit_req_status",
    "limit_conn_zone",
    "limit_conn",
    "client_max_body_size",
    "ssl_protocols",
    "ssl_ciphers",
    "ssl_session_tickets",
    "ssl_reject_handshake",
    "server_tokens",
    "keepalive",
}


# ---- the configuration ---------------------------------------------------------------------


def directives(config: str) -> list[tuple[str, str]]:
    """(name, arguments) of every directive and block, comments stripped, in file order."""
    found = []
    uncommented = "\n".join(line.split("#", 1)[0] for line in config.splitlines())
    for statement in re.findall(r"""((?:[^;{}"']|"[^"]*"|'[^']*')*)[;{}]""", uncommented):
        words = statement.split(None, 1)
        if words:
            found.append((words[0], " ".join(words[1].split()) if len(words) > 1 else ""))
    return found


def security_lines(config: str) -> list[tuple[str, str]]:
    return [d for d in directives(config) if d[0] in SECURITY_DIRECTIVES]


def test_config_keeps_f03_real_ip_rule() -> None:
    found = directives(CONFIG.read_text())
    assert [args for name, args in found if name == "set_real_ip_from"] == PRIVATE_RANGES
    assert ("real_ip_header", "X-Forwarded-For") in found
    assert ("real_ip_recursive", "on") in found
    assert ("proxy_set_header", "X-Forwarded-For $proxy_add_x_forwarded_for") in found
    # not http_503: a Redis outage (503 from every idp) must not mark every upstream down
    assert ("proxy_next_upstream", "error timeout http_502") in found
    assert not any("non_idempotent" in args for _, args in found)
    for name, args in found:
        if name == "set_real_ip_from":  # belt and braces: no catch-all hides behind another spelling
            network = ipaddress.ip_network(args, strict=False)
            assert network.is_private and network.prefixlen >= 8, args


@dataclass(frozen=True)
class Ports:
    http: int
    https: int
    idp: int


def substitutions(work: Path, ports: Ports, ipv6: bool) -> list[Rule]:
    """(pattern, replacement, how many times the pattern must occur in deploy/nginx.conf)."""
    v6 = (lambda port: f"listen [::1]:{port}") if ipv6 else (lambda port: f"# listen [::1]:{port} (no IPv6 here)")
    return [
        *local_rules(work),
        (r"\b10\.0\.0\.1[12]:8000\b", f"127.0.0.1:{ports.idp}", 4),  # both upstreams: this one idp
        (r"listen 80\b", f"listen 127.0.0.1:{ports.http}", 2),
        (r"listen \[::\]:80\b", v6(ports.http), 2),
        (r"listen 443\b", f"listen 127.0.0.1:{ports.https}", 2),
        (r"listen \[::\]:443\b", v6(ports.https), 2),
    ]


def config_for_test(work: Path, ports: Ports, ipv6: bool) -> str:
    production = CONFIG.read_text()
    rules = substitutions(work, ports, ipv6)
    text = adapted_config(rules)
    # Only substitutions, only of those values: line for line the same file, and every
    # security-relevant directive identical to production.
    for before, after in zip(production.splitlines(), text.splitlines(), strict=True):
        assert before == after or any(re.search(p, before, flags=re.MULTILINE) for p, _, _ in rules), before
    assert security_lines(text) == security_lines(production)
    found = directives(text)
    assert [args for name, args in found if name == "set_real_ip_from"] == PRIVATE_RANGES
    assert not re.search(r"(0\.0\.0\.0/0|::/0|192\.168\.)", "\n".join(args for _, args in found))
    return text


# ---- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def loopback_works(address: str, family: socket.AddressFamily) -> bool:
    try:
        with socket.socket(family) as probe:
            probe.bind((address, 0))
        return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], log_path: Path, ready: Callable[[], bool]) -> Iterator[None]:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not ready():
            if process.poll() is not None:
                pytest.fail(f"`{' '.join(command)}` exited with {process.returncode}:\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"`{' '.join(command)}` not ready after {READY_TIMEOUT_SECONDS:.0f} s:\n{log_tail(log_path)}"
                )
            time.sleep(0.1)
        yield
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group we created (nginx's master and workers, uvicorn), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
            return


def answers(url: str, verify: ssl.SSLContext | bool = False) -> bool:
    try:
        return httpx.get(url, verify=verify, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class Stack:
    ports: Ports
    database: Path
    tls: ssl.SSLContext  # trusts the test certificate only

    @property
    def https_url(self) -> str:
        return f"https://localhost:{self.ports.https}"

    @property
    def idp_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.idp}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    nginx = nginx_binary()
    if not loopback_works(CLIENT_IP, socket.AF_INET):
        unavailable(f"cannot bind a socket to {CLIENT_IP} (127.0.0.0/8 is not all on lo here)")
    work = tmp_path_factory.mktemp("nginx")
    for sub in ("logs", "temp", "var"):
        (work / sub).mkdir()
    ports = Ports(http=free_port(), https=free_port(), idp=free_port())
    cert = self_signed(work / "tls")
    tls = ssl.create_default_context(cafile=str(cert))
    database = work / "idp.db"

    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}
    env.update(
        IDP_ISSUER=f"https://localhost:{ports.https}",
        IDP_DATABASE_URL=f"sqlite:///{database}",
        IDP_DATA_DIR=str(work / "var"),
        IDP_SECRET_KEY=secrets.token_hex(20),  # 40 characters
        IDP_TRUSTED_PROXIES="127.0.0.1/32",  # nginx, and nothing else
        IDP_ARGON2_TIME_COST="1",
        IDP_ARGON2_MEMORY_KIB="8192",
    )
    for args, stdin in ((["db", "upgrade"], None), (["user", "add", USERNAME, "--password-stdin"], PASSWORD + "\n")):
        done = subprocess.run(
            [str(IDP_COMMAND), *args], env=env, input=stdin, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"`idp {' '.join(args)}` failed: {done.stderr or done.stdout}"

    config = work / "nginx.conf"
    config.write_text(config_for_test(work, ports, ipv6=loopback_works("::1", socket.AF_INET6)))
    nginx_command = [nginx, "-p", f"{work}/", "-c", str(config)]
    checked = subprocess.run([*nginx_command, "-t"], capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 0, f"nginx -t refused the configuration:\n{checked.stderr}"

    idp_command = [str(IDP_COMMAND), "serve", "--host", "127.0.0.1", "--port", str(ports.idp)]
    stack = Stack(ports=ports, database=database, tls=tls)
    with (
        running(idp_command, env, work / "idp.log", lambda: answers(stack.idp_url + DISCOVERY_PATH)),
        running(
            [*nginx_command, "-g", "daemon off;"],
            dict(os.environ),
            work / "nginx.log",
            lambda: answers(stack.https_url + DISCOVERY_PATH, tls),
        ),
    ):
        yield stack


# ---- the client --------------------------------------------------------------------------------


def client(stack: Stack) -> httpx.Client:
    """A client whose connections leave from CLIENT_IP."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=CLIENT_IP, verify=stack.tls), timeout=10)


class _CsrfField(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.value: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        fields = dict(attrs)
        if tag == "input" and fields.get("name") == "csrf_token":
            self.value = fields.get("value")


def failed_login(http: httpx.Client, base_url: str) -> httpx.Response:
    """GET /login, then POST it with a wrong password; both with a spoofed X-Forwarded-For.
    The CSRF cookie is sent by hand: it is Secure (https issuer), and one path is plain http."""
    spoof = {"x-forwarded-for": SPOOFED_IP}
    page = http.get(f"{base_url}/login", headers=spoof)
    assert page.status_code == 200, page.text[:500]
    parser = _CsrfField()
    parser.feed(page.text)
    # the issuer is https, so the cookie carries the __Host- prefix
    cookie = next(
        (m.group(1) for h in page.headers.get_list("set-cookie") if (m := re.match(r"__Host-idp_csrf=([^;]+)", h))),
        None,
    )
    assert parser.value and cookie, "no CSRF field or __Host-idp_csrf cookie on the login page"
    http.cookies.clear()
    return http.post(
        f"{base_url}/login",
        headers={**spoof, "cookie": f"__Host-idp_csrf={cookie}"},
        data={"username": USERNAME, "password": "wrong password, wrong password", "csrf_token": parser.value},
    )


def last_audit_id(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return int(db.execute("SELECT coalesce(max(id), 0) FROM audit_events").fetchone()[0])


def failure_ips_since(database: Path, after_id: int) -> list[str | None]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT ip FROM audit_events WHERE kind = ? AND id > ? ORDER BY id", (FAILED_KIND, after_id))
        return [row[0] for row in rows]


# ---- the checks ----------------------------------------------------------------------------------


def test_through_nginx_the_audit_names_the_real_client_not_the_spoofed_header(stack: Stack) -> None:
    before = last_audit_id(stack.database)
    with client(stack) as http:
        response = failed_login(http, stack.https_url)
    assert response.status_code == 401, response.text[:500]
    # nginx replaced idp's HSTS header with its own: exactly one reaches the browser.
    assert response.headers.get_list("strict-transport-security") == ["max-age=63072000; includeSubDomains"]
    assert failure_ips_since(stack.database, before) == [CLIENT_IP]  # not SPOOFED_IP, not nginx's 127.0.0.1


def test_straight_to_idp_an_untrusted_peer_cannot_name_its_address(stack: Stack) -> None:
    before = last_audit_id(stack.database)
    with client(stack) as http:
        response = failed_login(http, stack.idp_url)
    assert response.status_code == 401, response.text[:500]
    assert failure_ips_since(stack.database, before) == [CLIENT_IP]  # X-Forwarded-For ignored


def test_plain_http_only_redirects_to_https(stack: Stack) -> None:
    with client(stack) as http:
        response = http.get(f"http://127.0.0.1:{stack.ports.http}/login?tx=abc", headers={"host": "localhost"})
        assert response.status_code == 301
        assert response.headers["location"] == "https://localhost/login?tx=abc"
        # Unknown host name: nginx closes the connection without an answer (444), which
        # the client sees as an empty reply or a reset.
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            http.get(f"http://127.0.0.1:{stack.ports.http}/login", headers={"host": "evil.example"})


def test_tls_for_another_host_name_is_refused(stack: Stack) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", stack.ports.https), timeout=5, source_address=(CLIENT_IP, 0)) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname="evil.example").close()
    with socket.create_connection(("127.0.0.1", stack.ports.https), timeout=5, source_address=(CLIENT_IP, 0)) as raw:
        context.wrap_socket(raw, server_hostname="localhost").close()  # the issuer's name: accepted


def test_metrics_are_not_served_through_nginx(stack: Stack) -> None:
    with client(stack) as http:
        through = http.get(f"{stack.https_url}/metrics")
    assert through.status_code == 404
    assert "idp_http_requests" not in through.text
    # ... while idp itself serves them to a loopback scraper (here CLIENT_IP, in 127/8, would
    # pass idp's own check: nginx's refusal is what stops it)
    with httpx.Client(timeout=10) as local:
        scraped = local.get(f"{stack.idp_url}/metrics")
    assert scraped.status_code == 200 and "idp_http_requests_total" in scraped.text


def test_idp_keeps_nginx_request_id_so_both_logs_share_it(stack: Stack, tmp_path: Path) -> None:
    with client(stack) as http:
        response = http.get(f"{stack.https_url}{DISCOVERY_PATH}", headers={"x-request-id": "client-chosen-id-1234"})
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id  # nginx's $request_id, not the client's
    logs = stack.database.parent / "logs" / "access.log"
    deadline = time.monotonic() + 5
    while f"rid={request_id}" not in logs.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"rid={request_id}" in logs.read_text(errors="replace")
    idp_log = stack.database.parent / "idp.log"  # idp's JSON request line carries the same id
    while f'"request_id":"{request_id}"' not in idp_log.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f'"request_id":"{request_id}"' in idp_log.read_text(errors="replace")
