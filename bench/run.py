"""`make bench` (python -m bench.run): for each backend and worker count, starts a fresh idp
and the node-oidc-provider peer, runs every scenario against both, alternating, prints the
Markdown table and writes bench/results/<date>-<commit>.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.ceiling import measure_argon2_ceiling
from bench.driver import Target, mint_tokens
from bench.http1 import HTTPFailure
from bench.loadgen import LoadError, LoadResult, run_driver, run_wrk
from bench.machine import describe_machine
from bench.report import (
    FLOOR_MODES,
    LAYERS_HEADING,
    LAYERS_NOTE,
    Measured,
    Section,
    render_report,
    render_tables,
    update_readme,
)
from bench.scenarios import SCENARIOS, Scenario, wrk_request
from bench.servers import (
    PEER_DIR,
    REDIS_URL,
    REPO,
    Meter,
    Server,
    ServerError,
    install_peer,
    start_floor,
    start_idp,
    start_peer,
)

BACKENDS = ("sqlite", "postgres")
MAX_DRIVER_PROCESSES = 4


@dataclass(frozen=True)
class Options:
    backends: tuple[str, ...]
    workers: tuple[int, ...]
    duration_seconds: float
    warmup_seconds: float
    connections: int
    driver_processes: int  # 0 = one per load core
    peer: bool
    quick: bool
    output: Path | None
    workdir: Path | None
    ceiling_seconds: float
    access_tokens: str = "opaque"  # idp's bench client: "jwt" registers access_token_format = "jwt"


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny load for a smoke test (2 connections, 1 s, no warm-up, no results file)",
    )
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: sqlite,postgres")
    parser.add_argument("--workers", default="1", help="comma-separated idp process counts, e.g. 1,2 (1 = one core)")
    parser.add_argument("--duration", type=float, help="seconds per measured scenario (default 10; 1 with --quick)")
    parser.add_argument(
        "--warmup", type=float, help="unmeasured seconds before each scenario (default 1; 0 with --quick)"
    )
    parser.add_argument(
        "--connections", type=int, help="concurrent connections / virtual users (default 16; 2 with --quick)"
    )
    parser.add_argument(
        "--driver-procs", type=int, default=0, help="flow driver processes (default: one per load core)"
    )
    parser.add_argument("--no-peer", action="store_true", help="do not run node-oidc-provider")
    parser.add_argument(
        "--access-tokens",
        choices=("opaque", "jwt"),
        default="opaque",
        help="idp's access tokens: opaque (the default) or RFC 9068 JWTs; the peer's stay opaque",
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep databases and server logs here (default: a temporary directory)"
    )
    parser.add_argument(
        "--output", type=Path, help="results file (default bench/results/<date>-<commit>.md; none with --quick)"
    )
    args = parser.parse_args(argv)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if not backends or set(backends) - set(BACKENDS):
        parser.error(f"--backends: choose from {', '.join(BACKENDS)}")
    try:
        workers = tuple(int(w) for w in args.workers.split(","))
    except ValueError:
        parser.error("--workers: comma-separated integers, e.g. 1,2")
    if not workers or min(workers) < 1 or max(workers) > 64:
        parser.error("--workers: each between 1 and 64")
    quick = args.quick
    return Options(
        backends=backends,
        workers=workers,
        duration_seconds=args.duration if args.duration is not None else (1.0 if quick else 10.0),
        warmup_seconds=args.warmup if args.warmup is not None else (0.0 if quick else 1.0),
        connections=args.connections or (2 if quick else 16),
        driver_processes=max(0, args.driver_procs),
        peer=not args.no_peer,
        quick=quick,
        output=args.output,
        workdir=args.workdir,
        ceiling_seconds=0.5 if quick else 3.0,
        access_tokens=args.access_tokens,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    machine = describe_machine()
    ceiling = measure_argon2_ceiling(options.ceiling_seconds, plan_cpus(1)[0])
    _progress(f"Argon2 ceiling: {ceiling.verifications_per_second:.2f} verifications/s on one core")
    try:
        if options.peer:
            install_peer()
        with ExitStack() as stack:
            workdir = options.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="idp-bench-")))
            floors = measure_floor(options, workdir)
            sections = [
                run_section(backend, workers, options, workdir)
                for backend in options.backends
                for workers in options.workers
            ]
            for section in sections:
                section.floors = floors
    except ServerError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    tables = render_tables(sections, ceiling)
    print(tables)
    layers = None if options.quick else where_the_time_goes(options.access_tokens)
    if layers is not None:
        print(layers)
    output = options.output or (
        None if options.quick else REPO / "bench" / "results" / f"{machine.date}-{machine.commit}.md"
    )
    if output is not None:
        report = render_report(sections, machine, ceiling, _settings_lines(options))
        output.write_text(report + (f"\n\n{layers}" if layers else "") + "\n")
        _progress(f"written to {output}")
        if options.output is None and layers is not None:  # the default run is the README's
            update_readme(REPO / "README.md", output.relative_to(REPO), machine, tables, layers)
            _progress("README.md's bench table updated")
    bad_floor = any(_is_bad(m) for m in floors.values())  # a floor that answered errors would read as fast
    return 1 if bad_floor or any(_is_bad(m) for s in sections for m in s.runs.values()) else 0


def where_the_time_goes(access_tokens: str) -> str:
    """bench/inprocess.py --layers in a process of its own (it imports idp and seeds a
    database): each machine scenario's µs in-process and its own time by layer."""
    command = [sys.executable, "-m", "bench.inprocess", "--layers", "--requests", "500"]
    result = subprocess.run(
        [*command, "--access-tokens", access_tokens], cwd=REPO, capture_output=True, text=True, check=True
    )
    table = "\n".join(line for line in result.stdout.splitlines() if line.startswith("|"))
    return f"{LAYERS_HEADING}\n\n{LAYERS_NOTE}\n\n{table}"


