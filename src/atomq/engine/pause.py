"""Per-queue pause: workers stop claiming from a paused queue; everything else goes on.

``rq suspend`` stops every worker. During one platform's outage an operator rather holds one
queue (``social_media``) while the others keep flowing, as Sidekiq Pro and BullMQ allow. A
paused queue keeps receiving jobs (enqueued, or moved there by the scheduler when due) and
its counts read as before; only workers leave it alone until it is resumed. Jobs that a
worker had already claimed or started when the pause came finish normally.

One hash, :data:`atomq.core.keys.PAUSED_QUEUES`, maps each paused queue to the epoch
seconds since which it is paused (``/metrics`` turns that into a gauge an alert can watch).
Workers read it through :class:`PauseWatch`: at most one ``HGETALL`` every
:data:`REFRESH_SECONDS`, so a pause reaches every worker within that (plus the job or the
idle wait, at most a second, in hand) while costing nothing per job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from atomq.core import keys
from atomq.engine.scripts import decode

#: A worker looks at the paused queues at most this often (seconds).
REFRESH_SECONDS = 0.5


def pause(connection: redis.Redis, queue: str, *, now: float | None = None) -> bool:
    """Pause ``queue``; True when it was running until now (a second pause keeps the first time)."""
    since = time.time() if now is None else now
    return bool(connection.hsetnx(keys.PAUSED_QUEUES, queue, repr(since)))


def resume(connection: redis.Redis, queue: str) -> bool:
    """Resume ``queue``; True when it was paused.

    No wake-up is needed: a worker idle on its other queues looks again within a second,
    and one whose every queue was paused sleeps in steps of :data:`REFRESH_SECONDS`.
    """
    return bool(connection.hdel(keys.PAUSED_QUEUES, queue))


def paused_queues(connection: redis.Redis) -> dict[str, float]:
    """Every paused queue with the epoch seconds since which it is paused."""
    raw = connection.hgetall(keys.PAUSED_QUEUES)
    out: dict[str, float] = {}
    for name, since in raw.items():
        try:
            out[decode(name)] = float(decode(since))
        except ValueError:  # written by hand: still paused, since unknown
            out[decode(name)] = 0.0
    return out


@dataclass(frozen=True)
class Claimable:
    """The queues a worker may claim from now, in its priority order, with their keys."""

    names: tuple[str, ...]
    queue_keys: tuple[str, ...]
    wake_keys: tuple[str, ...]


class PauseWatch:
    """What a worker may claim from, refreshed from Redis at most every ``refresh`` seconds.

    ``current()`` is called before every claim; between refreshes it returns the same
    :class:`Claimable`, built once per change of the paused set, so a busy worker pays a
    dictionary look-up per claim and one ``HGETALL`` per half second.
    """

    def __init__(
        self,
        connection: redis.Redis,
        queues: Sequence[str],
        *,
        refresh: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connection = connection
        self.queues = tuple(queues)
        self.refresh = refresh
        self.clock = clock
        self._checked = float("-inf")
        self._paused: frozenset[str] = frozenset()
        self._claimable = self._build(self._paused)

    def current(self) -> Claimable:
        """The queues to claim from (none when all are paused)."""
        now = self.clock()
        if now - self._checked >= self.refresh:
            paused = frozenset(decode(name) for name in self.connection.hkeys(keys.PAUSED_QUEUES))
            self._checked = now
            if paused != self._paused:
                self._paused = paused
                self._claimable = self._build(paused)
        return self._claimable

    def _build(self, paused: frozenset[str]) -> Claimable:
        names = tuple(q for q in self.queues if q not in paused)
        return Claimable(
            names=names,
            queue_keys=tuple(keys.queue_key(q) for q in names),
            wake_keys=tuple(keys.wake_key(q) for q in names),
        )
