"""Long-running jobs: progress, liveness (a heartbeat from the job's own process) and a clean stop.

* :mod:`~atomq.features.longjobs.progress` - ``report_progress``, ``job_stopping``, the live hash;
* :mod:`~atomq.features.longjobs.stopping` - ``stop_job``: ask first, kill after a grace period;
* :mod:`~atomq.features.longjobs.hooks` - what workers call around each run.
"""

from __future__ import annotations

from atomq.engine.plugins import Feature

FEATURE = Feature("longjobs", hooks=("atomq.features.longjobs.hooks",))
