"""Microseconds per machine request inside one process: the app called as an ASGI callable,
no socket, no HTTP parser, no load generator. What it measures is idp's own work per
request (routing, client authentication, Authlib, SQL on SQLite, the response), so two
checkouts can be compared on one machine in one sitting, a change's cost read directly.

    .venv/bin/python -m bench.inprocess [--requests 2000] [--profile client_credentials]

--profile runs cProfile around one scenario's timed requests and prints where the time went
(own time and cumulative, the top 40 of each), for the README's "where the time goes".

Run it from the checkout to measure (it imports `idp` from the current directory). The
setup signs in through the hosted pages with the test suite's helpers; only the timed
requests go through the bare ASGI call below."""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import json
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from starlette.testclient import TestClient

from idp.app import create_app
from idp.db.engine import make_engine
from idp.db.migrate import upgrade
from idp.db.models import Client
from idp.settings import load_settings
from idp.state.memory import MemoryStore
from tests.support.rp import SHOP, AuthRequest, sign_in_and_get_code, tokens_for
from tests.support.seed import seed

ISSUER = "http://localhost:8000"
_BASIC = "Basic " + base64.b64encode(f"{SHOP[0]}:{SHOP[1]}".encode()).decode()


async def _call(
    app: Any, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []
    raw_headers = [(b"host", b"localhost:8000")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if body:
        raw_headers += [(b"content-type", b"application/x-www-form-urlencoded"), (b"content-length", b"%d" % len(body))]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 8000),
        "state": {},
    }
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await asyncio.sleep(3600)
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"]), b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _settings(workdir: str) -> Any:
    limit = "10000000/minute"  # checked on every request, never refusing (as `make bench`)
    return load_settings(
        environ={},
        issuer=ISSUER,
        database_url=f"sqlite:///{workdir}/idp.db",
        secret_key="bench-master-key-" + "k" * 32,
        data_dir=f"{workdir}/var",
        access_log=0,
        argon2_time_cost=1,
        argon2_memory_kib=8192,
        rate_limit_login_ip=limit,
        rate_limit_login_account=limit,
        rate_limit_token_client=limit,
        rate_limit_site_ip=limit,
        rate_limit_authorize_ip=limit,
    )


_PROFILE: dict[str, Any] = {"scenario": None, "all": False, "profilers": {}}


def measure(requests: int, *, access_tokens: str = "opaque") -> dict[str, float]:
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as workdir:
        settings = _settings(workdir)
        engine = make_engine(settings.database_url)
        upgrade(engine)
        engine.dispose()
        app = create_app(settings, store=MemoryStore())
        seed(app.state.services)
        if access_tokens == "jwt":
            _use_jwt_access_tokens(app.state.services)
        with TestClient(app, base_url=ISSUER) as client:
            tokens = tokens_for(client)
            # the variant measured is the one asked for (a JWT has two dots, an opaque token none)
            assert (tokens["access_token"].count(".") == 2) == (access_tokens == "jwt"), access_tokens
            codes = [sign_in_and_get_code(client, AuthRequest()) for _ in range(min(requests, 300))]

            def code_body(i: int) -> bytes:
                request, code = codes[i % len(codes)] if i < len(codes) else codes[-1]
                return urlencode(
                    {
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": request.redirect_uri,
                        "code_verifier": request.verifier,
                    }
                ).encode()

            scenarios: dict[str, tuple[str, str, Callable[[int], bytes], dict[str, str]]] = {
                "client_credentials": (
                    "POST",
                    "/token",
                    lambda i: b"grant_type=client_credentials&scope=profile",
                    {"authorization": _BASIC},
                ),
                "introspection": (
                    "POST",
                    "/introspect",
                    lambda i: urlencode({"token": tokens["access_token"]}).encode(),
                    {"authorization": _BASIC},
                ),
                "userinfo": ("GET", "/userinfo", lambda i: b"", {"authorization": f"Bearer {tokens['access_token']}"}),
                "jwks": ("GET", "/jwks", lambda i: b"", {}),
            }

            async def run_all() -> None:
                for name, (method, path, body_of, headers) in scenarios.items():
                    results[name] = await _timed(app, method, path, body_of, headers, requests)
                # refresh with rotation: each request presents the token the previous one got
                results["refresh_token"] = await _timed_refresh(app, tokens["refresh_token"], requests)
                results["authorization_code"] = await _timed(
                    app, "POST", "/token", code_body, {"authorization": _BASIC}, len(codes)
                )

            client.portal.call(run_all)  # type: ignore[union-attr]
    return results


