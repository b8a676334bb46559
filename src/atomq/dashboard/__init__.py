"""What the web dashboard shows, and the interfaces other features plug into.

Nothing here imports FastAPI: the pages (``atomq/api/routes/dashboard.py``) render what
:func:`atomq.dashboard.overview.gather` returns. Features that have their own records
(scheduled posts, workflow runs, batches) add themselves through the small registries in
:mod:`atomq.dashboard.sections` instead of editing the pages:

* a **timeline source** returns :class:`~atomq.dashboard.sections.TimelineItem` s (things due
  at a time: scheduled jobs, scheduled posts, workflow steps waiting for a timer);
* a **progress source** returns :class:`~atomq.dashboard.sections.ProgressItem` s (things
  made of parts: workflow runs, batches, long jobs).

List the module that registers them in :data:`~atomq.dashboard.sections.SOURCE_MODULES`.
"""

from __future__ import annotations
