"""users.email_verified, and a verified address unique among users (case-insensitive)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # existing users: not verified (what the email_verified claim said of them until now)
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("email_verified", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index(
        "uq_users_verified_email",
        "users",
        [sa.text("lower(email)")],
        unique=True,
        sqlite_where=sa.text("email_verified"),
        postgresql_where=sa.text("email_verified"),
    )


def downgrade() -> None:
    op.drop_index("uq_users_verified_email", table_name="users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("email_verified")
