"""`make soak` (python -m bench.soak): issue 19's memory check. One server at a time (idp, then
the node-oidc-provider peer for comparison) gets the bench scenarios all at once, as mixed
traffic, for --minutes; its RSS (whole process tree) is sampled every --sample-seconds.
Reported: RSS at the start of the fit window, the peak, the end, and the slope of a
least-squares line over the samples after the first minute (a leak shows as a slope that
stays above 0 however long the run), with what was served and the errors (must be 0)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from bench.driver import mint_tokens
from bench.machine import describe_machine
from bench.report import Measured, report_head
from bench.run import BACKENDS, Options, _progress, _target, plan_cpus, run_scenario
from bench.scenarios import SCENARIOS
from bench.servers import PEER_DIR, REPO, Meter, Server, ServerError, install_peer, start_idp, start_peer

# Virtual users per scenario (closed loop: each repeats its request or flow as soon as the
# previous one is answered), 16 in all like `make bench`: many token checks and refreshes, a
# steady trickle of sign-ins riding a session, few discovery/JWKS fetches (RPs cache them).
# The password login is left out: Argon2 would take most of the core and starve the rest.
MIX = {
    "discovery": 1,
    "jwks": 1,
    "client_credentials": 2,
    "refresh": 2,
    "userinfo": 3,
    "introspection": 3,
    "code_flow_session": 4,
}
SETTLE_SECONDS = 60.0  # imports, caches and pools fill up first: the fit starts after this
# userinfo and introspection repeat one access token minted at the start, and both servers
# give it 15 minutes (idp's IDP_ACCESS_TOKEN_TTL_SECONDS default, the peer's ttl.AccessToken).
MAX_MINUTES = 14.0


@dataclass(frozen=True)
class SoakOptions:
    minutes: float
    backend: str
    sample_seconds: float
    output: Path | None
    peer: bool

    @property
    def settle_seconds(self) -> float:
        # a short run (the smoke test) still leaves most of its samples to the fit
        return min(SETTLE_SECONDS, self.minutes * 60 / 5)


@dataclass(frozen=True)
class Sample:
    seconds: float  # since the load started
    rss_bytes: int  # the process tree's, at that moment
    cpu_percent: float  # over the period that ended then


@dataclass
class Soak:
    server: str
    settle_seconds: float
    idle_rss_bytes: int = 0
    samples: list[Sample] = field(default_factory=list)
    runs: dict[str, Measured] = field(default_factory=dict)  # scenario id -> its load generator's result

    @property
    def fitted(self) -> list[Sample]:
        return [s for s in self.samples if s.seconds >= self.settle_seconds]

    @property
    def slope_mb_per_minute(self) -> float:
        fitted = self.fitted
        if len(fitted) < 2:
            return math.nan
        return statistics.linear_regression(
            [s.seconds / 60 for s in fitted], [s.rss_bytes / 2**20 for s in fitted]
        ).slope

    @property
    def served(self) -> int:
        return sum(m.result.completed for m in self.runs.values() if m.result)

    @property
    def errors(self) -> int:
        return sum(m.result.errors for m in self.runs.values() if m.result)

    @property
    def failed(self) -> list[str]:
        return [f"{scenario}: {m.failure}" for scenario, m in self.runs.items() if m.result is None]


def parse_options(argv: Sequence[str] | None) -> SoakOptions:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument(
        "--minutes", type=float, default=10.0, help=f"of mixed traffic per server (default 10, at most {MAX_MINUTES:g})"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite", help="idp's storage (default sqlite)")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="RSS sampling period (default 10)")
    parser.add_argument("--output", type=Path, help="results file (default bench/results/soak-<date>-<commit>.md)")
    parser.add_argument(
        "--peer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also soak node-oidc-provider (in-memory), after idp, for the same time (default: yes)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes: above 0 and at most {MAX_MINUTES:g} (the access token in the mix lives 15 minutes)")
    if not 0 < args.sample_seconds <= args.minutes * 60 / 2:
        parser.error("--sample-seconds: above 0 and at most half the run, for a line through two samples or more")
    return SoakOptions(args.minutes, args.backend, args.sample_seconds, args.output, args.peer)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    machine = describe_machine()
    server_cpus, load_cpus = plan_cpus(1)
    starts: list[tuple[str, Callable[[Path], AbstractContextManager[Server]]]] = [
        ("idp", lambda workdir: start_idp(workdir, options.backend, 1, server_cpus))
    ]
    if options.peer:
        starts.append(("peer", lambda workdir: start_peer(workdir, server_cpus[:1])))
    try:
        if options.peer:
            install_peer()
        with tempfile.TemporaryDirectory(prefix="idp-soak-") as workdir:
            soaks = []
            for name, start in starts:  # one after the other: each has the server core to itself
                with start(Path(workdir) / name) as server:
                    soaks.append(soak(server, options, load_cpus))
    except ServerError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    print(render_tables(soaks))
    output = options.output or REPO / "bench" / "results" / f"soak-{machine.date}-{machine.commit}.md"
    head = report_head("soak", machine, _settings_lines(options, server_cpus, load_cpus))
    output.write_text(
        "\n".join(
            [
                *head,
                "",
                "## Results",
                "",
                render_tables(soaks),
                "## Samples",
                "",
                *_sample_rows(soaks),
            ]
        )
        + "\n"
    )
    _progress(f"written to {output}")
    return 1 if any(s.errors or s.failed for s in soaks) else 0


def soak(server: Server, options: SoakOptions, load_cpus: list[int]) -> Soak:
    """Every MIX scenario at once through bench.run's own runner, each in a thread of its own
    (wrk and the driver are processes: the threads only wait), while this thread samples."""
    result = Soak(server.name, options.settle_seconds, idle_rss_bytes=sum(server.idle_rss_bytes))
    asyncio.run(mint_tokens(_target(server)))  # the first flow gives consent, once, before the crowd
    seconds = options.minutes * 60
    scenarios = [s for s in SCENARIOS if s.id in MIX]
    _progress(f"{server.name}: {seconds:g} s of mixed traffic, RSS every {options.sample_seconds:g} s")
    with ThreadPoolExecutor(len(scenarios)) as pool:
        futures = {
            s.id: pool.submit(run_scenario, s, server, _scenario_options(MIX[s.id], seconds), load_cpus)
            for s in scenarios
        }
        for sample in _samples(server, list(futures.values()), options.sample_seconds):
            result.samples.append(sample)
            _progress(f"{server.name} {sample.seconds:6.0f} s: RSS {sample.rss_bytes / 2**20:.1f} MB")
        result.runs = {scenario_id: future.result() for scenario_id, future in futures.items()}
    return result


def _scenario_options(connections: int, seconds: float) -> Options:
    """bench.run's options for one scenario of the mix: its share of the users, the whole
    duration, no separate warm-up (the settle window is the soak's) and one driver process."""
    return Options(
        backends=(),
        workers=(1,),
        duration_seconds=seconds,
        warmup_seconds=0.0,
        connections=connections,
        driver_processes=1,
        peer=False,
        quick=False,
        output=None,
        workdir=None,
        ceiling_seconds=0.0,
    )


def _samples(server: Server, load: list[Future[Measured]], period: float) -> Iterator[Sample]:
    """A Meter window per period, for as long as any load generator runs."""
    started = time.monotonic()
    meter = Meter(server)
    meter.start()
    count = 0
    while True:
        count += 1
        _, running = wait(load, timeout=max(0.0, started + count * period - time.monotonic()))
        if not running:
            return
        usage = meter.stop()
        meter.start()
        yield Sample(time.monotonic() - started, usage.rss_bytes, usage.cpu_percent)


# ---- Markdown ----------------------------------------------------------------------------------

COLUMNS = (
    "server",
    "samples",
    "idle RSS MB",
    "start RSS MB",
    "peak RSS MB",
    "end RSS MB",
    "slope MB/min",
    "served",
    "errors",
    "mean CPU %",
)


def render_tables(soaks: list[Soak]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(s)) + " |" for s in soaks]
    names = [s.server for s in soaks]
    lines += ["", "| scenario | users | " + " | ".join(f"{n} served | {n} errors" for n in names) + " |"]
    lines.append("|" + "---|" * (2 + 2 * len(names)))
    for scenario in SCENARIOS:
        if scenario.id in MIX:
            cells = [f"{scenario.title} ({scenario.unit})", str(MIX[scenario.id])]
            for s in soaks:
                measured = s.runs.get(scenario.id)
                r = measured.result if measured else None
                cells += [f"{r.completed:,}", str(r.errors)] if r else ["failed", "–"]
            lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {s.server} {failure}" for s in soaks for failure in s.failed]
    notes += [
        f"- {s.server} {scenario_id}: {'; '.join(m.result.error_samples) or 'errors (no sample)'}"
        for s in soaks
        for scenario_id, m in s.runs.items()
        if m.result and m.result.errors
    ]
    return "\n".join([*lines, "", *notes, *([""] if notes else [])])


