"""One JSON line per request on the `idp.access` logger (configured by idp/logging_config.py
for `idp serve`). The path is logged without its query string: query strings carry login
hints, states and, on relying parties' callbacks, codes, none of which belong in a log."""
from __future__ import annotations

import json
import logging

from idp.clock import utcnow

log = logging.getLogger("idp.access")
PATH_MAX = 200
USER_AGENT_MAX = 200


def write_request_line(*, request_id: str, method: str, path: str, endpoint: str, status: int, seconds: float,
                       ip: str | None, user_agent: str | None) -> None:
    log.info(json.dumps({
        "event": "request", "at": utcnow().isoformat(), "request_id": request_id, "method": method, "path": path[:PATH_MAX],
        "endpoint": endpoint, "status": status, "duration_ms": round(seconds * 1000, 3), "ip": ip,
        "user_agent": user_agent[:USER_AGENT_MAX] if user_agent else None,
    }, separators=(",", ":")))


def enabled() -> bool:
    return log.isEnabledFor(logging.INFO)

