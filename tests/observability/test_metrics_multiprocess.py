"""/metrics under `idp serve --workers 2` (PostgreSQL + Redis, real processes): each worker
keeps its values in files under PROMETHEUS_MULTIPROC_DIR and /metrics sums them
(idp/observability/metrics.py, multiprocess.py).

- With an admin's PROMETHEUS_MULTIPROC_DIR: 200 GET /jwks on fresh connections, spread over
  both workers (the directory holds counter files of two worker pids, each with some of the
  requests), add up to exactly 200 in one scrape; the files a previous run left there are
  deleted at start, so their counts are not added; the directory itself is left in place.
- Without it: idp makes a private directory (0700, under TMPDIR), the count is exact again,
  the directory is removed when idp stops, and each response's X-Request-Id is the
  request_id of its JSON line in the process's log."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from tests.observability.support import Samples
from tests.support.processes import (
    IdpProcess,
    free_port,
    prepared_environment,
    run_idp,
    shared_redis,
)

pytestmark = [pytest.mark.postgres, pytest.mark.multiprocess]

REDIS_URL = "redis://127.0.0.1:6379/12"  # a DB number of its own: other process tests use 13
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REQUESTS = 200
STALE_COUNT = 1000
STALE_ENDPOINT = "/stale-from-the-previous-run"

# A previous run's worker, as prometheus-client leaves it: counter_<pid>.db and
# histogram_<pid>.db with 1000 GET /jwks and a series of an endpoint this run never serves.
STALE_WRITER = f"""
from idp.observability.metrics import request_counters
for _ in range({STALE_COUNT}):
    request_counters.observe("/jwks", "GET", 200, 0.001)
request_counters.observe({STALE_ENDPOINT!r}, "GET", 200, 0.001)
"""


@dataclass
class Run:
    server: IdpProcess
    worker_pids: set[int]
    request_ids: list[str] = field(default_factory=list)
    scrape: Samples | None = None
    files: list[str] = field(default_factory=list)
    jwks_by_pid: dict[int, float] = field(default_factory=dict)
    directory_mode: int = 0


@contextmanager
def deployment(workdir: Path, port: int, **extra: str) -> Iterator[dict[str, str]]:
    """A fresh schema with alice, and the environment of an idp on it (no inherited
    PROMETHEUS_MULTIPROC_DIR unless `extra` names one)."""
    with prepared_environment(
        workdir, issuer_port=port, redis_url=shared_redis(REDIS_URL), schema_prefix="idp_metrics"
    ) as env:
        env.pop(MULTIPROC_ENV, None)
        env.update(extra)
        yield env


def worker_pids(server: IdpProcess, count: int) -> set[int]:
    """The supervisor's worker processes (multiprocessing's spawn_main; not its resource
    tracker), once `count` of them run."""
    assert server.process is not None
    pid = server.process.pid
    deadline = time.monotonic() + 10
    workers: set[int] = set()
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        workers = set()
        for child in children:
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    workers.add(int(child))
            except OSError:
                pass
        if len(workers) >= count:
            return workers
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} worker processes: {workers}")


def get_on_a_fresh_connection(url: str) -> str:
    with httpx.Client(timeout=10) as http:  # a client per request: a new TCP connection each time
        response = http.get(url)
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def send_jwks_requests(server: IdpProcess) -> list[str]:
    """Four at a time, so that while one worker is busy the other accepts."""
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(get_on_a_fresh_connection, [f"{server.url}/jwks"] * REQUESTS))


def scrape(server: IdpProcess) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return Samples(response.text)


def jwks_count_per_pid(directory: Path) -> dict[int, float]:
    """Each counter file read on its own: how many GET /jwks that process answered."""
    counts = {}
    for path in sorted(directory.glob("counter_*.db")):
        with tempfile.TemporaryDirectory() as alone:
            shutil.copy(path, alone)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=alone)
            total = sum(
                s.value
                for metric in registry.collect()
                for s in metric.samples
                if s.name == "idp_http_requests_total" and s.labels.get("endpoint") == "/jwks"
            )
        counts[int(path.stem.split("_")[-1])] = total
    return counts


# ---- an admin's PROMETHEUS_MULTIPROC_DIR, with a previous run's files in it ------------------------


@pytest.fixture(scope="module")
def admin_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, Path, list[str]]]:
    workdir = tmp_path_factory.mktemp("metrics-admin-dir")
    metrics_dir = workdir / "prometheus"
    metrics_dir.mkdir()
    subprocess.run(
        [sys.executable, "-c", STALE_WRITER],
        env={**os.environ, MULTIPROC_ENV: str(metrics_dir)},
        check=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    stale = sorted(p.name for p in metrics_dir.glob("*.db"))
    assert len(stale) == 2, stale  # counter_<pid>.db, histogram_<pid>.db

    port = free_port()
    with (
        deployment(workdir, port, **{MULTIPROC_ENV: str(metrics_dir)}) as env,
        run_idp(env, port, workdir, workers=2) as server,
    ):
        run = Run(server, worker_pids(server, 2))
        run.request_ids = send_jwks_requests(server)
        run.scrape = scrape(server)
        run.files = sorted(p.name for p in metrics_dir.iterdir())
        run.jwks_by_pid = jwks_count_per_pid(metrics_dir)
    yield run, metrics_dir, stale


def test_the_jwks_requests_of_both_workers_add_up_to_exactly_the_requests_sent(admin_run) -> None:
    run, _, _ = admin_run
    assert run.scrape is not None
    assert run.scrape.total("idp_http_requests_total", endpoint="/jwks") == REQUESTS, run.server.log()
    assert run.scrape.get("idp_http_requests_total", endpoint="/jwks", method="GET", status="200") == REQUESTS
    assert run.scrape.total("idp_http_request_duration_seconds_count", endpoint="/jwks") == REQUESTS
    assert len(set(run.request_ids)) == REQUESTS


def test_the_directory_holds_the_counters_of_two_worker_pids_each_with_some_requests(admin_run) -> None:
    """Proves the spread and the aggregation: neither worker answered all 200 alone."""
    run, _, _ = admin_run
    answered = {pid: n for pid, n in run.jwks_by_pid.items() if n > 0}
    assert len(answered) >= 2, (run.jwks_by_pid, run.files)
    assert set(answered) <= run.worker_pids, (answered, run.worker_pids)
    assert sum(answered.values()) == REQUESTS
    assert all(n < REQUESTS for n in answered.values())


def test_a_previous_runs_files_are_deleted_at_start_and_not_counted(admin_run) -> None:
    run, _, stale = admin_run
    assert run.scrape is not None
    for name in stale:
        assert name not in run.files, (name, run.files)
    assert STALE_ENDPOINT not in run.scrape.text
    assert run.scrape.total("idp_http_requests_total", endpoint="/jwks") < STALE_COUNT


def test_the_admins_directory_is_kept_after_idp_stops(admin_run) -> None:
    """It is the admin's: emptied of stale files at the next start, never removed."""
    _, metrics_dir, _ = admin_run
    assert metrics_dir.is_dir()


