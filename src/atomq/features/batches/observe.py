"""Batches on the dashboard, as progress bars (items ended of items, rate, estimated finish)."""

from __future__ import annotations

from datetime import datetime

from atomq.core.errors import BatchNotFoundError
from atomq.core.keys import ACTIVE_BATCHES
from atomq.engine.plugins import Context, ProgressItem, progress_source
from atomq.engine.scripts import decode
from atomq.features.batches.progress import batch_progress


@progress_source("batches", title="Batches", order=40)
def batches(ctx: Context, limit: int) -> list[ProgressItem]:
    """Batches not yet finished, with items ended of items, rate and estimated finish."""
    items = []
    for raw in ctx.connection.zrevrange(ACTIVE_BATCHES, 0, limit - 1):
        try:
            progress = batch_progress(ctx.connection, decode(raw))
        except BatchNotFoundError:
            continue
        rate = f"{progress.rate:.1f}/s" if progress.rate else None
        eta = f"done ~{progress.estimated_finish_at}" if progress.estimated_finish_at else None
        items.append(
            ProgressItem(
                kind="batch",
                ref=progress.id,
                title=progress.description or progress.task,
                status=progress.state,
                done=progress.ended,
                total=progress.total,
                failed=progress.failed,
                unit="items",
                started_at=datetime.fromisoformat(progress.started_at) if progress.started_at else None,
                detail=", ".join(part for part in (rate, eta) if part) or None,
            )
        )
    return items
