"""user lifecycle: users.password_must_change (`idp user set-password --must-change`),
users.deleted_at (`idp user delete` keeps a tombstone), and retired_names (keyed digests of
deleted users' usernames and verified addresses, refused on reuse)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMNs (no batch rebuild of users: its expression index would need recreating)
    op.add_column("users", sa.Column("password_must_change", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("users", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "retired_names",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(128), nullable=False, unique=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("retired_names")
    # SQLite drops a column by rebuilding the table, which loses the expression index: remake it
    op.drop_index("uq_users_verified_email", table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("password_must_change")
    op.create_index(
        "uq_users_verified_email",
        "users",
        [sa.text("lower(email)")],
        unique=True,
        sqlite_where=sa.text("email_verified"),
        postgresql_where=sa.text("email_verified"),
    )
