"""Every error atomq raises on purpose.

The tree (HTTP status in brackets, as the API reports it)::

    AtomqError
    ├── ConfigurationError              a setting is missing or malformed                  [500]
    ├── UnavailableError                a backing service cannot be reached                [503]
    │   ├── RedisUnavailableError       names host, port and db, never the password
    │   │   └── RedisFullError          Redis refused a write: maxmemory reached (noeviction)
    │   └── DatabaseUnavailableError    never shows the password
    ├── InvalidInputError               the caller sent something unusable                 [422]
    │   ├── TaskError
    │   │   ├── UnknownTaskError        no task is registered under that name
    │   │   └── TaskArgumentsError      arguments do not fit the task or are not JSON
    │   ├── InvalidJobOptionError       an enqueue option is malformed (job id, time, queue)
    │   ├── InvalidTextError            text that cannot be encoded as UTF-8 (a lone surrogate)
    │   └── DuplicateKeyError           a JSON body repeats a key within one object
    ├── NotFoundError                   no such object                                     [404]
    │   ├── JobNotFoundError
    │   ├── BatchNotFoundError
    │   ├── PostNotFoundError
    │   └── AccountNotFoundError
    ├── ConflictError                   the object's state forbids the operation           [409]
    │   ├── JobStateError               e.g. cancel a finished job
    │   ├── DuplicateJobError           a job with that id exists (and ``replace`` was not asked)
    │   ├── UnreadableJobError          the job's stored record cannot be decoded
    │   ├── PostStateError              e.g. edit or cancel a post that is being published
    │   ├── DuplicateAccountError       an account with that platform and handle exists
    │   └── AccountInUseError           remove an account that still has posts to publish
    ├── JobFailedError                  ``wait()``: the job failed, was stopped or canceled
    └── WaitTimeoutError                ``wait()``: the job had not ended in time (a TimeoutError)

    JobFailure                          raised *by task code* to steer retries
    ├── RetryableError                  a retry may succeed (timeouts, 5xx): uses one retry
    ├── PermanentError                  retrying cannot help; fail without using retries
    ├── Defer                           not now: run again after a delay, using no retry
    └── JobStopped                      the job was asked to stop: ends ``stopped``, no retry

Messages say what was wrong, with the offending value, and what to do about it.
Each error carries a machine-readable ``code`` and, where one input is to blame, a ``field``,
so the HTTP API and the CLI report them without parsing messages.
"""

from __future__ import annotations


class AtomqError(Exception):
    """Root of every error atomq raises on purpose."""

    code: str = "atomq_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class ConfigurationError(AtomqError):
    """A setting is missing or malformed."""

    code = "configuration_error"


class UnavailableError(AtomqError):
    """A service atomq needs (Redis, the database) cannot be reached."""

    code = "unavailable"


class RedisUnavailableError(UnavailableError):
    """Redis cannot be reached. The message names host, port and db, never the password."""

    code = "redis_unavailable"


class RedisFullError(RedisUnavailableError):
    """Redis refused a write because it reached ``maxmemory`` (policy ``noeviction``).

    Raised only when Redis refused the *whole* write: atomq writes a job (hash, queue or
    schedule entry, dependency and batch records) in one transaction or script, so nothing
    of it was stored. Retry once memory is freed or ``maxmemory`` raised.
    """

    code = "redis_full"


class DatabaseUnavailableError(UnavailableError):
    """The database cannot be reached. The message never shows the password."""

    code = "database_unavailable"


class InvalidInputError(AtomqError):
    """The caller sent something atomq cannot use; the message says what and why."""

    code = "invalid_input"


class TaskError(InvalidInputError):
    """Something is wrong with the task named in a call."""

    code = "task_error"


class UnknownTaskError(TaskError):
    """No task is registered under the given name."""

    code = "unknown_task"


class TaskArgumentsError(TaskError):
    """The arguments do not match the task's signature or cannot be stored as JSON."""

    code = "invalid_arguments"


class InvalidJobOptionError(InvalidInputError):
    """An enqueue option (job id, due time, queue, retry...) is malformed."""

    code = "invalid_option"