def _row(s: Soak) -> list[str]:
    fitted = s.fitted
    mb = [x.rss_bytes / 2**20 for x in s.samples]
    errors = str(s.errors) + (f" + {len(s.failed)} failed runs" if s.failed else "")
    return [
        s.server,
        str(len(s.samples)),
        f"{s.idle_rss_bytes / 2**20:.1f}",
        f"{fitted[0].rss_bytes / 2**20:.1f}" if fitted else "–",
        f"{max(mb):.1f}" if mb else "–",
        f"{mb[-1]:.1f}" if mb else "–",
        "–" if math.isnan(s.slope_mb_per_minute) else f"{s.slope_mb_per_minute:+.3f}",
        f"{s.served:,}",
        errors,
        f"{statistics.fmean(x.cpu_percent for x in s.samples):.0f}" if s.samples else "–",
    ]


def _sample_rows(soaks: list[Soak]) -> list[str]:
    """Side by side by sample number: the servers ran one after the other, each from 0 s."""
    header = ["seconds", *(f"{s.server} {what}" for s in soaks for what in ("RSS MB", "CPU %"))]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i in range(max((len(s.samples) for s in soaks), default=0)):
        cells = [f"{soaks[0].samples[i].seconds:.0f}" if i < len(soaks[0].samples) else "–"]
        for s in soaks:
            x = s.samples[i] if i < len(s.samples) else None
            cells += [f"{x.rss_bytes / 2**20:.1f}", f"{x.cpu_percent:.0f}"] if x else ["–", "–"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _settings_lines(options: SoakOptions, server_cpus: list[int], load_cpus: list[int]) -> list[str]:
    peer_version = json.loads((PEER_DIR / "package.json").read_text())["dependencies"]["oidc-provider"]
    mix = ", ".join(f"{scenario_id} {users}" for scenario_id, users in MIX.items())
    placement = (
        f"server pinned to core(s) {','.join(map(str, server_cpus))}, load generators on core(s) "
        f"{','.join(map(str, load_cpus))}"
        if server_cpus
        else "not pinned: too few cores, so the server and the load generators share every core"
    )
    return [
        f"idp: backend {options.backend}, 1 worker; "
        + (
            f"then node-oidc-provider {peer_version}, in-memory adapter" if options.peer else "peer not run (--no-peer)"
        ),
        f"{options.minutes:g} minutes of mixed traffic per server, one server at a time; {placement}",
        f"virtual users per scenario, all at once (wrk -t1 for single requests, bench/driver.py for the "
        f"refresh chains and the session code flows): {mix}",
        f"RSS summed over the server's process tree every {options.sample_seconds:g} s; the slope is a "
        f"least-squares line (statistics.linear_regression) through the samples from {options.settle_seconds:g} s "
        "on, whose first is the start RSS; peak and end are over every sample",
        "served counts single requests, refresh grants and complete code flows (each several requests)",
    ]


if __name__ == "__main__":
    sys.exit(main())
