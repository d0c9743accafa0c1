"""groups and their members (per-application access, group minimum assurance, the groups
claim), and users.attributes (profile and custom claims set by an admin)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "groups",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=True),
        sa.Column("min_acr", sa.String(8), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "group_members",
        sa.Column("group_id", sa.Integer(), sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_group_members_user_id", "group_members", ["user_id"])
    # a plain ADD COLUMN (no batch rebuild of users: its expression index would need recreating)
    op.add_column("users", sa.Column("attributes", sa.JSON(), nullable=True))


def downgrade() -> None:
    # SQLite drops a column by rebuilding the table, which loses the expression index: remake it
    op.drop_index("uq_users_verified_email", table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("attributes")
    op.create_index(
        "uq_users_verified_email",
        "users",
        [sa.text("lower(email)")],
        unique=True,
        sqlite_where=sa.text("email_verified"),
        postgresql_where=sa.text("email_verified"),
    )
    op.drop_index("ix_group_members_user_id", table_name="group_members")
    op.drop_table("group_members")
    op.drop_table("groups")
