"""Running the load generators as processes of their own (wrk, bench.driver), pinned to the
cores the server does not use, and reading what they measured (and what they cost)."""

from __future__ import annotations

import json
import math
import os
import re
import resource
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.scenarios import WrkRequest
from bench.servers import REPO, Meter, Server, Usage

WRK_GRACE_SECONDS = 30.0
DRIVER_READY_TIMEOUT_SECONDS = 180.0  # set-up may run one Argon2 login per virtual user
DRIVER_FINISH_GRACE_SECONDS = 60.0
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


class LoadError(RuntimeError):
    """A load generator failed to run (not: the server answered with errors)."""


@dataclass
class LoadResult:
    rate: float  # completed requests or flows per second
    p50_ms: float
    p99_ms: float
    completed: int
    errors: int
    elapsed_seconds: float
    load_cpu_seconds: float
    load_processes: int
    server: Usage
    error_samples: list[str] = field(default_factory=list)

    @property
    def load_cpu_percent(self) -> float:
        return 100 * self.load_cpu_seconds / max(self.elapsed_seconds, 1e-9)


# ---- wrk ----------------------------------------------------------------------------------


def run_wrk(
    server: Server,
    request: WrkRequest,
    *,
    connections: int,
    seconds: float,
    cpus: Sequence[int],
    meter: Meter | None = None,
) -> LoadResult:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise LoadError("wrk not found: apt-get install wrk")
    command = [
        *_pinned(cpus),
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(request.script),
        f"http://127.0.0.1:{server.port}{request.path}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if meter:
        meter.start()
    done = subprocess.run(
        command,
        env={**os.environ, **request.env},
        capture_output=True,
        text=True,
        timeout=seconds + WRK_GRACE_SECONDS,
        check=False,
    )
    usage = meter.stop() if meter else Usage(0.0, 0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise LoadError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return parse_wrk(done.stdout, cpu_seconds=cpu, server=usage)


def parse_wrk(output: str, *, cpu_seconds: float = 0.0, server: Usage = Usage(0.0, 0)) -> LoadResult:
    """Reads wrk --latency's report: Requests/sec, the 50% and 99% lines, errors."""
    rate = float(_search(r"Requests/sec:\s+([\d.]+)", output))
    completed_match = re.search(r"(\d+) requests in ([\d.]+)(\w+),", output)
    completed = int(completed_match.group(1)) if completed_match else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = (sum(map(int, socket_errors.groups())) if socket_errors else 0) + (int(non_2xx.group(1)) if non_2xx else 0)
    samples = [line.strip() for line in output.splitlines() if "errors" in line or "Non-2xx" in line]
    elapsed = completed / rate if rate else 0.0
    return LoadResult(
        rate=rate,
        p50_ms=_latency_ms(output, "50"),
        p99_ms=_latency_ms(output, "99"),
        completed=completed,
        errors=errors,
        elapsed_seconds=elapsed,
        load_cpu_seconds=cpu_seconds,
        load_processes=1,
        server=server,
        error_samples=samples,
    )


def _latency_ms(output: str, percentile: str) -> float:
    value, unit = re.search(rf"^\s+{percentile}%\s+([\d.]+)(\w+)", output, re.M).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def _search(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise LoadError(f"wrk output without {pattern!r}: {text[:300]}")
    return match.group(1)


# ---- the flow driver ----------------------------------------------------------------------------


def run_driver(
    server: Server,
    flow: str,
    *,
    connections: int,
    seconds: float,
    warmup_seconds: float,
    cpus: Sequence[int],
    processes: int,
    meter: Meter | None = None,
) -> LoadResult:
    """`processes` driver processes share `connections` virtual users; all set up, then all
    start together on GO, so the measured window is the same for each."""
    target = {"name": server.name, "port": server.port, "host_header": server.host_header, "paths": server.paths}
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    drivers = [
        _start_driver({"target": target, "flow": flow, "users": n, "duration": seconds, "warmup": warmup_seconds}, cpus)
        for n in shares
        if n > 0
    ]
    try:
        for driver in drivers:
            _expect_line(driver, "READY", DRIVER_READY_TIMEOUT_SECONDS)
        if meter:
            meter.start()
        for driver in drivers:
            driver.stdin.write("GO\n")  # type: ignore[union-attr]
            driver.stdin.flush()  # type: ignore[union-attr]
        results = [json.loads(_read_line(d, seconds + DRIVER_FINISH_GRACE_SECONDS)) for d in drivers]
        usage = meter.stop() if meter else Usage(0.0, 0)
    finally:
        for driver in drivers:
            _finish(driver)
    return merge_driver_results(results, usage)


def merge_driver_results(results: list[dict[str, Any]], server: Usage) -> LoadResult:
    latencies = sorted(x for r in results for x in r["latencies_ms"])
    elapsed = max(r["elapsed"] for r in results)
    samples = [s for r in results for s in r["error_samples"] + r["setup_error_samples"]][:5]
    return LoadResult(
        rate=len(latencies) / elapsed,
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        completed=len(latencies),
        errors=sum(r["errors"] + r["setup_errors"] for r in results),
        elapsed_seconds=elapsed,
        load_cpu_seconds=sum(r["cpu_seconds"] for r in results),
        load_processes=len(results),
        server=server,
        error_samples=samples,
    )


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence (nan when empty)."""
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def _start_driver(spec: dict[str, Any], cpus: Sequence[int]) -> subprocess.Popen[str]:
    command = [*_pinned(cpus), sys.executable, "-m", "bench.driver", json.dumps(spec)]
    return subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _expect_line(process: subprocess.Popen[str], expected: str, timeout: float) -> None:
    line = _read_line(process, timeout)
    if line != expected:
        raise LoadError(f"driver said {line[:200]!r}, expected {expected}")


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], min(1.0, max(0.0, deadline - time.monotonic())))
        if ready:
            line = process.stdout.readline()
            if not line:
                raise LoadError(f"driver exited ({process.wait(timeout=5)}) before answering")
            return line.strip()
    raise LoadError(f"driver silent for {timeout:.0f} s")


def _finish(process: subprocess.Popen[str]) -> None:
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()  # our own child, by its handle
        process.wait(timeout=10)


def _pinned(cpus: Sequence[int]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cpus))] if cpus and shutil.which("taskset") else []
