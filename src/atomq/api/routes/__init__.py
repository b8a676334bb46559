"""One module per resource; ``ROUTERS`` lists what the app mounts."""

from __future__ import annotations

from fastapi import APIRouter

from atomq.api.routes import accounts, dashboard, failed, health, jobs, metrics, posts, queues, workers

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
]
