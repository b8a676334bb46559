"""Workflow records: stored definitions, runs and the state of each step of each run."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from atomq.db.base import Base, UTCDateTime, utcnow

# States are listed in atomq.features.workflows.tasks (RUN_STATES, STEP_STATES), free of SQLAlchemy.


class WorkflowDefinitionRecord(Base):
    """A workflow loaded from a file (``atomq workflows load``)."""

    __tablename__ = "workflow_definitions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str | None] = mapped_column(String(500))
    loaded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WorkflowRun(Base):
    """One execution of a workflow, with the definition it started with."""

    __tablename__ = "workflow_runs"
    __table_args__ = (
        Index("ix_workflow_runs_created", "created_at", "id"),
        # A user's runs, newest first (tokens bound to a user list only theirs).
        Index("ix_workflow_runs_user_created", "user_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workflow: Mapped[str] = mapped_column(String(64), index=True)
    #: Who started it, when a token bound to a user did (``None``: started by an unbound token,
    #: the CLI or code; only unbound tokens see those).
    user_id: Mapped[str | None] = mapped_column(String(128), default=None)
    status: Mapped[str] = mapped_column(String(16), index=True)
    input: Mapped[Any] = mapped_column(JSON, nullable=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    steps: Mapped[list[WorkflowStep]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="WorkflowStep.position"
    )


class WorkflowStep(Base):
    """The state of one step within one run."""

    __tablename__ = "workflow_steps"

    run_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("workflow_runs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    task: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    depends_on: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Bumped by each ``retry`` of the run: part of the job id, so a retried step is a new job.
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    #: Executions started (RQ retries included).
    tries: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[str | None] = mapped_column(String(160))
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    run: Mapped[WorkflowRun] = relationship(back_populates="steps")