def measure_floor(options: Options, workdir: Path) -> dict[str, Measured]:
    """bench/floor.py's three floors under the client_credentials request, on the core the
    servers get: the bare stack, a durable token written directly, and that under Authlib."""
    server_cpus, load_cpus = plan_cpus(1)
    scenario = next(s for s in SCENARIOS if s.id == "client_credentials")
    floors = {}
    for mode in FLOOR_MODES:
        with start_floor(workdir / f"floor-{mode}", server_cpus[:1], mode) as server:
            floors[mode] = run_scenario(scenario, server, options, load_cpus)
        _progress(f"floor ({mode}): {_summary(floors[mode])}")
    return floors


def run_section(backend: str, workers: int, options: Options, workdir: Path) -> Section:
    section = Section(backend, workers)
    if backend == "sqlite" and workers > 1:
        section.skipped = "idp refuses --workers > 1 without IDP_REDIS_URL (the in-process store is per process)."
        return section
    section.server_cpus, section.load_cpus = plan_cpus(workers)
    name = f"{backend}-{workers}"
    with ExitStack() as stack:
        idp = start_idp(workdir / f"idp-{name}", backend, workers, section.server_cpus, options.access_tokens)
        servers = [stack.enter_context(idp)]
        if options.peer:
            servers.append(stack.enter_context(start_peer(workdir / f"peer-{name}", section.server_cpus[:1])))
            if backend == "postgres":  # the peer's production shape beside idp's: its Redis adapter
                servers.append(
                    stack.enter_context(
                        start_peer(workdir / f"peer-redis-{name}", section.server_cpus[:1], redis_url=REDIS_URL)
                    )
                )
        section.idp_idle_rss = servers[0].idle_rss_bytes
        section.peer_idle_rss = servers[1].idle_rss_bytes if options.peer else []
        section.redis_peer_idle_rss = servers[2].idle_rss_bytes if len(servers) > 2 else []
        for server in servers:
            asyncio.run(mint_tokens(_target(server)))  # the first flow gives consent, once
        for scenario in SCENARIOS:
            for server in servers:  # alternating: idp A, peer A, (peer-redis A,) idp B, peer B …
                measured = run_scenario(scenario, server, options, section.load_cpus)
                section.runs[(scenario.id, server.name)] = measured
                _progress(f"{name} {server.name:4} {scenario.id}: {_summary(measured)}")
    return section


