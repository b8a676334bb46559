"""Workflow runs remember the user whose token started them.

Revision ID: 0004_workflow_run_owner
Revises: 0003_workflows
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_workflow_run_owner"
down_revision = "0003_workflows"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workflow_runs") as batch:
        batch.add_column(sa.Column("user_id", sa.String(128), nullable=True))
    op.create_index("ix_workflow_runs_user_created", "workflow_runs", ["user_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_workflow_runs_user_created", table_name="workflow_runs")
    with op.batch_alter_table("workflow_runs") as batch:
        batch.drop_column("user_id")
