"""Waiting for a job to end, woken by Redis: what the sync and asyncio ``wait()`` share.

Every ended attempt of a job adds an entry to RQ's results stream ``rq:results:<id>`` (the
fast worker's finish script, RQ's worker and atomq's failure paths all write there, in the
same step that sets the job's status). A waiter reads the job's status and newest entry in
one round trip; unless the job has already ended, it blocks on the stream (``XREAD BLOCK``)
from that newest entry, so Redis wakes it the moment the next attempt ends: a success ends
the wait there, anything else has the status read again (a failed attempt may be retried).
A job that ends without a result entry (canceled, or deleted on finishing by
``result_ttl=0``) is noticed when a block of at most :data:`WAIT_SLICE` seconds runs out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rq.results import Result

from atomq.core import keys
from atomq.core.errors import JobFailedError, JobNotFoundError
from atomq.core.options import JOB_ID_PATTERN
from atomq.engine.jobs import error_summary, result_from_entry

#: Statuses after which a job does nothing more.
ENDED = frozenset({"finished", "failed", "stopped", "canceled"})

#: Longest single block on the results stream (seconds). Ends that write no result entry
#: (a cancel, a job deleted as it finishes) are noticed within this.
WAIT_SLICE = 2.0

#: Where the stream is read from when it has no entry yet.
STREAM_START = "0-0"


@dataclass(frozen=True)
class Seen:
    """A job's status and newest result, read together."""

    job_id: str
    #: The stored status, or None when there is no such job.
    status: str | None
    #: Id of the newest results-stream entry (where a blocking read resumes).
    last_id: Any
    latest: Result | None

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def check_id(job_id: Any) -> str:
    """``job_id`` if it can name a job; else :class:`JobNotFoundError`."""
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise JobNotFoundError(f"no job with id {str(job_id)[:80]!r} (not a valid job id)", field="job_id")
    return job_id


def queue_reads(pipe: Any, job_id: str) -> None:
    """Queue on ``pipe`` the two reads :func:`seen_from` decodes."""
    pipe.hget(keys.job_key(job_id), "status")
    pipe.xrevrange(keys.results_key(job_id), "+", "-", count=1)


def seen_from(job_id: str, replies: list[Any], connection: Any) -> Seen:
    """Decode the replies of :func:`queue_reads`."""
    raw_status, entries = replies
    status = raw_status.decode() if isinstance(raw_status, bytes) else raw_status
    entry = entries[0] if entries else None
    return Seen(
        job_id,
        status,
        entry[0] if entry else STREAM_START,
        result_from_entry(job_id, entry, connection),
    )


def newest_entry(reply: Any) -> Any:
    """The newest entry of an ``XREAD`` reply on one stream, or None."""
    if not reply:
        return None
    # redis-py answers a list of [stream, entries] (RESP2) or a dict {stream: [entries]} (RESP3).
    streams = list(reply.values()) if isinstance(reply, dict) else [item[1] for item in reply]
    entries = streams[0] if streams else None
    return entries[-1] if entries else None


def finished_from(job_id: str, reply: Any, connection: Any) -> Seen | None:
    """What an ``XREAD`` that woke a waiter says when its entry is a success: the job has
    finished (the status is written in the same step as the entry, by atomq's and RQ's
    workers alike), so no second read is needed. None otherwise: a failed attempt may be
    retried, and only the job's status tells."""
    entry = newest_entry(reply)
    if entry is None:
        return None
    latest = result_from_entry(job_id, entry, connection)
    if latest is None or latest.type != Result.Type.SUCCESSFUL:
        return None
    return Seen(job_id, "finished", entry[0], latest)


def gone(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(
        f"job {job_id} no longer exists (deleted, or it finished with result_ttl=0, which keeps no result)",
        field="job_id",
    )


def missing(job_id: str) -> JobNotFoundError:
    return JobNotFoundError(
        f"no job with id {job_id!r} (it never existed, or its result has expired)", field="job_id"
    )


def outcome(seen: Seen) -> Any:
    """The return value of an ended job, or :class:`JobFailedError` for one that failed,
    was stopped or was canceled."""
    if seen.status == "finished":
        latest = seen.latest
        return latest.return_value if latest is not None and latest.type == Result.Type.SUCCESSFUL else None
    error = None
    if seen.latest is not None:
        if seen.latest.type == Result.Type.MAX_RETRIES_EXCEEDED:
            error = "maximum number of retries exceeded"
        elif seen.latest.exc_string:
            error = error_summary(seen.latest.exc_string)
    raise JobFailedError(seen.job_id, seen.status or "failed", error)


def block_ms(seconds: float) -> int:
    """An ``XREAD BLOCK`` time in milliseconds, never 0 (which would block for ever)."""
    return max(1, int(seconds * 1000))