async def _timed(
    app: Any, method: str, path: str, body_of: Callable[[int], bytes], headers: dict[str, str], n: int
) -> float:
    bodies = [body_of(i) for i in range(n)]
    for body in bodies[: min(20, n // 10)]:  # warm caches (not for codes: each is single use)
        if path != "/token" or b"authorization_code" not in body:
            await _call(app, method, path, body, headers)
    samples = []
    profiler = _profiler_for(path, bodies[0])
    if profiler is not None:
        profiler.enable()
    for body in bodies:
        start = time.perf_counter_ns()
        status, _ = await _call(app, method, path, body, headers)
        samples.append(time.perf_counter_ns() - start)
        assert status == 200, (path, status)
    if profiler is not None:
        profiler.disable()
    return statistics.median(samples) / 1000


def _profiler_for(path: str, body: bytes) -> cProfile.Profile | None:
    names = {"/introspect": "introspection", "/userinfo": "userinfo", "/jwks": "jwks"}
    name = names.get(path) or (body.split(b"&")[0].removeprefix(b"grant_type=").decode() if body else "")
    if not _PROFILE["all"] and name != _PROFILE["scenario"]:
        return None
    profiler = _PROFILE["profilers"][name] = cProfile.Profile()
    return profiler


def _use_jwt_access_tokens(services: Any) -> None:
    """The seeded client "shop" with access_token_format = "jwt" (as its clients file would say)."""
    with services.sessions.begin() as db:
        row = db.scalar(select(Client).where(Client.client_id == SHOP[0]))
        row.config = {**row.config, "access_token_format": "jwt"}
    services.oidc.clients.reload()


# Where a function's own time goes, by the file (or built-in) it is in: the first match wins.
LAYERS = (
    ("database driver", ("sqlite3", "psycopg", "'execute' of", "'commit' of")),
    ("SQLAlchemy", ("sqlalchemy",)),
    ("Authlib", ("authlib",)),
    ("crypto (JOSE, HMAC, hashes)", ("joserfc", "cryptography", "_hashlib", "hmac", "hashlib", "secrets", "urandom")),
    ("rate limits", ("limits/", "rate_limits")),
    ("audit, logs, metrics", ("idp/audit", "idp/observability", "prometheus_client", "logging", "json")),
    ("Starlette", ("starlette", "anyio")),
    ("idp (the rest)", ("/idp/",)),
)
OTHER = "other (stdlib, asyncio)"


def layer_of(filename: str, function: str) -> str:
    where = f"{filename} {function}"
    return next((layer for layer, marks in LAYERS if any(mark in where for mark in marks)), OTHER)


def time_by_layer(profiler: cProfile.Profile) -> dict[str, float]:
    """Share (0-1) of the profiled own time per layer."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    totals: dict[str, float] = {}
    for (filename, _, function), (_, _, own, _, _) in stats.items():
        layer = layer_of(filename, function)
        totals[layer] = totals.get(layer, 0.0) + own
    whole = sum(totals.values()) or 1.0
    return {layer: seconds / whole for layer, seconds in totals.items()}


def where_the_time_goes(requests: int = 500, *, access_tokens: str = "opaque") -> str:
    """A Markdown table: each machine scenario's median µs in-process (unprofiled), then the
    share of its own time by layer under cProfile (which slows Python code more than C)."""
    medians = measure(requests, access_tokens=access_tokens)
    _PROFILE.update(all=True, profilers={})
    measure(requests, access_tokens=access_tokens)
    profilers: dict[str, cProfile.Profile] = _PROFILE["profilers"]
    _PROFILE.update(all=False, profilers={})
    columns = [layer for layer, _ in LAYERS] + [OTHER]
    lines = [
        "| scenario | µs/request | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for name, micros in medians.items():
        shares = time_by_layer(profilers[name]) if name in profilers else {}
        cells = [f"{shares.get(c, 0.0) * 100:.0f}%" for c in columns]
        lines.append(f"| {name} | {micros:,.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def _timed_refresh(app: Any, first: str, n: int) -> float:
    samples = []
    current = first
    profiler = _profiler_for("/token", b"grant_type=refresh_token")
    if profiler is not None:
        profiler.enable()
    for _ in range(n):
        body = urlencode({"grant_type": "refresh_token", "refresh_token": current}).encode()
        start = time.perf_counter_ns()
        status, answer = await _call(app, "POST", "/token", body, {"authorization": _BASIC})
        samples.append(time.perf_counter_ns() - start)
        assert status == 200, status
        current = json.loads(answer)["refresh_token"]
    if profiler is not None:
        profiler.disable()
    return statistics.median(samples) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--profile", metavar="SCENARIO", help="client_credentials, introspection, userinfo, ...")
    parser.add_argument("--layers", action="store_true", help="every scenario's time by layer, as a Markdown table")
    parser.add_argument("--access-tokens", choices=("opaque", "jwt"), default="opaque")
    args = parser.parse_args()
    if args.layers:
        print(where_the_time_goes(args.requests, access_tokens=args.access_tokens))
        return
    _PROFILE["scenario"] = args.profile
    for name, micros in measure(args.requests, access_tokens=args.access_tokens).items():
        print(f"{name:20s} {micros:8.0f} µs (median of {args.requests if name != 'authorization_code' else 300})")
    if args.profile in _PROFILE["profilers"]:
        stats = pstats.Stats(_PROFILE["profilers"][args.profile])
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