def run_scenario(scenario: Scenario, server: Server, options: Options, load_cpus: list[int]) -> Measured:
    try:
        return Measured(
            _drive(scenario, server, options, load_cpus)
            if scenario.driven
            else _hammer(scenario, server, options, load_cpus)
        )
    except (LoadError, HTTPFailure, OSError, ValueError, KeyError) as exc:
        return Measured(None, f"{type(exc).__name__}: {exc}")


def _drive(scenario: Scenario, server: Server, options: Options, load_cpus: list[int]) -> LoadResult:
    processes = options.driver_processes or max(1, min(len(load_cpus), MAX_DRIVER_PROCESSES))
    return run_driver(
        server,
        scenario.flow,
        connections=options.connections,
        seconds=options.duration_seconds,
        warmup_seconds=options.warmup_seconds,
        cpus=load_cpus,
        processes=processes,
        meter=Meter(server),
    )


def _hammer(scenario: Scenario, server: Server, options: Options, load_cpus: list[int]) -> LoadResult:
    token = asyncio.run(mint_tokens(_target(server)))["access_token"] if scenario.needs_access_token else ""
    request = wrk_request(scenario, server.paths, server.host_header, token)
    if options.warmup_seconds > 0:
        run_wrk(server, request, connections=options.connections, seconds=options.warmup_seconds, cpus=load_cpus)
    return run_wrk(
        server,
        request,
        connections=options.connections,
        seconds=options.duration_seconds,
        cpus=load_cpus,
        meter=Meter(server),
    )


def plan_cpus(workers: int) -> tuple[list[int], list[int]]:
    """Server cores and load-generator cores: one core per idp worker, the rest for load.
    With too few cores nothing is pinned (and the report says so)."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) > workers:
        return available[:workers], available[workers:]
    return [], []


def _target(server: Server) -> Target:
    return Target(server.name, server.port, server.host_header, server.paths)


def _is_bad(measured: Measured) -> bool:
    return measured.result is None or measured.result.errors > 0


def _summary(measured: Measured) -> str:
    r = measured.result
    if r is None:
        return f"FAILED {measured.failure}"
    return (
        f"{r.rate:,.1f}/s p50 {r.p50_ms:.2f} ms p99 {r.p99_ms:.2f} ms errors {r.errors} "
        f"server CPU {r.server.cpu_percent:.0f}% load CPU {r.load_cpu_percent:.0f}%"
    )


def _settings_lines(options: Options) -> list[str]:
    peer_version = json.loads((PEER_DIR / "package.json").read_text())["dependencies"]["oidc-provider"]
    return [
        f"backends: {', '.join(options.backends)}; idp workers: {', '.join(map(str, options.workers))}",
        f"idp access tokens: {options.access_tokens}"
        + (
            " (RFC 9068, ES256: userinfo and introspection verify them, no token row)"
            if options.access_tokens == "jwt"
            else ""
        ),
        f"{options.duration_seconds:g} s measured per scenario and server, after {options.warmup_seconds:g} s of warm-up",
        f"{options.connections} concurrent connections: `wrk -t1 -c{options.connections} --latency` for single "
        f"requests; {options.connections} virtual browsers in bench/driver.py (raw asyncio HTTP/1.1 on uvloop) for flows",
        f"peer: {'node-oidc-provider ' + peer_version + ' (bench/peers/oidc-provider, in-memory adapter; in the PostgreSQL + Redis sections also with its Redis adapter, redis_adapter.mjs)' if options.peer else 'not run (--no-peer)'}",
        "idp started as an admin would: `idp db upgrade`, `idp user add --password-stdin`, IDP_CLIENTS_FILE, "
        "`idp serve --workers N`; a fresh SQLite file or PostgreSQL schema per start",
        "idp's rate limits all checked on every request (site per IP, token per client, login per IP and account; "
        "shared through Redis on PostgreSQL) but set to 10,000,000/minute so that no request is refused; "
        "every token issuance writes its audit row and JSON log line, as in production",
    ]


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
