"""Accounts and scheduled posts.

Revision ID: 0002_posts
Revises: 0001_base
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from atomq.db.base import UTCDateTime

revision = "0002_posts"
down_revision = "0001_base"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("platform", sa.String(16), nullable=False),
        sa.Column("handle", sa.String(255), nullable=False),
        sa.Column("url", sa.String(2048), nullable=True),
        sa.Column("credentials", sa.Text(), nullable=True),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("removed_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "platform IN ('mastodon', 'webhook', 'outbox')", name=op.f("ck_accounts_platform")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
    )
    op.create_index(
        "uq_accounts_live_handle",
        "accounts",
        ["user_id", "platform", "handle"],
        unique=True,
        sqlite_where=sa.text("removed_at IS NULL"),
        postgresql_where=sa.text("removed_at IS NULL"),
    )
    op.create_table(
        "scheduled_posts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("media_urls", sa.JSON(), nullable=False),
        sa.Column("scheduled_for", UTCDateTime(), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(128), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempt_id", sa.String(64), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("first_sent_at", UTCDateTime(), nullable=True),
        sa.Column("job_replacements", sa.Integer(), nullable=False),
        sa.Column("platform_post_id", sa.String(255), nullable=True),
        sa.Column("platform_url", sa.String(2048), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("published_at", UTCDateTime(), nullable=True),
        sa.Column("canceled_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('scheduled', 'publishing', 'published', 'failed', 'canceled', 'unconfirmed')",
            name=op.f("ck_scheduled_posts_status"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_scheduled_posts_account_id_accounts"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduled_posts")),
    )
    op.create_index("ix_scheduled_posts_due", "scheduled_posts", ["scheduled_for", "id"])
    op.create_index("ix_scheduled_posts_status_due", "scheduled_posts", ["status", "scheduled_for", "id"])
    op.create_index(
        "ix_scheduled_posts_account_due", "scheduled_posts", ["account_id", "scheduled_for", "id"]
    )
    op.create_index("ix_scheduled_posts_user_due", "scheduled_posts", ["user_id", "scheduled_for", "id"])


def downgrade() -> None:
    op.drop_table("scheduled_posts")
    op.drop_index("uq_accounts_live_handle", table_name="accounts")
    op.drop_table("accounts")
