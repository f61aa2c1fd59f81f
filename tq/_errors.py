"""Every exception tq raises or understands, in one hierarchy.

Two families live here:

* **Handler outcomes** (`Fatal`, `Ignore`, `Retry`, `Transient`): a handler
  raises one of them to tell Cloud Tasks what to do with the task. Any other
  exception counts as `Transient`. See `tq.asgi` for the HTTP statuses.
* **Errors tq raises at you** (subclasses of `TQError`):

  - `ConfigError`: a task class or dispatcher is misconfigured (raised at
    registration or start-up; the message says how to fix it).
  - `ValidationError`: a task handed to `add_task` is invalid (bad title,
    ETA too far, both delay and ETA, ...). Nothing was written.
  - `PayloadTooLarge` (a `ValidationError`): the task does not fit the store
    or Cloud Tasks. Nothing was written.
  - `TransactionError`: the task's kind does not match the context (a
    TRANSACTIONAL task outside a transaction, or the reverse).
  - `SubmitError`: the submitter failed; `code` is the gRPC status code and
    `transient` says whether trying again later may help.
"""

from __future__ import annotations

import grpc


class TQError(Exception):
    """Base class of the errors tq raises."""


class ConfigError(TQError, ValueError):
    """A task class, a queue or a dispatcher option is misconfigured."""


class ValidationError(TQError, ValueError):
    """A task given to `add_task` is invalid; nothing was written or submitted."""


class PayloadTooLarge(ValidationError):
    """The serialized task exceeds what the store or Cloud Tasks accepts."""


class TransactionError(TQError):
    """The task's kind does not fit the (lack of a) current transaction."""


class LeaseConflict(TQError):
    """The task is leased by another holder (the database queue's lease by name).

    `holder` is the other lease's owner and `until` when it ends (a UTC
    datetime), so the caller can say who has it and wait or give up.
    """

    def __init__(self, message: str, holder: str, until: object) -> None:
        super().__init__(message)
        self.holder = holder
        self.until = until


class TaskNotFound(TQError, LookupError):
    """No live task has that name in that queue (never added, finished or deleted)."""


# gRPC codes after which the same request may succeed later.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
    }
)


class SubmitError(TQError):
    """A submitter could not create the task.

    `code` is the gRPC status code of the failure. `ALREADY_EXISTS` never
    reaches callers of `add_task`: a task that exists already counts as
    submitted. `transient` is true for codes after which a retry may succeed
    (UNAVAILABLE, DEADLINE_EXCEEDED, ...); a permanent failure (NOT_FOUND for
    a missing queue, INVALID_ARGUMENT, PERMISSION_DENIED, ...) will fail again.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT_CODES

    @property
    def already_exists(self) -> bool:
        return self.code == grpc.StatusCode.ALREADY_EXISTS


class HandlerOutcome(Exception):
    """Base class of the exceptions a handler raises to steer Cloud Tasks."""


class Fatal(HandlerOutcome):
    """The task can never succeed: drop it (HTTP 202) and log an error."""


class Ignore(HandlerOutcome):
    """The task is not worth doing: drop it (HTTP 204) and log a warning."""


class Retry(HandlerOutcome):
    """Try again later, an expected condition (HTTP 429, logged quietly)."""


class Transient(HandlerOutcome):
    """A transient failure: try again later (HTTP 500)."""
