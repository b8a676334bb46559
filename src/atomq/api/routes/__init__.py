"""One module per resource; ``ROUTERS`` lists what the app mounts."""

from __future__ import annotations

from fastapi import APIRouter

from atomq.api.routes import batches, health, job_control, queues, workflows

#: Every router the API serves, in the order they appear in the OpenAPI document.
ROUTERS: list[APIRouter] = [
    health.router,
    queues.router,
    # Issue 6: batches, long-running jobs, workflows.
    batches.router,
    job_control.router,
    workflows.router,
]
