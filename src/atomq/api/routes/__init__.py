"""One module per resource; ``ROUTERS`` lists what the app mounts."""

from __future__ import annotations

from fastapi import APIRouter

from atomq.api.routes import (
    accounts,
    batches,
    dashboard,
    dashboard_ops,
    dashboard_records,
    failed,
    health,
    history,
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
    history.router,  # issue 15: GET /api/v1/tasks/stats
    jobs.router,
    failed.router,
    workers.router,
    metrics.router,
    dashboard.router,  # /dashboard (HTML, left out of the OpenAPI document)
    dashboard_ops.router,  # issue 15: queue pages, pause buttons, chart data
    dashboard_records.router,  # issue 15: posts, workflow runs, batches
    posts.router,
    accounts.router,
    # Issue 6: batches, long-running jobs, workflows.
    batches.router,
    job_control.router,
    workflows.router,
]
