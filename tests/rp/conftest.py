"""Fixtures for the relying-party software suites (tests/rp): one Debian Chromium per module,
and per test a fresh browser profile whose every page is watched for CSP violations.

Each module starts its own `idp serve` (tests/support/idp_server.py) with the clients its
RP software needs, and serves that RP on another origin: http://127.0.0.1:PORT, while the
issuer is http://localhost:PORT, so the RP is another site as well as another origin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.chromium import chromium
from tests.support.csp import CspViolations


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile (no cookies, no storage) per test."""
    context = browser.new_context()
    context.set_default_timeout(10_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def csp(context: Any) -> CspViolations:
    """Every CSP violation any page of the test's profile reports; tests end with assert_none()."""
    return CspViolations.record(context)


@pytest.fixture
def page(context: Any, csp: CspViolations) -> Any:
    return context.new_page()