# ---- no PROMETHEUS_MULTIPROC_DIR: a private one ---------------------------------------------------


@pytest.fixture(scope="module")
def private_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, list[Path], Path]]:
    workdir = tmp_path_factory.mktemp("metrics-private-dir")
    scratch = workdir / "tmp"
    scratch.mkdir()
    port = free_port()
    with deployment(workdir, port, TMPDIR=str(scratch)) as env, run_idp(env, port, workdir, workers=2) as server:
        run = Run(server, worker_pids(server, 2))
        private = sorted(scratch.glob("idp-metrics-*"))
        run.request_ids = send_jwks_requests(server)
        run.scrape = scrape(server)
        if len(private) == 1:
            run.directory_mode = stat.S_IMODE(private[0].stat().st_mode)
            run.files = sorted(p.name for p in private[0].iterdir())
            run.jwks_by_pid = jwks_count_per_pid(private[0])
        log_path = server.log_path
    # read only after the stop, without waiting for the once-a-second flush: a worker's
    # stop writes out what it still holds (it was lost: workers leave without atexit)
    yield run, private, log_path


def request_lines(log_path: Path) -> dict[str, dict]:
    lines = {}
    for raw in log_path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            line = json.loads(raw)
            if line.get("event") == "request":
                lines[line["request_id"]] = line
    return lines


def test_without_the_variable_idp_makes_a_private_directory_and_the_count_is_exact(private_run) -> None:
    run, private, _ = private_run
    assert len(private) == 1, private
    assert run.directory_mode == 0o700  # only this user reads the values
    assert run.scrape is not None
    assert run.scrape.total("idp_http_requests_total", endpoint="/jwks") == REQUESTS, run.server.log()
    answered = {pid: n for pid, n in run.jwks_by_pid.items() if n > 0}
    assert len(answered) >= 2 and set(answered) <= run.worker_pids, (run.jwks_by_pid, run.worker_pids)


def test_the_private_directory_is_removed_when_idp_stops(private_run) -> None:
    _, private, _ = private_run
    assert private and not private[0].exists()


def test_each_responses_request_id_is_on_its_json_line_in_the_log(private_run) -> None:
    run, _, log_path = private_run
    lines = request_lines(log_path)
    for request_id in run.request_ids:
        assert request_id in lines, f"no log line for {request_id}:\n{run.server.log()}"
        line = lines[request_id]
        assert (line["method"], line["path"], line["endpoint"], line["status"]) == ("GET", "/jwks", "/jwks", 200)
        assert line["ip"] == "127.0.0.1"
    assert sum(1 for line in lines.values() if line["endpoint"] == "/jwks") == REQUESTS
