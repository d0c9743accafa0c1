"""The Alembic migrations build exactly the schema the models describe, on SQLite and
PostgreSQL (a model change without a migration fails here)."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from idp.db.engine import make_engine
from idp.db.migrate import is_current
from idp.db.models import Base


def test_migrations_match_the_models(database_url):
    engine = make_engine(database_url)
    try:
        assert is_current(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()
