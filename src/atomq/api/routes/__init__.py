"""One module per resource; ``ROUTERS`` lists what the app mounts."""

from __future__ import annotations

from fastapi import APIRouter

from atomq.api.routes import (
    accounts,
    batches,
    dashboard,
    failed,
    health,
    job_control,
    jobs,
    metrics,
    posts,
    queues,
    workers,
    workflows,
)

#: Every router the API serves, in the order they appear in the OpenAPI document.
ROUTERS: list[APIRouter] = [
    health.router,
    queues.router,
    jobs.router,
    failed.router,
    workers.router,
    metrics.router,
    dashboard.router,  # /dashboard (HTML, left out of the OpenAPI document)
    posts.router,
    accounts.router,
    # Issue 6: batches, long-running jobs, workflows.
    batches.router,
    job_control.router,
    workflows.router,
]
