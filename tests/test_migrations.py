"""The Alembic migrations build exactly the schema the models describe, on SQLite and
PostgreSQL (a model change without a migration fails here)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from idp.db.engine import make_engine
from idp.db.migrate import alembic_config, current_revision, head_revision, is_current
from idp.db.models import Base


# SQLite cannot reflect expression indexes, so autogenerate skips uq_users_verified_email
# there (and says so); test_the_verified_email_index_is_partial_and_on_the_lower_case_address
# checks it on both databases instead.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based index")
def test_migrations_match_the_models(database_url):
    engine = make_engine(database_url)
    try:
        assert is_current(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_the_head_idp_reads_from_the_migration_files_is_alembics(database_url):
    """is_current answers without Alembic (idp/db/migrate.py): its head must be Alembic's."""
    from alembic.script import ScriptDirectory

    engine = make_engine(database_url)
    try:
        assert head_revision() == ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_a_database_one_migration_behind_or_never_migrated_is_not_current(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/behind.db")
    try:
        assert current_revision(engine) is None and not is_current(engine)
        command.upgrade(alembic_config(engine), "head")
        assert is_current(engine)
        command.downgrade(alembic_config(engine), "-1")
        assert current_revision(engine) is not None and not is_current(engine)
    finally:
        engine.dispose()


def index_definition(engine: Engine, name: str) -> str:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
        else:
            query = "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND indexname = :name"
        return str(conn.execute(text(query), {"name": name}).scalar_one())


def test_the_verified_email_index_is_partial_and_on_the_lower_case_address(database_url):
    engine = make_engine(database_url)
    try:
        definition = " ".join(index_definition(engine, "uq_users_verified_email").lower().split())
    finally:
        engine.dispose()
    assert "unique index" in definition
    assert "lower(" in definition and "email" in definition
    assert "where email_verified" in definition


def insert_user(conn, name: str, email: str, verified: bool) -> None:  # type: ignore[no-untyped-def]
    conn.execute(
        text(
            "INSERT INTO users (subject, username, email, email_verified, disabled, require_mfa, created_at, updated_at) "
            "VALUES (:name, :name, :email, :verified, false, false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        ),
        {"name": name, "email": email, "verified": verified},
    )


def test_the_database_itself_refuses_a_second_user_with_the_same_verified_address(database_url):
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            insert_user(conn, "alice", "Alice@Example.com", True)
            insert_user(conn, "bob", "alice@example.com", False)  # unverified: anyone may type it
            insert_user(conn, "carol", "ALICE@example.com", False)
        with pytest.raises(IntegrityError, match="uq_users_verified_email"), engine.begin() as conn:
            conn.execute(text("UPDATE users SET email_verified = true WHERE username = 'bob'"))
        with pytest.raises(IntegrityError, match="uq_users_verified_email"), engine.begin() as conn:
            insert_user(conn, "dave", "alice@EXAMPLE.com", True)
        with engine.connect() as conn:
            verified = conn.execute(text("SELECT username FROM users WHERE email_verified")).scalars().all()
        assert verified == ["alice"]
    finally:
        engine.dispose()


def test_db_upgrade_of_an_existing_database_keeps_its_users_unverified(tmp_path: Path) -> None:
    """`idp db upgrade` from the release before email_verified, with users whose addresses
    differ only in case (allowed then, and still allowed while unverified)."""
    path = tmp_path / "idp.db"
    engine = make_engine(f"sqlite:///{path}")
    command.upgrade(alembic_config(engine), "0005")
    engine.dispose()
    with sqlite3.connect(path) as connection:
        for name, email in (("alice", "alice@example.com"), ("bob", "ALICE@example.com"), ("carol", None)):
            connection.execute(
                "INSERT INTO users (subject, username, email, disabled, require_mfa, created_at, updated_at) "
                "VALUES (?, ?, ?, 0, 0, '2026-01-01', '2026-01-01')",
                (name, name, email),
            )

    env = {name: value for name, value in os.environ.items() if not name.startswith("IDP_")}
    done = subprocess.run(
        [sys.executable, "-m", "idp", "db", "upgrade"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**env, "IDP_DATABASE_URL": f"sqlite:///{path}"},
    )

    assert done.returncode == 0, done.stderr
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT username, email, email_verified FROM users ORDER BY username").fetchall()
    assert rows == [("alice", "alice@example.com", 0), ("bob", "ALICE@example.com", 0), ("carol", None, 0)]
