"""`make bench` end to end with a tiny load (bench/run.py --quick): every scenario runs
against a real `idp serve` on SQLite and finishes without errors; so does `make soak`
(bench/soak.py) for a few seconds of mixed traffic. No timing is asserted: numbers from a
test machine mean nothing."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.loadgen import parse_wrk
from bench.report import FLOOR_MODES
from bench.scenarios import SCENARIOS
from bench.soak import Sample, Soak

REPO = Path(__file__).resolve().parent.parent
SMOKE_TIMEOUT_SECONDS = 55


def _table_rows(markdown: str) -> dict[str, dict[str, str]]:
    """First cell -> {column name: cell} for the rows of every Markdown table in the output."""
    rows: dict[str, dict[str, str]] = {}
    header: list[str] = []
    previous: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("|---"):
            header = previous  # the line above the separator names the columns
        elif line.startswith("|"):
            previous = [cell.strip() for cell in line.strip("|").split("|")]
            if header:
                rows[previous[0]] = dict(zip(header, previous, strict=True))
        else:
            header = []
    return rows


def _require_wrk() -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is not installed (CI is set: this must run, not skip)")
        pytest.skip("wrk is not installed (apt-get install wrk)")


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_SECONDS,
        check=False,
    )


def test_make_bench_quick_runs_every_scenario_without_errors(tmp_path: Path) -> None:
    _require_wrk()
    done = _run(
        "bench.run",
        "--quick",
        "--backends",
        "sqlite",
        "--no-peer",
        "--duration",
        "1",
        "--output",
        str(tmp_path / "result.md"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _table_rows(done.stdout)
    for scenario in SCENARIOS:
        row = rows.get(f"{scenario.title} ({scenario.unit}/s)")
        assert row is not None, f"no row for {scenario.id} in:\n{done.stdout}"
        assert row["errors"] == "0", f"{scenario.id}: {row}\n{done.stdout}"
        assert row["idp /s"] != "failed", f"{scenario.id}: {row}"
    report = (tmp_path / "result.md").read_text()
    assert "Argon2 ceiling" in report
    # each floor served the request: a floor that answered errors would read as fast
    for mode in FLOOR_MODES:
        assert re.search(rf"floor \({mode}\): [0-9,.]+/s .* errors 0 ", done.stderr), done.stderr[-3000:]
    assert re.search(r"same durable token decided by Authlib's ClientCredentialsGrant: [0-9,]+ req/s", report), report


def test_make_soak_samples_rss_under_mixed_traffic_without_errors(tmp_path: Path) -> None:
    _require_wrk()
    done = _run(
        "bench.soak",
        "--minutes",
        "0.2",
        "--sample-seconds",
        "2",
        "--backend",
        "sqlite",
        "--no-peer",
        "--output",
        str(tmp_path / "soak.md"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    idp = _table_rows(done.stdout).get("idp")
    assert idp is not None, done.stdout
    assert int(idp["samples"]) >= 2, idp
    assert idp["errors"] == "0", done.stdout
    assert math.isfinite(float(idp["slope MB/min"])), idp
    assert int(idp["served"].replace(",", "")) > 0, idp
    assert "## Samples" in (tmp_path / "soak.md").read_text()


def test_soak_slope_is_fitted_after_the_settle_window() -> None:
    warm_up = [Sample(10, 300 * 2**20, 100.0), Sample(20, 200 * 2**20, 100.0)]  # set-up logins: left out
    steady = [Sample(s, int((100 + s / 60) * 2**20), 100.0) for s in range(30, 600, 10)]  # +1 MB a minute
    soak = Soak("idp", settle_seconds=30, samples=warm_up + steady)
    assert soak.slope_mb_per_minute == pytest.approx(1.0)
    assert soak.fitted[0] == steady[0]


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


def test_the_layers_table_covers_every_machine_scenario_and_adds_up() -> None:
    """bench/inprocess.py --layers, as `make bench` runs it for the README: a row per
    scenario, each row's shares of own time summing to the whole (and the JWT variant too)."""
    for tokens in ("opaque", "jwt"):
        result = _run("bench.inprocess", "--layers", "--requests", "30", "--access-tokens", tokens)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = _table_rows(result.stdout)
        assert set(rows) == {
            "client_credentials",
            "introspection",
            "userinfo",
            "jwks",
            "refresh_token",
            "authorization_code",
        }
        for name, row in rows.items():
            shares = [float(v.rstrip("%")) for k, v in row.items() if k not in ("scenario", "µs/request")]
            assert 97 <= sum(shares) <= 103, (name, row)  # each rounded to a whole percent
            assert float(row["µs/request"].replace(",", "")) > 0


def test_the_readme_block_is_replaced_and_nothing_else(tmp_path: Path) -> None:
    from bench.machine import describe_machine
    from bench.report import README_BEGIN, README_END, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_BEGIN}\nold table\n{README_END}\nafter\n")
    update_readme(readme, Path("bench/results/x.md"), describe_machine(), "| new | table |", "#### layers")
    text = readme.read_text()
    assert text.startswith(f"before\n{README_BEGIN}\nLatest run (`bench/results/x.md`;")
    assert "old table" not in text and "| new | table |" in text and "#### layers" in text
    assert text.endswith(f"{README_END}\nafter\n")
