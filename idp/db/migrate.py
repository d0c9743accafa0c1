"""Alembic migrations, found both in a checkout (top-level migrations/) and in the wheel.

Alembic itself is imported only to migrate (`idp db upgrade`): whether the schema is current
is asked at every start and by every readiness probe, and answering it through Alembic's
script directory kept 11 MB of Alembic resident in every server process. The head is read
from the migration files' own `revision` / `down_revision` lines instead, once per process
(tests/test_migrations.py checks that it names the head Alembic computes)."""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

from idp.resources import resource_dir

if TYPE_CHECKING:
    from alembic.config import Config

VERSION_TABLE = "alembic_version"  # Alembic's default, which migrations/env.py keeps
_REVISION = re.compile(r'^revision = "([^"]+)"$', re.MULTILINE)
_DOWN_REVISION = re.compile(r'^down_revision = (?:"([^"]+)"|None)$', re.MULTILINE)


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resource_dir("migrations")))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    from alembic import command

    command.upgrade(alembic_config(engine), "head")


@functools.cache
def head_revision() -> str:
    """The one revision no other migration names as its parent."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in sorted((resource_dir("migrations") / "versions").glob("*.py")):
        source = script.read_text(encoding="utf-8")
        revision, parent = _REVISION.search(source), _DOWN_REVISION.search(source)
        if revision is None or parent is None:
            raise RuntimeError(f'{script.name}: no `revision = "…"` or `down_revision = …` line')
        revisions.add(revision.group(1))
        if parent.group(1):
            parents.add(parent.group(1))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads ({sorted(heads)}); expected one")
    return heads.pop()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def is_current(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()
