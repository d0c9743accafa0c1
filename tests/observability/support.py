"""Helpers for the observability tests: reading /metrics as the Prometheus server would,
and the request log's lines captured from the `idp.access` logger."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.testclient import TestClient

from tests.conftest import ISSUER

LOOPBACK = ("127.0.0.1", 5000)
Labels = dict[str, str]


class Samples:
    """One scrape: every sample by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in self.families.values():
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        """The value of one sample (0 when the series does not exist yet)."""
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and wanted <= ls)

    def series(self, name: str) -> list[Labels]:
        return [dict(ls) for (n, ls) in self.values if n == name]


def scrape(app: Starlette) -> Samples:
    """GET /metrics from loopback, as Prometheus on the same host does. A TestClient of its
    own, without lifespan, so it never stops the services the test's client is using."""
    response = TestClient(app, base_url=ISSUER, client=LOOPBACK).get("/metrics")
    assert response.status_code == 200, response.text
    return Samples(response.text)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return after.total(name, **labels) - before.total(name, **labels)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured(logger_name: str, level: int = logging.INFO) -> Iterator[list[logging.LogRecord]]:
    """The records of one logger, by a handler on that logger itself: it works whether or
    not the logger propagates (`idp serve`'s logging config makes idp.access not propagate)."""
    logger = logging.getLogger(logger_name)
    handler = _Lines()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def json_lines(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    lines = []
    for record in records:
        message = record.getMessage()
        assert "\n" not in message and "\r" not in message, f"a log line broken in two: {message!r}"
        lines.append(json.loads(message))
    return lines
