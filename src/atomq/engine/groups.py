"""Job groups: the jobs of one group run one at a time, fairly beside every other group.

Enqueue with ``group="account:42"`` (scheduled posts use one group per account): the fast
worker's claim script lets one job of a group run; a job of the same group claimed meanwhile
is *parked* in the group's list (its status stays ``queued``) and the claim looks further, so
a group with thousands of jobs due at once neither fills a worker's slots with jobs that only
wait for their turn nor delays any other group. When the running job ends (finished, failed,
retried, stopped, deferred, given back, or recovered from a dead worker) the next parked job
goes to the front of its queue. Keys and scripts: ``atomq:group:<g>:running`` (a set of one),
``atomq:group:<g>:parked`` (a list), ``atomq:groups:parked`` (groups with parked jobs);
:mod:`atomq.engine.fast_scripts` holds the Lua.

What could leave a group blocked is repaired, not trusted: a running member whose job is no
longer started is dropped whenever the group is looked at, and the leading scheduler sweeps
groups with parked jobs every :data:`SWEEP_SECONDS` (a job whose end was recorded by a path
that did not know its group, a worker that vanished).

RQ's forking worker (``--worker-class rq``) does not know groups: it runs their jobs as any.
"""

from __future__ import annotations

import logging
from typing import Any

from atomq.engine.fast_scripts import GROUP_FUNCTIONS, GROUP_LEAVE
from atomq.engine.jobs import AtomqJob
from atomq.engine.plugins import Context, periodic

logger = logging.getLogger("atomq.groups")

#: How often the leading scheduler looks for groups whose parked jobs nobody will release.
SWEEP_SECONDS = 2.0

# For every group with parked jobs: drop running members whose job is no longer started, and
# when none runs any more, move the next parked job to the front of its queue.
# Returns the number of groups released.
_SWEEP = (
    GROUP_FUNCTIONS
    + """
local released = 0
for _, group in ipairs(redis.call('SMEMBERS', 'atomq:groups:parked')) do
    local running = 'atomq:group:' .. group .. ':running'
    local busy = false
    for _, member in ipairs(redis.call('SMEMBERS', running)) do
        if redis.call('HGET', 'rq:job:' .. member, 'status') == 'started' then
            busy = true
        else
            redis.call('SREM', running, member)
        end
    end
    if not busy then
        group_leave(group, '')
        released = released + 1
    end
end
return released
"""
)


def release(pipe: Any, job: AtomqJob) -> None:
    """Queue on ``pipe``: ``job`` stopped running; the next job of its group may start."""
    if job.group:
        pipe.eval(GROUP_LEAVE, 0, job.group, job.id)


@periodic("groups.sweep", interval=SWEEP_SECONDS)
def sweep(ctx: Context) -> None:
    """Release groups whose parked jobs wait for a job that is not running any more."""
    released = int(ctx.connection.eval(_SWEEP, 0))
    if released:
        logger.info("released %d job group(s) whose running job had ended", released)
