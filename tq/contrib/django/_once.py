"""Effectively-once handlers on Django's ORM: a done marker in the handler's atomic() block.

Cloud Tasks and the database queue deliver at least once. A handler made
effectively once runs in `transaction.atomic(using=alias)` and writes the
task's done marker (a row of `tq_done`, see `tq.txn.marker_key`) first, then
its effects, and commits them together: a redelivery whose marker is
committed answers 200 without running again. A handler that raises rolls
back its effects and the marker, and the queue retries it. Only database
effects on that alias happen once; a call to another service may repeat.

    @disp.task_class(id="charge", prototype=pb.Charge, kind=..., queue="payments")
    @tq.contrib.django.once()
    def charge(payload: pb.Charge) -> None:
        Payment.objects.create(order_id=payload.order_id, amount=payload.amount)

    @task                                   # django.tasks
    @tq.contrib.django.once()
    def send_invoice(order_id: int) -> None: ...

For a django.tasks Task the result is recorded SUCCESSFUL in the same
transaction when the marker's alias is the results alias (settings.TQ's
DATABASE, the default). Markers live `retention` (35 days by default);
`manage.py tq markers expire` deletes expired ones.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from tq._errors import ConfigError, TransactionError
from tq._execution import execution_info
from tq.txn._markers import (
    DEFAULT_MARKER_RETENTION,
    check_retention,
    expiry,
    insert_marker,
    marker_key,
    note_done_already,
)

F = TypeVar("F", bound=Callable[..., Any])
_DIALECTS = {"postgresql": "postgresql", "sqlite": "sqlite"}


@dataclasses.dataclass(frozen=True, slots=True)
class Once:
    """How a function was made effectively once (its `__tq_once__`)."""

    using: str | None
    retention: dt.timedelta


def mark_done(
    using: str = DEFAULT_DB_ALIAS,
    key: str | None = None,
    *,
    retention: dt.timedelta = DEFAULT_MARKER_RETENTION,
) -> bool:
    """Writes the running task's done marker in the open atomic() block of `using`.

    True: the marker is new (go on; it commits with your effects). False:
    the task is done already (do nothing more). `key` defaults to the
    running task's (`tq.txn.marker_key()`). Write it first in the block: on
    PostgreSQL a concurrent delivery of the same task then waits here for
    this transaction to end. Raises TransactionError outside an atomic block
    of `using`, ConfigError for a database without markers (not PostgreSQL
    or SQLite) or a retention out of bounds.
    """
    conn = connections[using]
    if not conn.in_atomic_block:
        raise TransactionError(
            f"mark_done writes the marker in the handler's transaction: call it inside "
            f"transaction.atomic(using={using!r})"
        )
    dialect = _DIALECTS.get(conn.vendor)
    if dialect is None:
        raise ConfigError(
            f"database {using!r} is {conn.vendor}: done markers live on PostgreSQL or SQLite"
        )
    key = marker_key() if key is None else key
    with conn.cursor() as cursor:
        return insert_marker(
            cursor, key, expiry(check_retention(retention)), dialect=dialect, paramstyle="format"
        )


def once(
    using: str | None = None, *, retention: dt.timedelta = DEFAULT_MARKER_RETENTION
) -> Callable[[F], F]:
    """Makes a `def` handler (or django.tasks function) effectively once on database `using`.

    `using` defaults to "default" for a protobuf task class's handler and
    to the results alias (settings.TQ's DATABASE) for a django.tasks Task.
    Raises ConfigError at decoration for an `async def` function (Django's
    atomic blocks are synchronous) or a retention out of bounds.
    """
    check_retention(retention)

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):
            raise ConfigError(
                f"tq.contrib.django.once: {fn!r} is async; Django's transaction.atomic() is "
                "synchronous, so make the handler a plain def"
            )

        @functools.wraps(fn)
        def handler(*args: Any, **kwargs: Any) -> Any:
            info = execution_info()
            key = marker_key(info)
            alias = using or DEFAULT_DB_ALIAS
            with transaction.atomic(using=alias):
                if not mark_done(alias, key, retention=retention):
                    note_done_already(key, info.task_class)
                    return None
                return fn(*args, **kwargs)

        handler.__tq_once__ = Once(using, retention)  # type: ignore[attr-defined]
        return handler  # type: ignore[return-value]

    return decorate


def once_of(fn: Callable[..., Any]) -> Once | None:
    """How `fn` was made effectively once, or None."""
    found = getattr(fn, "__tq_once__", None)
    return found if isinstance(found, Once) else None
