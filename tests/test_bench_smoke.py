"""`make bench` end to end with a tiny load (bench/run.py --quick): every scenario runs
against a real `idp serve` on SQLite and finishes without errors. No timing is asserted:
numbers from a test machine mean nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.loadgen import parse_wrk
from bench.scenarios import SCENARIOS

REPO = Path(__file__).resolve().parent.parent
SMOKE_TIMEOUT_SECONDS = 55


def _table_rows(markdown: str) -> dict[str, dict[str, str]]:
    """Scenario cell -> {column name: cell} for every Markdown table in the output."""
    rows: dict[str, dict[str, str]] = {}
    header: list[str] = []
    for line in markdown.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0] == "scenario":
            header = cells
        elif header:
            rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_make_bench_quick_runs_every_scenario_without_errors(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is not installed (CI is set: this must run, not skip)")
        pytest.skip("wrk is not installed (apt-get install wrk)")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--backends",
            "sqlite",
            "--no-peer",
            "--duration",
            "1",
            "--output",
            str(tmp_path / "result.md"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _table_rows(done.stdout)
    for scenario in SCENARIOS:
        row = rows.get(f"{scenario.title} ({scenario.unit}/s)")
        assert row is not None, f"no row for {scenario.id} in:\n{done.stdout}"
        assert row["errors"] == "0", f"{scenario.id}: {row}\n{done.stdout}"
        assert row["idp /s"] != "failed", f"{scenario.id}: {row}"
    assert "Argon2 ceiling" in (tmp_path / "result.md").read_text()


WRK_REPORT = """\
Running 1s test @ http://127.0.0.1:4000/jwks
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   130.00us   20.00us   1.00ms   90.00%
  Latency Distribution
     50%  {p50}
     75%  140.00us
     90%  150.00us
     99%  {p99}
  14856 requests in 1.00s, 10.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  14856.00
Transfer/sec:     10.00MB
"""


@pytest.mark.parametrize(
    "p50, p99, expected_ms",
    [
        pytest.param("130.00us", "1.50ms", (0.13, 1.5), id="microseconds and milliseconds"),
        pytest.param("2.00ms", "1.20s", (2.0, 1200.0), id="milliseconds and seconds"),
    ],
)
def test_wrk_report_is_read_in_any_latency_unit(p50: str, p99: str, expected_ms: tuple[float, float]) -> None:
    result = parse_wrk(WRK_REPORT.format(p50=p50, p99=p99))
    assert (result.p50_ms, result.p99_ms) == pytest.approx(expected_ms)
    assert result.rate == 14856.0 and result.completed == 14856
    assert result.errors == 2 + 1 + 4  # socket errors and non-2xx answers
