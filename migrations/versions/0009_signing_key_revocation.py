"""signing keys can be revoked (revoked_at), and a scheduled rotation's successor names the key it
replaces (replaces_kid, unique: one successor however many processes find the key due)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("signing_keys") as batch:
        batch.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("replaces_kid", sa.String(length=64), nullable=True))
    op.create_index("uq_signing_keys_replaces_kid", "signing_keys", ["replaces_kid"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_signing_keys_replaces_kid", table_name="signing_keys")
    with op.batch_alter_table("signing_keys") as batch:
        batch.drop_column("replaces_kid")
        batch.drop_column("revoked_at")
