"""One JSON line per request on the `idp.access` logger (configured by idp/logging_config.py
for `idp serve`, where BatchingStderrHandler writes it). The path is logged without its
query string: query strings carry login hints, states and, on relying parties' callbacks,
codes, none of which belong in a log.

This runs on every request, discovery and JWKS included, so it is kept cheap: the line is
put together by hand (every client-supplied string through the C JSON string encoder, a
third of json.dumps's cost), and under `idp serve` it goes straight into the batching
stderr handler (`stderr_handler`), skipping the LogRecord that would cost four times the
line itself. Elsewhere (tests, embedding) lines go through the logger as usual."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from json.encoder import encode_basestring_ascii as _quoted  # type: ignore[attr-defined]

from idp.observability.log_batching import BatchingStderrHandler

log = logging.getLogger("idp.access")
PATH_MAX = 200
USER_AGENT_MAX = 200
_direct: Callable[[str], None] | None = None  # set when `idp serve` logs requests
_handler: BatchingStderrHandler | None = None


def stderr_handler(fd: int = 2) -> logging.Handler:
    """The request log's handler under `idp serve` (idp/logging_config.py names this factory
    only when IDP_ACCESS_LOG is on): a batching stderr handler, also taken as the direct path."""
    global _direct, _handler
    handler = BatchingStderrHandler(fd=fd)
    _direct = handler.write_line
    _handler = handler
    return handler


def flush() -> None:
    """Write out the lines still gathered, at the application's stop: a worker of
    `idp serve --workers N` is a multiprocessing child, which leaves by os._exit without
    running atexit, so logging.shutdown never flushes it (the last second of request lines
    was lost at every stop)."""
    if _handler is not None:
        _handler.flush()


def write_request_line(
    *,
    at: datetime,
    request_id: str,
    method: str,
    path: str,
    endpoint: str,
    status: int,
    seconds: float,
    ip: str | None,
    user_agent: str | None,
) -> None:
    line = request_line(
        at=at,
        request_id=request_id,
        method=method,
        path=path,
        endpoint=endpoint,
        status=status,
        seconds=seconds,
        ip=ip,
        user_agent=user_agent,
    )
    if _direct is not None:
        _direct(line)
    else:
        log.info(line)


def request_line(
    *,
    at: datetime,
    request_id: str,
    method: str,
    path: str,
    endpoint: str,
    status: int,
    seconds: float,
    ip: str | None,
    user_agent: str | None,
) -> str:
    return "".join(
        (
            '{"event":"request","at":',
            _quoted(at.isoformat()),
            ',"request_id":',
            _quoted(request_id),
            ',"method":',
            _quoted(method),
            ',"path":',
            _quoted(path[:PATH_MAX]),
            ',"endpoint":',
            _quoted(endpoint),
            ',"status":',
            str(int(status)),
            ',"duration_ms":',
            repr(round(seconds * 1000, 3)),
            ',"ip":',
            _string_or_null(ip),
            ',"user_agent":',
            _string_or_null(user_agent[:USER_AGENT_MAX] if user_agent else None),
            "}",
        )
    )


def _string_or_null(value: str | None) -> str:
    return "null" if value is None else _quoted(value)


def enabled() -> bool:
    return _direct is not None or log.isEnabledFor(logging.INFO)
