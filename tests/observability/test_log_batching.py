"""The request log's handler (idp/observability/log_batching.py): lines leave in batches of
whole lines, at the latest a second after they were logged, at once when 64 KiB gather, and
all of them on close (a normal stop)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from idp.observability.access_log import request_line
from idp.observability.log_batching import BatchingStderrHandler

AT = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    path = tmp_path / "stderr"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        yield fd, path
    finally:
        os.close(fd)


def _logger(handler: logging.Handler, name: str) -> logging.Logger:
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def _line(n: int) -> str:
    return request_line(
        at=AT,
        request_id=f"{n:032x}",
        method="GET",
        path=f"/p/{n}",
        endpoint="unmatched",
        status=404,
        seconds=0.001,
        ip="127.0.0.1",
        user_agent="t",
    )


def test_lines_wait_for_the_periodic_flush_then_all_arrive_whole(target: tuple[int, Path]) -> None:
    fd, path = target
    handler = BatchingStderrHandler(fd=fd, flush_seconds=0.3)
    logger = _logger(handler, "test.batching.periodic")
    for n in range(50):
        logger.info(_line(n))
    assert path.read_text() == ""  # batched, not one write per line
    deadline = time.monotonic() + 5
    while path.read_text().count("\n") < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == [f"/p/{n}" for n in range(50)]
    handler.close()


def test_a_full_batch_is_written_at_once(target: tuple[int, Path]) -> None:
    fd, path = target
    handler = BatchingStderrHandler(fd=fd, flush_seconds=3600, max_bytes=4096)
    logger = _logger(handler, "test.batching.full")
    n = 0
    while path.read_text() == "" and n < 1000:
        logger.info(_line(n))
        n += 1
    written = path.read_text()
    assert written.endswith("\n") and len(written) >= 4096  # whole lines, never a cut one
    assert all(json.loads(line) for line in written.splitlines())
    handler.close()


def test_close_writes_what_is_left(target: tuple[int, Path]) -> None:
    fd, path = target
    handler = BatchingStderrHandler(fd=fd, flush_seconds=3600)
    logger = _logger(handler, "test.batching.close")
    logger.info(_line(7))
    assert path.read_text() == ""
    handler.close()
    assert json.loads(path.read_text())["request_id"] == f"{7:032x}"


def test_under_idp_serve_request_lines_take_the_direct_path(target: tuple[int, Path], monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The handler `idp serve` configures is also where write_request_line puts lines
    directly (no LogRecord); the lines are the same JSON."""
    import idp.observability.access_log as access_log

    fd, path = target
    monkeypatch.setattr(access_log, "_direct", None)  # restored afterwards: other tests use the logger
    handler = access_log.stderr_handler(fd=fd)
    assert access_log.enabled()
    access_log.write_request_line(
        at=AT,
        request_id="b" * 32,
        method="GET",
        path="/jwks",
        endpoint="/jwks",
        status=200,
        seconds=0.002,
        ip="127.0.0.1",
        user_agent="t",
    )
    assert path.read_text() == ""  # batched
    handler.close()
    assert json.loads(path.read_text())["request_id"] == "b" * 32
