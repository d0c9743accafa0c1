"""Rendering the results as Markdown: one table per backend and worker count, and the
results file (machine, settings, how to read the table, notes)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from bench.ceiling import Argon2Ceiling
from bench.loadgen import LoadResult
from bench.machine import Machine
from bench.scenarios import SCENARIOS, Scenario

BACKEND_NAMES = {"sqlite": "SQLite + in-process store", "postgres": "PostgreSQL + Redis"}
IDP_COLUMNS = ("scenario", "idp /s", "p50 ms", "p99 ms", "errors", "CPU %", "RSS MB")
PEER_COLUMNS = ("peer /s", "peer p50", "peer p99", "peer errors", "peer CPU %", "peer RSS MB", "idp/peer")
# node-oidc-provider with its Redis adapter (the PostgreSQL + Redis sections): its production shape
REDIS_PEER_COLUMNS = ("peer+Redis /s", "peer+Redis p99", "peer+Redis errors", "peer+Redis RSS MB", "idp/peer+Redis")
REFERENCE_COLUMNS = ("Keycloak /s/vCPU", "idp/Keycloak", "load CPU %")
NO_PASSWORD = "†"


@dataclass
class Measured:
    """One scenario against one server: the load result, or why there is none."""

    result: LoadResult | None
    failure: str = ""


@dataclass
class Section:
    backend: str
    workers: int
    server_cpus: list[int] = field(default_factory=list)  # empty: not pinned
    load_cpus: list[int] = field(default_factory=list)
    idp_idle_rss: list[int] = field(default_factory=list)  # bytes, per process
    peer_idle_rss: list[int] = field(default_factory=list)
    redis_peer_idle_rss: list[int] = field(default_factory=list)
    runs: dict[tuple[str, str], Measured] = field(default_factory=dict)  # (scenario id, "idp"|"peer"|"peer-redis")
    skipped: str = ""
    floors: dict[str, Measured] = field(default_factory=dict)  # bench/floor.py's, under client_credentials

    @property
    def title(self) -> str:
        workers = f"{self.workers} idp worker{'s' if self.workers > 1 else ''}"
        return f"{BACKEND_NAMES.get(self.backend, self.backend)}, {workers}"


def render_tables(sections: list[Section], ceiling: Argon2Ceiling) -> str:
    return "\n".join(_section(s, ceiling) for s in sections)


def _section(section: Section, ceiling: Argon2Ceiling) -> str:
    lines = [f"### {section.title}", ""]
    if section.skipped:
        return "\n".join([*lines, f"Skipped: {section.skipped}", ""])
    with_peer = any(server == "peer" for _, server in section.runs)
    with_redis_peer = any(server == "peer-redis" for _, server in section.runs)
    columns = (
        IDP_COLUMNS
        + (PEER_COLUMNS if with_peer else ())
        + (REDIS_PEER_COLUMNS if with_redis_peer else ())
        + REFERENCE_COLUMNS
    )
    lines += [_placement(section), "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(_row(section, scenario, with_peer, with_redis_peer)) + " |"
        for scenario in SCENARIOS
        if (scenario.id, "idp") in section.runs
    ]
    lines += ["", *_section_notes(section, ceiling), ""]
    return "\n".join(lines)


def _placement(section: Section) -> str:
    if section.server_cpus:
        where = (
            f"idp and peer pinned to core(s) {_cpus(section.server_cpus)} (one at a time: they alternate), "
            f"load generators on core(s) {_cpus(section.load_cpus)}."
        )
    else:
        where = "not pinned: too few cores, so the servers and the load generators share every core."
    idle = _idle(section.idp_idle_rss)
    peer = f"; peer idle RSS {_idle(section.peer_idle_rss)}" if section.peer_idle_rss else ""
    redis_peer = f"; peer+Redis idle RSS {_idle(section.redis_peer_idle_rss)}" if section.redis_peer_idle_rss else ""
    return f"{where} idp idle RSS {idle}{peer}{redis_peer}."


def _cpus(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def _idle(rss_bytes: list[int]) -> str:
    mb = [b / 2**20 for b in rss_bytes]
    if len(mb) == 1:
        return f"{mb[0]:.0f} MB"
    return f"{sum(mb):.0f} MB over {len(mb)} processes (largest {max(mb):.0f} MB)"


def _rate(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"


def _ms(value: float) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _row(section: Section, scenario: Scenario, with_peer: bool, with_redis_peer: bool = False) -> list[str]:
    idp, peer = section.runs[(scenario.id, "idp")], section.runs.get((scenario.id, "peer"))
    cells = [f"{scenario.title} ({scenario.unit}/s)", *_measures(idp)]
    if with_peer:
        mark = "" if scenario.peer_comparable else NO_PASSWORD
        peer_cells = _measures(peer)
        cells += [peer_cells[0] + (mark if peer and peer.result else ""), *peer_cells[1:]]
        cells.append(_ratio(idp, peer) if scenario.peer_comparable else f"n/a{NO_PASSWORD}")
    if with_redis_peer:
        redis_peer = section.runs.get((scenario.id, "peer-redis"))
        rate, _, p99, errors, _, rss = _measures(redis_peer)
        cells += [rate, p99, errors, rss]
        cells.append(_ratio(idp, redis_peer) if scenario.peer_comparable else f"n/a{NO_PASSWORD}")
    cells += _keycloak(idp, scenario, section.workers)
    cells.append(_load_cpu(idp, peer))
    return cells


def _measures(measured: Measured | None) -> list[str]:
    """rate, p50, p99, errors, server CPU %, server RSS MB."""
    if measured is None:
        return ["–"] * 6
    r = measured.result
    if r is None:
        return ["failed", "–", "–", "run failed", "–", "–"]
    return [
        _rate(r.rate),
        _ms(r.p50_ms),
        _ms(r.p99_ms),
        str(r.errors),
        f"{r.server.cpu_percent:.0f}",
        f"{r.server.rss_bytes / 2**20:.0f}",
    ]


def _ratio(idp: Measured, peer: Measured | None) -> str:
    if peer is None or idp.result is None or peer.result is None or peer.result.rate == 0:
        return "–"
    return f"{idp.result.rate / peer.result.rate:.2f}×"


def _keycloak(idp: Measured, scenario: Scenario, workers: int) -> list[str]:
    if scenario.keycloak_per_vcpu is None:
        return ["–", "–"]
    reference = f"{scenario.keycloak_per_vcpu:g}"
    if idp.result is None:
        return [reference, "–"]
    return [reference, f"{idp.result.rate / workers / scenario.keycloak_per_vcpu:.1f}×"]


def _load_cpu(idp: Measured, peer: Measured | None) -> str:
    values = [m.result for m in (idp, peer) if m is not None and m.result is not None]
    return (
        " / ".join(
            f"{r.load_cpu_percent:.0f}" + (f" ({r.load_processes} procs)" if r.load_processes > 1 else "")
            for r in values
        )
        or "–"
    )


FLOOR_MODES = ("stack", "durable", "authlib")
_FLOOR_TEXT = {
    "stack": "the bare stack (body parsed, JSON answered: no database, no crypto)",
    "durable": "a durable token written directly (secret checked, token and audit rows inserted with "
    "stdlib sqlite3 and committed, an audit JSON line; no ORM, no OAuth library)",
    "authlib": "the same durable token decided by Authlib's ClientCredentialsGrant",
}


def _floor_notes(section: Section) -> list[str]:
    floors = {mode: m.result for mode, m in section.floors.items() if m.result is not None and m.result.rate > 0}
    if "stack" not in floors:
        return []
    per_core = section.workers
    lines = ["- Floors: bench/floor.py on the same uvicorn and Starlette, the client_credentials request, one core:"]
    peer = section.runs.get(("client_credentials", "peer"))
    idp = section.runs.get(("client_credentials", "idp"))
    for mode in FLOOR_MODES:
        if mode in floors:
            rate = floors[mode].rate
            beside = f" (the peer {peer.result.rate / rate:.2f}× it)" if peer and peer.result else ""
            lines.append(f"  - {_FLOOR_TEXT[mode]}: {_rate(rate)} req/s{beside}.")
    if idp and idp.result and "authlib" in floors:
        lines.append(
            f"  - idp's client_credentials is {idp.result.rate / per_core / floors['authlib'].rate:.0%} "
            "of the Authlib floor."
        )
    floor = floors["stack"]
    for scenario_id in ("client_credentials", "introspection", "userinfo", "refresh"):
        idp = section.runs.get((scenario_id, "idp"))
        peer = section.runs.get((scenario_id, "peer"))
        if idp and idp.result:
            peer_text = f", the peer {peer.result.rate / floor.rate:.2f}× it" if peer and peer.result else ""
            lines.append(
                f"  - {scenario_id}: idp {idp.result.rate / per_core / floor.rate:.0%} of the stack floor{peer_text}."
            )
    return lines


def _section_notes(section: Section, ceiling: Argon2Ceiling) -> list[str]:
    notes = []
    password = section.runs.get(("code_flow_password", "idp"))
    if password and password.result:
        cores = section.workers
        share = password.result.rate / (ceiling.verifications_per_second * cores)
        notes.append(
            f"- Password login: {password.result.rate:.1f} logins/s = **{share:.0%} of the Argon2 ceiling** "
            f"({ceiling.verifications_per_second:.2f} verifications/s per core × {cores} core"
            f"{'s' if cores > 1 else ''})."
        )
    notes += _floor_notes(section)
    for (scenario_id, server), measured in section.runs.items():
        if measured.failure or (measured.result and measured.result.errors):
            detail = measured.failure or "; ".join(measured.result.error_samples if measured.result else [])
            notes.append(f"- {server} {scenario_id}: {detail or 'errors (no sample)'}")
    return notes


def render_report(sections: list[Section], machine: Machine, ceiling: Argon2Ceiling, settings: list[str]) -> str:
    return "\n".join(
        [
            *report_head("benchmark", machine, settings),
            f"- Argon2id: time_cost {ceiling.time_cost}, memory {ceiling.memory_kib // 1024} MiB, parallelism 1 "
            f"(idp's production defaults); ceiling {ceiling.verifications_per_second:.2f} verifications/s on one core",
            "",
            "## How to read the tables",
            "",
            HOW_TO_READ,
            "",
            "## Results",
            "",
            render_tables(sections, ceiling),
        ]
    )


def report_head(what: str, machine: Machine, settings: list[str]) -> list[str]:
    """A results file's title, machine and settings (bench.run's and bench.soak's)."""
    dirty = " (working tree with uncommitted changes)" if machine.dirty else ""
    return [
        f"# idp {what}, {machine.date}, commit {machine.commit}{dirty}",
        "",
        "## Machine",
        "",
        f"- {machine.nproc} cores (nproc), {machine.cpu_model}, {machine.memory_gib:.0f} GiB, Linux {machine.kernel}",
        f"- Python {machine.python}, Node {machine.node}, {machine.wrk}",
        "",
        "## Settings",
        "",
        *[f"- {line}" for line in settings],
    ]


