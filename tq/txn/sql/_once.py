"""Effectively-once handlers on SQL: `once` and `once_async`.

A handler decorated with `once(Session)` runs in a transaction of tq's
helper (`transaction`), with the task's done marker written first in it
(`mark_done`): its effects and the marker commit together, or neither. A
redelivered task whose marker committed answers 200 without running the
handler again. The handler takes the payload and the session (or, for an
Engine, the Core connection); tasks it adds are written in the same
transaction (reminders), so they too are added once.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from tq._errors import ConfigError
from tq._execution import execution_info
from tq.txn._markers import (
    DEFAULT_MARKER_RETENTION,
    check_retention,
    expiry,
    marker_key,
    note_done_already,
)
from tq.txn.sql._helpers import transaction, transaction_async
from tq.txn.sql._markers import connection_of, connection_of_async, write, write_async
from tq.txn.sql._store import SQLStore, async_types

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

P = TypeVar("P")
S = TypeVar("S", bound=Session)
AS = TypeVar("AS", bound="AsyncSession")


@overload
def once(
    factory: Engine,
    *,
    retention: dt.timedelta = ...,
    store: SQLStore | None = ...,
) -> Callable[[Callable[[P, Connection], None]], Callable[[P], None]]: ...


@overload
def once(
    factory: Callable[[], S],
    *,
    retention: dt.timedelta = ...,
    store: SQLStore | None = ...,
) -> Callable[[Callable[[P, S], None]], Callable[[P], None]]: ...


def once(
    factory: Callable[[], Session] | Engine,
    *,
    retention: dt.timedelta = DEFAULT_MARKER_RETENTION,
    store: SQLStore | None = None,
) -> Callable[[Callable[[Any, Any], None]], Callable[[Any], None]]:
    """Makes a handler `fn(payload, session)` effectively once; use under `task_class`.

    ::

        @disp.task_class(id="charge", prototype=pb.Charge, kind=..., queue="payments")
        @tq.txn.sql.once(Session)
        def charge(payload: pb.Charge, session: Session) -> None:
            session.add(Payment(order=payload.order_id, amount=payload.amount))

    Each delivery opens `tq.txn.sql.transaction(factory)` (a `sessionmaker`:
    the handler gets the Session; an `Engine`: a Core Connection), writes
    the task's done marker first, then calls the handler, and commits both.
    A delivery that finds the marker committed runs nothing and answers
    200; one that raises rolls back the effects and the marker (the
    exception's outcome applies: a retry, or `Fatal`/`Ignore`). The marker
    lives `retention` (default 35 days, see `tq.txn.DEFAULT_MARKER_RETENTION`).
    Only the database effects are once: a call to another service from the
    handler may happen again (make it idempotent, or add a task for it).

    Raises ConfigError at decoration for a retention out of bounds, an
    async factory or an `async def` handler (use `once_async`). A push
    without a task name fails (500, see `tq.txn.marker_key`).
    """
    check_retention(retention)
    _refuse_async(factory, "once", "once_async with an async_sessionmaker")

    def decorate(fn: Callable[[Any, Any], None]) -> Callable[[Any], None]:
        if inspect.iscoroutinefunction(fn):
            raise ConfigError(
                f"tq.txn.sql.once: {fn!r} is an async def handler; use tq.txn.sql.once_async "
                "with an async_sessionmaker"
            )

        @functools.wraps(fn)
        def handler(payload: Any) -> None:
            info = execution_info()
            key = marker_key(info)
            expires_at = expiry(retention)
            with transaction(factory, store=store) as session:
                if not write(connection_of(session), key, expires_at):
                    note_done_already(key, info.task_class)
                    return
                fn(payload, session)

        return handler

    return decorate


def once_async(
    factory: async_sessionmaker[AS] | Callable[[], AS],
    *,
    retention: dt.timedelta = DEFAULT_MARKER_RETENTION,
    store: SQLStore | None = None,
) -> Callable[[Callable[[P, AS], Awaitable[None]]], Callable[[P], Awaitable[None]]]:
    """`once` for `async def fn(payload, session)` with an `async_sessionmaker`.

    The same steps through `transaction_async` and `mark_done_async`.
    Raises ConfigError at decoration for a plain `def` handler (use `once`).
    """
    check_retention(retention)

    def decorate(fn: Callable[[P, AS], Awaitable[None]]) -> Callable[[P], Awaitable[None]]:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(
                f"tq.txn.sql.once_async: {fn!r} is not an async def handler; use "
                "tq.txn.sql.once with a sessionmaker"
            )

        @functools.wraps(fn)
        async def handler(payload: P) -> None:
            info = execution_info()
            key = marker_key(info)
            expires_at = expiry(retention)
            async with transaction_async(factory, store=store) as session:
                if not await write_async(await connection_of_async(session), key, expires_at):
                    note_done_already(key, info.task_class)
                    return
                await fn(payload, session)

        return handler

    return decorate


def _refuse_async(factory: object, name: str, instead: str) -> None:
    kinds = async_types()
    made_async = kinds is not None and isinstance(factory, kinds[0])
    if not made_async and kinds is not None:
        maker = getattr(factory, "class_", None)  # an async_sessionmaker's session class
        made_async = isinstance(maker, type) and issubclass(maker, kinds[1])
    if made_async:
        raise ConfigError(f"tq.txn.sql.{name} takes a sessionmaker or an Engine; use {instead}")
