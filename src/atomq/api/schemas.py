"""Response models more than one resource shares."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class GuideStatusOut(BaseModel):
    """The guide's job status dictionary (``get_job_status``), times in ISO-8601 with offset."""

    job_id: str
    status: str
    created_at: str | None
    enqueued_at: str | None
    started_at: str | None
    ended_at: str | None
    result: Any = None
    error: str | None
