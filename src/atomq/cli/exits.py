"""Exit codes of the ``atomq`` command, named so scripts and tests can rely on them."""

from __future__ import annotations

#: Success.
OK = 0
#: The command ran and found a problem (``doctor`` checks failed, a waited-for job failed).
FAILURE = 1
#: Bad usage or invalid input (click uses 2 for its own usage errors too).
USAGE = 2
#: Redis could not be reached.
UNAVAILABLE = 3
#: The configuration is invalid.
CONFIG = 4
#: The job, task or queue named does not exist.
NOT_FOUND = 5
#: The object exists but its state forbids the operation (cancel a finished job).
CONFLICT = 6
#: Interrupted with Ctrl-C.
INTERRUPTED = 130
