"""Post events: each state change of a scheduled post, with its time (issue 15).

Revision ID: 0004_post_events
Revises: 0002_posts
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from atomq.db.base import UTCDateTime

revision = "0004_post_events"
down_revision = "0002_posts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "post_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("post_id", sa.String(64), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["post_id"],
            ["scheduled_posts.id"],
            name=op.f("fk_post_events_post_id_scheduled_posts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_post_events")),
    )
    op.create_index("ix_post_events_post_at", "post_events", ["post_id", "at", "id"])


def downgrade() -> None:
    op.drop_index("ix_post_events_post_at", table_name="post_events")
    op.drop_table("post_events")
