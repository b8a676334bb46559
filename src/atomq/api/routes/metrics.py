"""``GET /metrics``: Prometheus text format (see :mod:`atomq.ops.metrics`).

It needs a token with the ``read`` scope, like every other read (Prometheus sends one with
``authorization: {credentials: ...}`` in its scrape config). ``ATOMQ_METRICS_PUBLIC=true``
serves it without a token, for a Prometheus on a private network that should not hold secrets.
A rendering is reused for ``ATOMQ_METRICS_CACHE_SECONDS`` (1 s), so a burst of scrapers costs
one read of Redis.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.security import HTTPAuthorizationCredentials

from atomq.api.auth import Principal
from atomq.api.deps import State, bearer, current_principal, require
from atomq.api.jsonio import JsonRoute
from atomq.ops.metrics import CONTENT_TYPE

router = APIRouter(tags=["metrics"], route_class=JsonRoute)

_read = require("read")


async def metrics_access(
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    principal: Annotated[Principal | None, Depends(current_principal)],
) -> None:
    """Let the scrape through when metrics are public, else demand the read scope."""
    if not state.settings.metrics_public:
        await _read(credentials, principal)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
    dependencies=[Depends(metrics_access)],
)
def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
