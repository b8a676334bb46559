"""Recurring jobs: cron expressions or intervals, each in its own timezone, fired exactly once.

See :mod:`~atomq.features.recurring.schedules`.
"""

from __future__ import annotations

from atomq.engine.plugins import Feature

FEATURE = Feature("recurring", periodic=("atomq.features.recurring.schedules",))
