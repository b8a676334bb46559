"""Where a claimed job runs inside a worker: what each task has shown itself to be.

* ``async def`` tasks run on the worker's event loop, each taking one of its slots.
* A plain task that mostly *waits* (on the network, a database, a subprocess) gets a thread of
  its own: N of them wait at once.
* A plain task that mostly *computes* holds the interpreter's lock while it runs, so running
  several at once in one process is no faster than one after the other, only slower to
  finish each. Such jobs queue in the process's **CPU lane**, one thread running them in turn
  (a burst of quick jobs then costs one hand-over, not one per job, as the single-threaded
  worker did). Processes (``--count``) are what spread computing across cores.

What a task is comes from its runs: the share of a run's wall time that its thread spent on
the CPU (``time.thread_time``), averaged over recent runs. A task not seen yet runs in a
lane of its own, its jobs one after the other, until its first run says which it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Above this share of its wall time on the CPU, a task computes rather than waits.
CPU_BOUND_SHARE = 0.5

#: Weight of the newest run in the running averages.
EMA_WEIGHT = 0.2

Kind = Literal["async", "cpu", "wait", "unknown"]


@dataclass
class Profile:
    """What recent runs of one task looked like."""

    duration: float = 0.0
    cpu_share: float = 0.0
    runs: int = 0

    def observe(self, duration: float, cpu: float) -> None:
        share = min(1.0, cpu / duration) if duration > 0 else 1.0
        if self.runs == 0:
            self.duration, self.cpu_share = duration, share
        else:
            self.duration += EMA_WEIGHT * (duration - self.duration)
            self.cpu_share += EMA_WEIGHT * (share - self.cpu_share)
        self.runs += 1


class Profiles:
    """The profiles of the tasks one worker has run."""

    def __init__(self) -> None:
        self._profiles: dict[str, Profile] = {}
        #: Average duration of any run, and of runs of tasks that compute (the CPU lane's).
        self.duration = 0.0
        self.cpu_duration = 0.0

    def observe(self, task: str, duration: float, cpu: float | None) -> None:
        """Note a run of ``task`` (``cpu`` is None for async runs, which never use the lanes)."""
        self.duration = (
            duration if self.duration == 0 else self.duration + EMA_WEIGHT * (duration - self.duration)
        )
        if cpu is None:
            return
        profile = self._profiles.setdefault(task, Profile())
        profile.observe(duration, cpu)
        if profile.cpu_share >= CPU_BOUND_SHARE:
            self.cpu_duration = (
                duration
                if self.cpu_duration == 0
                else self.cpu_duration + EMA_WEIGHT * (duration - self.cpu_duration)
            )

    def kind(self, task: str, *, is_async: bool) -> Kind:
        """Where a job of ``task`` should run."""
        if is_async:
            return "async"
        profile = self._profiles.get(task)
        if profile is None:
            return "unknown"
        return "cpu" if profile.cpu_share >= CPU_BOUND_SHARE else "wait"

    def expected(self, task: str) -> float:
        """Expected seconds of a run of ``task`` (0 when unknown)."""
        profile = self._profiles.get(task)
        return profile.duration if profile is not None else 0.0
