"""Named errors, so that callers (the CLI, a web app) can tell one failure from another.

Every error a user can cause derives from :class:`TaskctlError`; its message says
what was wrong and what is expected, and is fit to show as it is.
"""

from __future__ import annotations


class TaskctlError(Exception):
    """Base of every error taskctl raises on purpose."""


class SettingsError(TaskctlError):
    """An environment variable holds a value taskctl cannot use."""


class UnknownJobError(TaskctlError, LookupError):
    """A job name that is not in the catalog."""


class InvalidArgumentsError(TaskctlError, ValueError):
    """Arguments that do not fit the job's signature or its annotations.

    ``param`` names the parameter at fault, when there is one.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InvalidQueueError(TaskctlError, ValueError):
    """A queue name that is not one of the configured queues."""


class NoSuchJobError(TaskctlError, LookupError):
    """A job id that Redis does not know (never existed, or expired)."""


class RedisUnavailableError(TaskctlError, ConnectionError):
    """Redis did not answer at the configured URL (shown with its password masked)."""


class LeaseLostError(TaskctlError):
    """A run no longer holds its job's lease: another run or the recovery owns the job; nothing of it is recorded."""


class JobNotAllowedError(TaskctlError):
    """A job in Redis names a function outside the catalog; it is never imported."""


class CatalogError(TaskctlError):
    """The job catalog itself is inconsistent (two jobs with one name, say)."""


class WaitTimeoutError(TaskctlError, TimeoutError):
    """A job did not reach a final state within the time the caller would wait."""


class NoResultError(TaskctlError):
    """The job exists but has no result (yet): it is queued, started, or was canceled."""


class JobFailedError(NoResultError):
    """The job ended in failure; the message carries its error line."""


class PermanentError(Exception):
    """Raised by a job when trying again cannot help (a malformed address,
    an SMTP 5xx or an HTTP 4xx reply).

    The job goes straight to the failed jobs with this message; no retry is spent on it.
    """


class TransientError(Exception):
    """Raised by a job when the same call may succeed later (a timeout, an SMTP 4xx or
    HTTP 5xx reply, a refused connection)."""


class JobStateError(TaskctlError):
    """The job exists but is in a state where the operation makes no sense (requeue a finished job)."""


class DuplicateJobError(TaskctlError):
    """A unique job was enqueued while a job with the same id exists."""


class ScheduleError(TaskctlError):
    """The declared schedules cannot be used; the message names each bad schedule and its problem."""


class UnreadableJobError(TaskctlError):
    """A job in Redis whose data is not JSON: something other than taskctl wrote it. It is never run."""


class OutboxUnavailableError(TaskctlError, ConnectionError):
    """The outbox's database did not answer (or its SQLite file does not exist); the message names it."""


class NoSuchOutboxRowError(TaskctlError, LookupError):
    """A job id that no row of the outbox holds."""
