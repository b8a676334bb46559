"""Batches: many calls of one task, queued together, followed and canceled as one.

* :mod:`~atomq.features.batches.progress` - the layout in Redis and progress reads;
* :mod:`~atomq.features.batches.tracking` - worker hooks, cancel, the reconciler;
* :mod:`~atomq.features.batches.observe` - batches on the dashboard.
"""

from __future__ import annotations

from atomq.engine.plugins import Feature

FEATURE = Feature(
    "batches",
    hooks=("atomq.features.batches.tracking",),
    periodic=("atomq.features.batches.tracking",),
    dashboard=("atomq.features.batches.observe",),
)
