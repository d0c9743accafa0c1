"""grants end whole: refresh_tokens.successor_handed_out (the grace period's successor is
handed out once), and the indexes that find a session's or a user's grants
(authorization_codes.sid, access_tokens.user_id)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN: a batch would reflect refresh_tokens and, through its foreign key,
    # users, whose expression index SQLite cannot reflect (a warning on every upgrade)
    op.add_column(
        "refresh_tokens", sa.Column("successor_handed_out", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_index(op.f("ix_authorization_codes_sid"), "authorization_codes", ["sid"], unique=False)
    op.create_index(op.f("ix_access_tokens_user_id"), "access_tokens", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_access_tokens_user_id"), table_name="access_tokens")
    op.drop_index(op.f("ix_authorization_codes_sid"), table_name="authorization_codes")
    with op.batch_alter_table("refresh_tokens") as batch:
        batch.drop_column("successor_handed_out")
