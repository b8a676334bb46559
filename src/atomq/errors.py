"""Every error atomq raises on purpose.

The tree (HTTP status in brackets, as the API reports it)::

    AtomqError
    ├── ConfigurationError              a setting is missing or malformed                  [500]
    ├── UnavailableError                a backing service cannot be reached                [503]
    │   ├── RedisUnavailableError       names host, port and db, never the password
    │   └── DatabaseUnavailableError    never shows the password
    ├── InvalidInputError               the caller sent something unusable                 [422]
    │   ├── TaskError
    │   │   ├── UnknownTaskError        no task is registered under that name
    │   │   └── TaskArgumentsError      arguments do not fit the task or are not JSON
    │   └── InvalidJobOptionError       an enqueue option is malformed (job id, time, queue)
    ├── NotFoundError                   no such object                                     [404]
    │   └── JobNotFoundError
    └── ConflictError                   the object's state forbids the operation           [409]
        ├── JobStateError               e.g. cancel a finished job
        ├── DuplicateJobError           ``unique=True`` and a job with that id exists
        └── UnreadableJobError          the job's stored record cannot be decoded

    JobFailure                          raised *by task code* to steer retries
    ├── RetryableError                  a retry may succeed (timeouts, 5xx, rate limits)
    └── PermanentError                  retrying cannot help; fail without using retries

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


class NotFoundError(AtomqError):
    """No object with the given id exists."""

    code = "not_found"


class JobNotFoundError(NotFoundError):
    """No job exists with the given id (it never existed, or its result expired)."""

    code = "job_not_found"


class ConflictError(AtomqError):
    """The object exists but its current state does not allow the operation."""

    code = "conflict"


class JobStateError(ConflictError):
    """The job's current state does not allow the operation."""

    code = "invalid_job_state"


class DuplicateJobError(ConflictError):
    """``unique=True`` was asked and a job with that id already exists."""

    code = "duplicate_job"


class UnreadableJobError(ConflictError):
    """A job exists but its stored record cannot be read (written by hand, or corrupted)."""

    code = "unreadable_job"


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


class PermanentError(JobFailure):
    """Raise from a task when retrying cannot help: the job fails at once, keeping its retries."""
