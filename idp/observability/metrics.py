"""Prometheus metrics (served at /metrics by idp/web/metrics_endpoint.py).

With one process the values live in this process's default registry. With several
(`idp serve --workers N`), prometheus-client's multi-process mode keeps each worker's values
in files under PROMETHEUS_MULTIPROC_DIR and /metrics sums them (idp/observability/
multiprocess.py prepares the directory). The mode is chosen when prometheus_client is first
imported, so nothing may import this module before `idp serve` has set the variable.

Labels are only ever values from a closed set (route templates, methods, grant types, audit
kinds written in our code): a label taken from a request would let any client create
unbounded series.
"""

from __future__ import annotations

import os
import threading

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from idp.observability.multiprocess import MULTIPROC_ENV

# The text format every Prometheus version reads (2.x does not know 1.0.0's content type).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# `*_created` series double the output and no dashboard reads them.
disable_created_metrics()

# Discovery and JWKS answer in well under a millisecond; Argon2 logins in a few hundred.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

http_requests = Counter(
    "idp_http_requests",
    "HTTP requests answered, by route template, method and status",
    ("endpoint", "method", "status"),
)
http_latency = Histogram(
    "idp_http_request_duration_seconds",
    "Time to answer a request, by route template and method",
    ("endpoint", "method"),
    buckets=LATENCY_BUCKETS,
)
logins = Counter(
    "idp_logins",
    "Login steps by method (password, totp, backup_code, passkey) and outcome "
    "(success, failure, refused = locked before any check)",
    ("method", "outcome"),
)
sign_ins = Counter("idp_sign_ins_completed", "Login chains completed, by assurance level reached", ("acr",))
lockouts = Counter("idp_lockouts", "Accounts locked by too many failed attempts")
rate_limit_hits = Counter("idp_rate_limit_hits", "Requests refused by a rate limit, by scope", ("scope",))
tokens_issued = Counter("idp_tokens_issued", "Token responses issued, by grant type", ("grant_type",))
backchannel_deliveries = Counter(
    "idp_backchannel_logout_deliveries", "Back-channel logout deliveries, by outcome", ("outcome",)
)
audit_events = Counter("idp_audit_events", "Audit events recorded, by kind and outcome", ("kind", "outcome"))

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_OUTCOMES = frozenset({"success", "failure", "refused"})


def count_audit_event(kind: str, outcome: str | None, detail: dict[str, object]) -> None:
    """The audit trail is the one place every security event passes, so the security
    counters are derived from it (idp/audit/trail.py calls this for each event). Counted
    when recorded: an event whose transaction then fails (a 500) is still counted, which a
    counter of attempts can live with."""
    audit_events.labels(kind, outcome or "none").inc()
    area, _, verb = kind.rpartition(".")
    # each login step audits as login.<step>.succeeded|failed: its method label is its name
    method = area[len("login.") :] if area.startswith("login.") else None
    if method:
        logins.labels(method, outcome if outcome in _OUTCOMES else "failure").inc()
    elif kind == "login.refused":
        logins.labels("any", "refused").inc()
    elif kind == "login.succeeded":
        sign_ins.labels(str(detail.get("acr") or "unknown")).inc()
    elif kind == "account.locked":
        lockouts.inc()
    elif kind == "token.issued":
        tokens_issued.labels(str(detail.get("grant_type") or "unknown")).inc()
    elif kind == "logout.backchannel":
        backchannel_deliveries.labels(outcome or "unknown").inc()


class RequestCounters:
    """The per-request counter and histogram children, looked up once per (endpoint, method,
    status) instead of through `.labels()` on every request (it takes a lock and builds a
    key each time)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str, int], object] = {}
        self._latencies: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        if method not in HTTP_METHODS:
            method = "other"  # the request line is client input: any token is a valid method
        count = self._counts.get((endpoint, method, status))
        latency = self._latencies.get((endpoint, method))
        if count is None or latency is None:
            with self._lock:
                count = self._counts.setdefault(
                    (endpoint, method, status), http_requests.labels(endpoint, method, str(status))
                )
                latency = self._latencies.setdefault((endpoint, method), http_latency.labels(endpoint, method))
        count.inc()  # type: ignore[attr-defined]
        latency.observe(seconds)  # type: ignore[attr-defined]


request_counters = RequestCounters()


def is_multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def exposition() -> tuple[bytes, str]:
    """The text a Prometheus scrape gets: this process's registry, or every worker's values
    summed from the multi-process directory."""
    if is_multiprocess():
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE
    return generate_latest(REGISTRY), CONTENT_TYPE
