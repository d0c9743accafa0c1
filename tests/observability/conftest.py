"""The observability tests' fixture: an app built from the test's settings with some fields
replaced, seeded, and a TestClient on it with the peer address chosen."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from starlette.testclient import TestClient

from idp.app import create_app
from idp.settings import Settings
from idp.state.memory import MemoryStore
from tests.conftest import ISSUER
from tests.observability.support import LOOPBACK
from tests.support.seed import seed

MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(settings: Settings) -> Iterator[MakeClient]:
    """An app built from the test's settings with some fields replaced, and a TestClient on
    it; `client=(host, port)` sets the peer address. The first app seeds the database;
    later ones in the same test share it."""
    seeded = False
    with ExitStack() as stack:

        def make(
            *, client: tuple[str, int] = LOOPBACK, headers: dict[str, str] | None = None, **overrides: Any
        ) -> TestClient:
            app = create_app(dataclasses.replace(settings, **overrides), store=MemoryStore())
            nonlocal seeded
            if not seeded:
                seed(app.state.services)
                seeded = True
            return stack.enter_context(TestClient(app, base_url=ISSUER, client=client, headers=headers))

        yield make