class InvalidTextError(InvalidInputError):
    """Text that cannot be encoded as UTF-8: a lone surrogate such as ``"\\ud800"``, which JSON
    escapes can carry but Redis, the database and every reply would choke on."""

    code = "invalid_text"


class DuplicateKeyError(InvalidInputError):
    """A JSON body repeats a key within one object (JSON parsers disagree on which one wins)."""

    code = "duplicate_key"


class NotFoundError(AtomqError):
    """No object with the given id exists."""

    code = "not_found"


class JobNotFoundError(NotFoundError):
    """No job exists with the given id (it never existed, or its result expired)."""

    code = "job_not_found"


class BatchNotFoundError(NotFoundError):
    """No batch with the given id (it never existed or its record expired)."""

    code = "batch_not_found"


class ConflictError(AtomqError):
    """The object exists but its current state does not allow the operation."""

    code = "conflict"


class JobStateError(ConflictError):
    """The job's current state does not allow the operation."""

    code = "invalid_job_state"


class DuplicateJobError(ConflictError):
    """A job with that id already exists (an explicit id is never silently taken over)."""

    code = "duplicate_job"


class UnreadableJobError(ConflictError):
    """A job exists but its stored record cannot be read (written by hand, or corrupted)."""

    code = "unreadable_job"


class JobFailedError(AtomqError):
    """The job a caller waits for ended without a result: it failed (retries used up), was
    stopped or was canceled. ``job_id``, ``status`` and ``error`` (the last line of the
    traceback, when there is one) say which and why."""

    code = "job_failed"

    def __init__(self, job_id: str, status: str, error: str | None) -> None:
        what = {"failed": "failed", "stopped": "was stopped", "canceled": "was canceled"}.get(status, status)
        super().__init__(f"job {job_id} {what}" + (f": {error}" if error else ""), field="job_id")
        self.job_id = job_id
        self.status = status
        self.error = error


class WaitTimeoutError(AtomqError, TimeoutError):
    """The job a caller waits for had not ended when the wait ran out (it may still end)."""

    code = "wait_timeout"

    def __init__(self, job_id: str, timeout: float, status: str | None) -> None:
        state = f" (still {status})" if status else ""
        super().__init__(
            f"job {job_id} did not end within {timeout:g} s{state}; wait again or check its status",
            field="job_id",
        )
        self.job_id = job_id
        self.timeout = timeout
        self.status = status


class PostNotFoundError(NotFoundError):
    """No scheduled post exists with the given id."""

    code = "post_not_found"


class AccountNotFoundError(NotFoundError):
    """No (non-removed) account exists with the given id."""

    code = "account_not_found"


class PostStateError(ConflictError):
    """The post's state does not allow the operation (it is publishing, or already published)."""

    code = "invalid_post_state"


class DuplicateAccountError(ConflictError):
    """An account with the same platform and handle already exists for that user."""

    code = "duplicate_account"


class AccountInUseError(ConflictError):
    """The account still has posts waiting to be published."""

    code = "account_in_use"


class JobFailure(Exception):
    """Base for exceptions that task code raises to tell the worker how to treat a failure."""


class RetryableError(JobFailure):
    """Raise from a task when trying again later may succeed.

    ``delay`` (seconds), when given, overrides the task's backoff for this retry
    (for example the value of a ``Retry-After`` header).
    """

    def __init__(self, message: str = "", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class Defer(JobFailure):
    """Raise from a task to run it again after ``delay`` seconds *without* counting an attempt.

    For waits that are not failures: a rate limit not yet refilled, an account busy with
    another publish. Unlike :class:`RetryableError` it consumes no retry and records no
    failure; the job goes back to ``scheduled``.
    """

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"deferred by {delay:.1f} s")
        self.delay = max(0.0, float(delay))
        self.reason = reason


class PermanentError(JobFailure):
    """Raise from a task when retrying cannot help: the job fails at once, keeping its retries."""


class JobStopped(JobFailure):
    """Raised in a task asked to stop (by :func:`atomq.raise_if_stopping`, a stop command or a
    cold shutdown); the worker records the job as ``stopped``: not failed, not retried."""