HOW_TO_READ = f"""\
- One row per scenario. **idp /s** is completed requests per second (`req/s`) or complete
  flows per second (`flow/s`: authorize → login/consent as needed → code → token exchange);
  p50/p99 are latencies of one request or one whole flow, in milliseconds, at the stated
  number of concurrent connections. **errors** counts non-2xx/3xx answers, socket errors and
  failed flows; any non-zero value makes the row suspect.
- **CPU %** is the server's CPU time over the measured window, summed over its process tree
  (100 = one core fully busy). **RSS MB** is the tree's resident memory at the end of the
  scenario. The same columns follow for the peer (node-oidc-provider, in-memory storage).
  PostgreSQL and Redis are outside the tree: their CPU is not in idp's column (nor pinned).
- **idp/peer** is idp's throughput over the peer's, measured in the same run, alternating
  (idp A, peer A, idp B, peer B …), on the same core. Above 1.00× idp is faster.
- **peer+Redis** (PostgreSQL + Redis sections): the same peer with its Redis adapter
  (bench/peers/oidc-provider/redis_adapter.mjs), the shape oidc-provider documents for
  production: every session, code, token and grant in Redis, as idp keeps them out of
  process too. **idp/peer+Redis** is idp's throughput over it, in the same alternation.
- {NO_PASSWORD} The peer has no password step: its "password login" row is a plain code flow
  through a fresh session (its login and consent interactions, no hashing), so no ratio.
- **Keycloak /s/vCPU** is Keycloak's published sizing figure per vCPU (15 password logins,
  120 client-credentials grants, 120 refresh grants); **idp/Keycloak** divides idp's rate per
  worker process (one core each) by it.
- **load CPU %** is the load generator's own CPU (wrk, or the flow driver from
  /proc/self/stat) for idp / for the peer. Near 100 per process would mean the load
  generator, not the server, is the limit.
- The password-login rate is also given as a share of the **Argon2 ceiling**: how many
  Argon2id verifications per second one core can do; the gap is everything else a login costs."""


LAYERS_HEADING = "#### Where the time goes"
LAYERS_NOTE = (
    "In-process (`python -m bench.inprocess --layers`: the app called as a bare ASGI callable on "
    "SQLite, no socket, no HTTP parser): each machine scenario's median µs per request, then "
    "the share of its own time under cProfile by where the code lives. cProfile slows Python "
    "code more than C, so the shares lean towards the Python layers; `--profile SCENARIO` "
    "lists the functions."
)
README_BEGIN = "<!-- bench table -->"
README_END = "<!-- /bench table -->"


def update_readme(readme: Path, results: Path, machine: Machine, tables: str, layers: str) -> None:
    """Puts this run's tables and the time-by-layer table between the README's markers."""
    text = readme.read_text()
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    block = (
        f"\nLatest run (`{results}`; {machine.nproc} × {machine.cpu_model}, commit {machine.commit}; ratios "
        "from one run: compare them within a run, not figures across runs).\n\n"
        f"{tables}\n\n{layers}\n"
    )
    readme.write_text(text[:start] + block + text[end:])
