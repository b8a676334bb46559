"""One module per resource; ``ROUTERS`` lists what the app mounts."""

from __future__ import annotations

from fastapi import APIRouter

from atomq.api.routes import accounts, health, posts, queues

#: Every router the API serves, in the order they appear in the OpenAPI document.
ROUTERS: list[APIRouter] = [
    health.router,
    queues.router,
    posts.router,
    accounts.router,
]
