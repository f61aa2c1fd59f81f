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
    `transient` says whether trying again later may help. Deleting a task
    raises it too, for any failure but "no such task".
  - `TaskAlreadyAdded` (a `SubmitError` with code ALREADY_EXISTS): a task
    of a taken name was added with `raise_if_exists` (per call or per
    class); by default such a task is absorbed instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from tq._handles import AddedTask


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

    `code` is the gRPC status code of the failure. `ALREADY_EXISTS` reaches
    callers of `add_task` only as `TaskAlreadyAdded`, when they ask for it:
    by default a task that exists already counts as submitted. `transient`
    is true for codes after which a retry may succeed (UNAVAILABLE,
    DEADLINE_EXCEEDED, ...); a permanent failure (NOT_FOUND for a missing
    queue, INVALID_ARGUMENT, PERMISSION_DENIED, ...) will fail again.
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


class TaskAlreadyAdded(SubmitError):
    """A task added with `raise_if_exists` has a name that is taken already.

    Cloud Tasks (and the database queue and tqtesting, like it) keeps a
    name taken while its task waits or runs, and for a while after it ran
    or was deleted (about an hour; the database queue's tombstone window).
    The existing task is left as it was: nothing was overwritten.

    Attributes:
      added: the handles of every task of the `add_task` call, in order;
        the ones whose `existed` is False were created by the call.
      existing: the handles of the tasks that existed already and made
        the call raise.
    """

    def __init__(self, added: Sequence[AddedTask], existing: Sequence[AddedTask]) -> None:
        self.added = list(added)
        self.existing = list(existing)
        first = existing[0]
        what = f"task {first.name} of class {first.task_class!r}"
        if len(existing) > 1:
            what += f" (and {len(existing) - 1} more of this call)"
        super().__init__(
            grpc.StatusCode.ALREADY_EXISTS,
            f"{what} was added already: a task of that name is waiting or running, or ran "
            "or was deleted within the queue's deduplication window; nothing was overwritten",
        )


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
