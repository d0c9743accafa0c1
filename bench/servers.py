"""Starting and stopping the servers under test (idp, the node-oidc-provider peer), always
on 127.0.0.1, and reading their CPU time and memory from /proc over the process tree."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench import seed

REPO = Path(__file__).resolve().parent.parent
PEER_DIR = REPO / "bench" / "peers" / "oidc-provider"
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DISCOVERY_PATH = "/.well-known/openid-configuration"


class ServerError(RuntimeError):
    """A server did not start or a set-up command failed; the message says which and why."""


@dataclass
class Server:
    name: str  # "idp" or "peer"
    port: int
    pid: int
    log_path: Path
    paths: dict[str, str] = field(default_factory=dict)  # endpoint name -> path, from discovery
    idle_rss_bytes: list[int] = field(default_factory=list)  # per process, right after start-up

    @property
    def host_header(self) -> str:
        return f"localhost:{self.port}"  # the issuer's host; traffic goes to 127.0.0.1

    def pids(self) -> list[int]:
        return process_tree(self.pid)


# ---- /proc ---------------------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """root and every descendant (uvicorn's supervisor and its workers, for example)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _stat_fields(int(entry))
            if parent is not None:
                children.setdefault(int(parent[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo and len(tree) < 10_000:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes (every thread included)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


@dataclass(frozen=True)
class Usage:
    cpu_percent: float  # 100 = one core busy for the whole window
    rss_bytes: int  # over the process tree, at the end of the window


class Meter:
    """The server's CPU time over a measured window, its memory at the end."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self._cpu = self._started = 0.0

    def start(self) -> None:
        self._cpu, self._started = cpu_seconds(self._server.pids()), time.monotonic()

    def stop(self) -> Usage:
        pids = self._server.pids()
        elapsed = max(time.monotonic() - self._started, 1e-9)
        return Usage(100 * (cpu_seconds(pids) - self._cpu) / elapsed, sum(rss_bytes(pid) for pid in pids))


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, …, utime(11), stime(12)]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


# ---- idp --------------------------------------------------------------------------------------


@contextmanager
def start_idp(
    workdir: Path, backend: str, workers: int, cpus: Sequence[int], access_tokens: str = "opaque"
) -> Iterator[Server]:
    """A fresh idp: new database (SQLite file, or a new PostgreSQL schema dropped afterwards),
    the benchmark client and user, then `idp serve` with `workers` processes."""
    workdir.mkdir(parents=True)
    port = free_port()
    schema = f"bench_{os.getpid()}_{workers}" if backend == "postgres" else ""
    env = _idp_environment(workdir, backend, port, schema, access_tokens)
    if schema:
        _postgres(f"CREATE SCHEMA {schema}")
    try:
        _run_cli(env, ["db", "upgrade"])
        _run_cli(
            env,
            ["user", "add", seed.USERNAME, "--email", "alice@example.com", "--password-stdin"],
            stdin=seed.PASSWORD + "\n",
        )
        command = [
            str(Path(sys.executable).parent / "idp"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
        with _running(
            "idp", command, env=env, cwd=workdir, port=port, cpus=cpus, processes=workers + (workers > 1)
        ) as server:
            yield server
    finally:
        if schema:
            _postgres(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _idp_environment(workdir: Path, backend: str, port: int, schema: str, access_tokens: str) -> dict[str, str]:
    clients_file = workdir / "clients.toml"
    jwt = 'access_token_format = "jwt"\n' if access_tokens == "jwt" else ""
    clients_file.write_text(seed.CLIENTS_TOML + jwt)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDP_")}  # nothing from the caller's set-up
    env.update(
        IDP_ISSUER=f"http://localhost:{port}",
        IDP_DATA_DIR=str(workdir / "data"),
        IDP_CLIENTS_FILE=str(clients_file),
        IDP_DATABASE_URL=(
            f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
            if backend == "postgres"
            else f"sqlite:///{workdir / 'idp.db'}"
        ),
        IDP_REDIS_URL=REDIS_URL if backend == "postgres" else "",
        # Every limit is checked (its cost is part of each request) but set above what one
        # load generator on one address can reach: the bench measures throughput, not 429s.
        IDP_RATE_LIMIT_SITE_IP="10000000/minute",
        IDP_RATE_LIMIT_TOKEN_CLIENT="10000000/minute",
        IDP_RATE_LIMIT_LOGIN_IP="10000000/minute",
        IDP_RATE_LIMIT_LOGIN_ACCOUNT="10000000/minute",
        IDP_RATE_LIMIT_AUTHORIZE_IP="10000000/minute",
        # Every virtual user signs in as the one seeded user: with the default cap of 10
        # sessions per user, the 11th browser's login would end the 1st one's session, whose
        # next "existing session" flow would then be a password login (Argon2), and so on.
        # Sixteen browsers stand for sixteen users here, so the cap must not bite.
        IDP_SESSIONS_PER_USER="1000",
    )
    return env


def _run_cli(env: dict[str, str], args: list[str], stdin: str | None = None) -> None:
    command = [str(Path(sys.executable).parent / "idp"), *args]
    done = subprocess.run(command, env=env, input=stdin, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise ServerError(f"`idp {' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}")


def _postgres(statement: str) -> None:
    import psycopg  # idp's own PostgreSQL driver

    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=10) as connection:
        connection.execute(statement)  # type: ignore[arg-type]  # the schema name is ours, not input


# ---- the stack floor ----------------------------------------------------------------------


@contextmanager
def start_floor(workdir: Path, cpus: Sequence[int], mode: str = "stack") -> Iterator[Server]:
    """bench/floor.py (FLOOR_MODE `mode`) on uvicorn with the loop, parser and flags `idp serve` uses."""
    workdir.mkdir(parents=True)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.floor:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--no-server-header",
    ]
    with _running(
        f"floor ({mode})",
        command,
        env=dict(os.environ) | {"FLOOR_MODE": mode},
        cwd=REPO,
        port=port,
        cpus=cpus,
        processes=1,
        log_dir=workdir,
    ) as server:
        yield server


# ---- the peer ---------------------------------------------------------------------------------


def install_peer() -> None:
    """npm ci (or npm install without a lock file), once: node_modules is kept."""
    if (PEER_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise ServerError("npm not found: install Node.js 20+, or run with --no-peer")
    command = [npm, "ci" if (PEER_DIR / "package-lock.json").exists() else "install", "--no-audit", "--no-fund"]
    done = subprocess.run(command, cwd=PEER_DIR, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise ServerError(f"`{' '.join(command[1:])}` in {PEER_DIR} failed: {done.stderr.strip()[-500:]}")


@contextmanager
def start_peer(workdir: Path, cpus: Sequence[int], *, redis_url: str = "") -> Iterator[Server]:
    """node-oidc-provider: its in-memory adapter, or with `redis_url` its Redis adapter
    (bench/peers/oidc-provider/redis_adapter.mjs: every session, code, token and grant in
    Redis), named "peer" and "peer-redis" in the results."""
    workdir.mkdir(parents=True)
    port = free_port()
    env = dict(os.environ, PORT=str(port), HOST="127.0.0.1", ISSUER=f"http://localhost:{port}", NODE_ENV="production")
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    node = shutil.which("node") or "node"
    name = "peer-redis" if redis_url else "peer"
    with _running(
        name, [node, "server.mjs"], env=env, cwd=PEER_DIR, port=port, cpus=cpus, processes=1, log_dir=workdir
    ) as server:
        yield server


# ---- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _running(
    name: str,
    command: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    port: int,
    cpus: Sequence[int],
    processes: int,
    log_dir: Path | None = None,
) -> Iterator[Server]:
    log_path = (log_dir or cwd) / f"{name}.log"
    if cpus and shutil.which("taskset"):
        command = ["taskset", "-c", ",".join(map(str, cpus)), *command]  # taskset execs: same pid
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name=name, port=port, pid=process.pid, log_path=log_path)
    try:
        _wait_ready(server, process, processes)
        yield server
    finally:
        _stop(process)


def _wait_ready(server: Server, process: subprocess.Popen[bytes], processes: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{server.name} exited with status {process.returncode}: {_tail(server.log_path)}")
        discovery = _fetch_discovery(server)
        if discovery is not None and len(server.pids()) >= processes:
            server.paths = _endpoint_paths(discovery)
            time.sleep(1.0 if processes == 1 else 3.0)  # let every worker finish importing
            server.idle_rss_bytes = [rss_bytes(pid) for pid in server.pids()]
            return
        time.sleep(0.2)
    raise ServerError(f"{server.name} not ready after {READY_TIMEOUT_SECONDS:.0f} s: {_tail(server.log_path)}")


def _fetch_discovery(server: Server) -> dict[str, object] | None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("GET", DISCOVERY_PATH, headers={"Host": server.host_header})
        response = connection.getresponse()
        return json.loads(response.read()) if response.status == 200 else None  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None
    finally:
        connection.close()


def _endpoint_paths(discovery: dict[str, object]) -> dict[str, str]:
    keys = {
        "authorize": "authorization_endpoint",
        "token": "token_endpoint",
        "userinfo": "userinfo_endpoint",
        "introspect": "introspection_endpoint",
        "jwks": "jwks_uri",
    }
    paths = {name: urlsplit(str(discovery[key])).path for name, key in keys.items()}
    paths["discovery"] = DISCOVERY_PATH
    return paths


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group we created; then SIGKILL to whatever of it is left."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(process.pid, signal.SIGKILL)  # a worker that outlived its supervisor
    process.wait(timeout=STOP_TIMEOUT_SECONDS)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
