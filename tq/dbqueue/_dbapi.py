"""Writing the database queue's rows through another library's connection.

For integrations that hold a transaction on a connection tq did not make
(Django's `atomic()`): the task row goes in through that connection's
DB-API cursor, with the same columns and statement as
`DbQueueSubmitter.insert_in_transaction`, so the task exists if and only if
that transaction commits. Statements use the "format" parameter style
(`%s`), which psycopg takes and Django's cursors take for every database.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import grpc

from tq._errors import SubmitError
from tq._submitter import Submission
from tq.dbqueue._queuedb import _new_row
from tq.dbqueue._queues import QueueConfig
from tq.dbqueue._schema import queues
from tq.dbqueue._submitter import DbQueueSubmitter
from tq.dbqueue._taskrow import already_exists, fast_insert

_QUEUE_COLUMNS = tuple(_new_row(QueueConfig("q"), 0))


class Cursor(Protocol):
    """What is used of a DB-API cursor."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Any = ...) -> Any: ...

    def fetchone(self) -> Any: ...


@functools.cache
def _insert_queue_sql() -> str:
    marks = ", ".join(["%s"] * len(_QUEUE_COLUMNS))
    return (
        f"INSERT INTO {queues.name} ({', '.join(_QUEUE_COLUMNS)}) VALUES ({marks}) "
        "ON CONFLICT (name) DO NOTHING"
    )


def ensure_queue(cursor: Cursor, submitter: DbQueueSubmitter, queue: str, now_us: int) -> None:
    """Creates `queue` unless it exists, as `submitter` would (or refuses, NOT_FOUND)."""
    if submitter.auto_create_queues:
        row = _new_row(QueueConfig(queue), now_us)
        cursor.execute(_insert_queue_sql(), [row[c] for c in _QUEUE_COLUMNS])
        return
    cursor.execute(f"SELECT 1 FROM {queues.name} WHERE name = %s", [queue])
    if cursor.fetchone() is None:
        raise SubmitError(
            grpc.StatusCode.NOT_FOUND,
            f"queue {queue!r} does not exist in the database queue: configure it "
            "(tq.dbqueue.apply_queues or queue.yaml) or enable auto_create_queues",
        )


def insert_task(
    cursor: Cursor,
    submitter: DbQueueSubmitter,
    submission: Submission,
    *,
    known_queue: bool,
    with_row: tuple[str, tuple[Any, ...]] | None = None,
) -> str:
    """Inserts the task row of `submission` on `cursor`; returns its queue.

    The queue is created first (or checked) unless `known_queue`. On
    PostgreSQL, `with_row` (an INSERT of the caller's and its parameters)
    goes in the same statement, as a data-modifying WITH. Raises
    SubmitError: INVALID_ARGUMENT for a malformed request, ALREADY_EXISTS
    when the name is taken (a task added in a transaction has a fresh
    random name, so this only happens to a reused one).
    """
    row = submitter._row(submission)
    queue: str = row["queue"]
    if not known_queue:
        ensure_queue(cursor, submitter, queue, int(row["created_us"]))
    # PostgreSQL's statement is in the format style (%s); SQLite takes the same
    # ON CONFLICT clause, and Django's cursors turn %s into its ? marks.
    sql, params = fast_insert("postgresql", row)
    if with_row is not None:
        sql, params = f"WITH tq_with AS ({with_row[0]}) {sql}", (*with_row[1], *params)
    cursor.execute(sql, params)
    if cursor.rowcount != 1:
        raise already_exists(row)
    return queue
