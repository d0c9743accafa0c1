"""Shared fixtures: every app-level test runs against SQLite and against the real
PostgreSQL server (CI's, at 127.0.0.1:5432, database `test`). In CI a missing
PostgreSQL fails the run; on a laptop without one those tests skip and say why."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from starlette.applications import Starlette
from starlette.testclient import TestClient

from idp.app import create_app
from idp.db.engine import make_engine
from idp.db.migrate import upgrade
from idp.settings import Settings, load_settings
from idp.state.memory import MemoryStore
from tests.support.clock import ManualClock
from tests.support.seed import seed

POSTGRES_SERVER_URL = os.environ.get("IDP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# One schema per test run, so two runs on one server (a laptop, CI beside a session) never collide.
POSTGRES_SCHEMA = f"idp_test_{os.getpid()}"
POSTGRES_URL = f"{POSTGRES_SERVER_URL}?options=-csearch_path%3D{POSTGRES_SCHEMA}"
IN_CI = bool(os.environ.get("CI"))
ISSUER = "http://localhost:8000"


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI is set: this must run, not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine]:
    engine = make_engine(POSTGRES_URL, pool_size=5)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {POSTGRES_SCHEMA} CASCADE"))
            conn.execute(text(f"CREATE SCHEMA {POSTGRES_SCHEMA}"))
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no PostgreSQL"
        engine.dispose()
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_SERVER_URL}: {type(exc).__name__}")
    upgrade(engine)
    yield engine
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {POSTGRES_SCHEMA} CASCADE"))
    engine.dispose()


def _truncate_all(engine: Engine) -> None:
    with engine.begin() as conn:
        tables = [
            r[0]
            for r in conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'alembic_version'"
                )
            )
        ]
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/idp.db"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        return url
    _truncate_all(request.getfixturevalue("postgres_engine"))
    return POSTGRES_URL


@pytest.fixture
def settings(database_url: str, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return load_settings(
        environ={},
        issuer=ISSUER,
        database_url=database_url,
        secret_key="test-master-key-" + "k" * 32,
        data_dir=str(tmp_path / "var"),
        argon2_time_cost=1,
        argon2_memory_kib=8192,
        max_concurrent_hashes=2,
        # the limits get their own tests (tests/security/test_rate_limits.py); elsewhere a
        # test's dozens of requests from one address must not trip them
        rate_limit_login_ip="off",
        rate_limit_login_account="off",
        rate_limit_token_client="off",
        rate_limit_site_ip="off",
        rate_limit_login_failures_ip="off",
        rate_limit_passkey_options_ip="off",
        rate_limit_authorize_ip="off",
    )


@pytest.fixture
def clock() -> ManualClock:
    """The app's time: a test advances it instead of sleeping (tests/support/clock.py)."""
    return ManualClock()


@pytest.fixture
def app(settings: Settings, clock: ManualClock) -> Starlette:
    app = create_app(settings, store=MemoryStore(), clock=clock)
    seed(app.state.services)
    return app


@pytest.fixture
def client(app: Starlette) -> Iterator[TestClient]:
    with TestClient(app, base_url=ISSUER) as test_client:
        yield test_client
