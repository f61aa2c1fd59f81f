"""DbQueueSubmitter: tq's Submitter storing each task as a row of `tq_tasks`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import grpc
import sqlalchemy as sa

from tq import clock
from tq._errors import SubmitError
from tq._handles import check_task_name
from tq._submitter import BuiltSubmission, Submission
from tq._topic import is_publish, message_name
from tq.dbqueue import _db, _queuedb, _topics, _wakeup
from tq.dbqueue._admin import delete_live_task
from tq.dbqueue._schema import to_us
from tq.dbqueue._taskrow import (
    _queue_id,
    already_exists,
    built_row,
    insert_task,
    insert_tasks,
    one_statement,
    task_row,
)


def _is_message(submission: Submission) -> bool:
    """Whether a submission is a message to publish (a `BuiltSubmission` never is: its
    request, which is built only when read, is a task's)."""
    return type(submission) is not BuiltSubmission and is_publish(submission.request)


TOMBSTONE_WINDOW = dt.timedelta(hours=1)
"""How long a finished task's name stays taken by default (Cloud Tasks: ~1 hour)."""
PRIORITY_STEP = dt.timedelta(seconds=1)
"""The head start one point of `Task.priority` gives by default (see `_pick`)."""

# Keys of Connection.info (with the submitter's id: several submitters may
# share an engine): queues written to in the open transaction, and in a
# transaction committed since (waiting for the wakeup).
_WRITTEN = "tq.dbqueue.written"
_COMMITTED = "tq.dbqueue.committed"


@runtime_checkable
class WritesInTransaction(Protocol):
    """A submitter that can write a task into the caller's open transaction.

    Outbox stores check for this (by duck typing on `write_in_transaction`):
    instead of a reminder to submit after commit, they call it with the
    transaction's connection, and the task exists if and only if the
    transaction commits. No reminder, no sweeper, no happy path.

    A submitter that also has `insert_in_transaction(connection, submission)`
    and `transaction_committed(sure, unsure)` (as `DbQueueSubmitter` does) is
    called through those by tq's transaction helpers, which report the
    commit themselves, so that it needs no listener of its own.
    """

    def write_in_transaction(self, connection: sa.Connection, submission: Submission) -> None:
        """Inserts the task using `connection` (inside its open transaction).

        Raises SubmitError as `submit` does (ALREADY_EXISTS for a taken name).
        """
        ...


class DbQueueSubmitter:
    """Creates tasks as rows of the database queue (`tq_tasks`).

    Args:
      engine: a SQLAlchemy Engine on SQLite (a file) or PostgreSQL whose
        schema exists (`tq.dbqueue.create_schema`).
      tombstone_window: how long the name of a finished (or deleted) task
        stays taken, so that adding it again raises ALREADY_EXISTS, as in
        Cloud Tasks; default 1 hour. Generated names are never reused.
      auto_create_queues: create a queue with the default configuration
        (`QueueConfig(name)`) the first time a task names it (default, handy
        for local runs); when False, a task for a queue that was never
        configured raises SubmitError NOT_FOUND, as Cloud Tasks does.
      random_bytes: the source of generated task names (default os.urandom).
      priority_step: the head start each point of `Task.priority` gives a
        task over tasks that became due before it (default 1 s): a task of
        priority p ranks as if due p x step earlier. Use one step per
        database.

    Raises `tq.SubmitError`: ALREADY_EXISTS for a name in use or within its
    tombstone window, NOT_FOUND for an unknown queue (see above),
    INVALID_ARGUMENT for a malformed request, UNAVAILABLE when the database
    fails. Tasks are delivered by `tq.dbqueue.Worker`s on the same database;
    workers of this process wake up at once.
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        tombstone_window: dt.timedelta = TOMBSTONE_WINDOW,
        auto_create_queues: bool = True,
        random_bytes: Callable[[int], bytes] = os.urandom,
        priority_step: dt.timedelta = PRIORITY_STEP,
    ) -> None:
        _db.check_dialect(engine)
        if tombstone_window < dt.timedelta(0):
            raise ValueError("tombstone_window must not be negative")
        if priority_step < dt.timedelta(0):
            raise ValueError("priority_step must not be negative")
        self.priority_step_us = int(priority_step.total_seconds() * 1_000_000)
        self.engine = engine
        self.tombstone_window = tombstone_window
        self.auto_create_queues = auto_create_queues
        self.random_bytes = random_bytes
        self.wakeup_key = _wakeup.key_of(engine)
        self._known_queues: set[str] = set()
        self._lock = threading.Lock()
        self._hooked: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
        self._pg = engine.dialect.name == "postgresql"
        self._templates: dict[int, tuple[Any, tuple[Any, ...]]] = {}  # see built_row
        self._written = (_WRITTEN, id(self))
        self._committed_key = (_COMMITTED, id(self))

    takes_parts = True
    """Tasks from `add_task` come as `BuiltSubmission`s: rows from their parts, their
    requests never built."""

    takes_topics = True
    """Messages of topic classes fan out to the topic's subscriptions (see `Subscription`)."""

    def submit(self, submission: Submission) -> str | None:
        """Inserts the task (or a message's rows, one per subscription) in its own transaction.

        Returns the task's full name (a message's: `<topic>/messages/<ID>`,
        its ID the same on every subscription).
        """
        if _is_message(submission):
            message_id = self.random_bytes(16).hex()
            try:
                with _db.write_txn(self.engine) as conn:
                    self._insert_message(conn, submission, message_id)
            except sa.exc.SQLAlchemyError as e:
                raise SubmitError(grpc.StatusCode.UNAVAILABLE, f"database queue: {e}") from e
            _wakeup.notify(self.wakeup_key)
            return message_name(submission.topic, message_id)
        row = self._row(submission)
        try:
            self._ensure_queue_committed(row["queue"])
            if self._pg and row["reserve_us"] is None:
                # A generated name is never reused: one statement, no transaction around it.
                with self._autocommit() as conn:
                    inserted = insert_task(conn, row)
            else:
                with _db.write_txn(self.engine) as conn:
                    inserted = insert_task(conn, row)
        except sa.exc.SQLAlchemyError as e:
            raise SubmitError(grpc.StatusCode.UNAVAILABLE, f"database queue: {e}") from e
        if not inserted:
            raise already_exists(row)
        _wakeup.notify(self.wakeup_key)
        return f"{submission.destination}/tasks/{row['name']}"

    async def submit_async(self, submission: Submission) -> str | None:
        """`submit` in a worker thread."""
        return await asyncio.to_thread(self.submit, submission)

    def delete_task(self, name: str) -> bool:
        """Deletes the waiting or running task `name` (a full task name); False if there is none.

        Only the queue ID and task ID of the name count (the database queue
        keeps no project or location). A running task finishes its attempt
        but is never retried; the row stays as the name's tombstone, so the
        name stays taken for `tombstone_window` (names this queue generated
        are never reused). Raises ValidationError for a malformed name,
        SubmitError UNAVAILABLE when the database fails.
        """
        parent, _, task_id = check_task_name(name).rpartition("/tasks/")
        try:
            return delete_live_task(self.engine, _queue_id(parent), task_id)
        except sa.exc.SQLAlchemyError as e:
            raise SubmitError(grpc.StatusCode.UNAVAILABLE, f"database queue: {e}") from e

    async def delete_task_async(self, name: str) -> bool:
        """`delete_task` in a worker thread."""
        return await asyncio.to_thread(self.delete_task, name)

    def submit_batch(self, submissions: Sequence[Submission]) -> list[str | SubmitError | None]:
        """Inserts tasks (and messages) in one transaction, a batch in one statement.

        Returns, per submission, the task's full name (a message's too),
        or the SubmitError that refused it: ALREADY_EXISTS for a name in use,
        INVALID_ARGUMENT for a malformed request. Raises SubmitError
        UNAVAILABLE when the database fails (then none was inserted).
        """
        results: list[str | SubmitError | None] = [None] * len(submissions)
        rows: list[dict[str, Any]] = []
        where: list[int] = []
        messages: list[tuple[Submission, str]] = []
        row = self._row_maker()
        for i, sub in enumerate(submissions):
            if _is_message(sub):
                message_id = self.random_bytes(16).hex()
                messages.append((sub, message_id))
                results[i] = message_name(sub.topic, message_id)
                continue
            try:
                rows.append(row(sub))
            except SubmitError as e:
                results[i] = e
                continue
            where.append(i)
        if not rows and not messages:
            return results
        try:
            for queue in dict.fromkeys(r["queue"] for r in rows):
                self._ensure_queue_committed(queue)
            if not messages and self._pg and one_statement(rows):
                # One statement is atomic: no BEGIN and COMMIT round trips around it.
                with self._autocommit() as conn:
                    went_in = insert_tasks(conn, rows, atomic=True)
            else:
                with _db.write_txn(self.engine) as conn:
                    for m, message_id in messages:
                        self._insert_message(conn, m, message_id)
                    went_in = insert_tasks(conn, rows)
        except sa.exc.SQLAlchemyError as e:
            raise SubmitError(grpc.StatusCode.UNAVAILABLE, f"database queue: {e}") from e
        for i, row_, ok in zip(where, rows, went_in, strict=True):
            parent = submissions[i].destination
            results[i] = f"{parent}/tasks/{row_['name']}" if ok else already_exists(row_)
        _wakeup.notify(self.wakeup_key)
        return results

    async def submit_batch_async(
        self, submissions: Sequence[Submission]
    ) -> list[str | SubmitError | None]:
        """`submit_batch` in a worker thread."""
        return await asyncio.to_thread(self.submit_batch, submissions)

    def write_in_transaction(self, connection: sa.Connection, submission: Submission) -> None:
        """Inserts the task in the caller's transaction on `connection`.

        The task exists if and only if that transaction commits; in-process
        workers wake up when it does. See `WritesInTransaction`. Called
        directly, this follows the commit with listeners on the engine (which
        every transaction on it then pays for); tq's transaction helpers call
        `insert_in_transaction` and `transaction_committed` instead.
        """
        queue = self.insert_in_transaction(connection, submission)
        self._hook_commits(connection.engine)
        if queue:
            connection.info.setdefault(self._written, set()).add(queue)

    def insert_in_transaction(self, connection: sa.Connection, submission: Submission) -> str:
        """Inserts the task on `connection`, leaving the commit to the caller; returns its queue.

        For a caller that reports the commit with `transaction_committed`. A
        message for a topic inserts a row per subscription; its first
        subscription's queue is returned ("" when it has none).
        """
        if _is_message(submission):
            return self._insert_message(connection, submission)
        row = self._row(submission)
        queue: str = row["queue"]
        with self._lock:
            known = queue in self._known_queues
        if not known:
            self._ensure_queue(connection, queue)
        if not insert_task(connection, row):
            raise already_exists(row)
        return queue

    def insert_batch_in_transaction(
        self, connection: sa.Connection, submissions: Sequence[Submission]
    ) -> list[str]:
        """`insert_in_transaction` for a batch: the tasks in one statement; their queues."""
        queues: list[str] = []
        rows: list[dict[str, Any]] = []
        row_of = self._row_maker()
        for sub in submissions:
            if _is_message(sub):
                queues.append(self._insert_message(connection, sub))
                continue
            row = row_of(sub)
            rows.append(row)
            queues.append(row["queue"])
        with self._lock:
            unknown = [
                q for q in dict.fromkeys(r["queue"] for r in rows) if q not in self._known_queues
            ]
        for queue in unknown:
            self._ensure_queue(connection, queue)
        for row, ok in zip(rows, insert_tasks(connection, rows), strict=True):
            if not ok:
                raise already_exists(row)
        return queues

    def transaction_committed(self, sure: list[Submission], unsure: list[Submission]) -> None:
        """After a commit: `sure` were inserted in it; `unsure` may have been undone before it.

        Wakes the workers of this process. Only `sure` queues are taken as
        existing from now on: an `unsure` one may have been created by a
        savepoint or an earlier transaction that was rolled back.
        """
        if sure:
            parents = {s.destination for s in sure if not _is_message(s)}
            queues = {_queue_id(p) for p in parents}
            with self._lock:
                self._known_queues.update(queues)
        if sure or unsure:
            _wakeup.notify(self.wakeup_key)

    @contextlib.contextmanager
    def _autocommit(self) -> Iterator[sa.Connection]:
        """A connection whose statements commit each on its own (PostgreSQL)."""
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn
            conn.commit()

    # Queues.

    def _ensure_queue(self, conn: sa.Connection, queue: str) -> None:
        if self.auto_create_queues:
            _queuedb.ensure_queue(conn, queue)
        elif not _queuedb.queue_exists(conn, queue):
            raise SubmitError(
                grpc.StatusCode.NOT_FOUND,
                f"queue {queue!r} does not exist in the database queue: configure it "
                "(tq.dbqueue.apply_queues or queue.yaml) or enable auto_create_queues",
            )

    def _ensure_queue_committed(self, queue: str) -> None:
        with self._lock:
            if queue in self._known_queues:
                return
        with self.engine.begin() as conn:
            self._ensure_queue(conn, queue)
        with self._lock:
            self._known_queues.add(queue)

    # Wakeups after the caller's commit. SQLAlchemy's "commit" event fires
    # just before the database commits, so it only marks the connection; the
    # wakeup goes out once the connection begins again or returns to the pool.

    def _hook_commits(self, engine: sa.Engine) -> None:
        if engine in self._hooked:  # the common case, without the lock
            return
        with self._lock:
            if engine in self._hooked:
                return
            self._hooked.add(engine)
        sa.event.listen(engine, "commit", self._on_commit)
        sa.event.listen(engine, "rollback", self._on_rollback)
        sa.event.listen(engine, "begin", self._on_begin)
        sa.event.listen(engine, "checkin", self._on_checkin)

    def _on_commit(self, conn: sa.Connection) -> None:
        written = conn.info.pop(self._written, None)
        if written:
            conn.info.setdefault(self._committed_key, set()).update(written)

    def _on_rollback(self, conn: sa.Connection) -> None:
        conn.info.pop(self._written, None)
        conn.info.pop(self._committed_key, None)

    def _on_begin(self, conn: sa.Connection) -> None:
        self._committed(conn.info)

    def _on_checkin(self, _dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            self._committed(record.info)

    def _committed(self, info: dict[Any, Any]) -> None:
        queues = info.pop(self._committed_key, None)
        if queues:
            with self._lock:
                self._known_queues.update(queues)
            _wakeup.notify(self.wakeup_key)

    # Rows.

    def _insert_message(
        self, conn: sa.Connection, submission: Submission, message_id: str | None = None
    ) -> str:
        rows = _topics.message_rows(
            conn,
            submission.request,
            submission.task_class,
            now_us=to_us(clock.now()),
            # One name for the message: its ID, the same in every subscription (as on Pub/Sub).
            message_id=message_id or self.random_bytes(16).hex(),
        )
        for row in rows:
            insert_task(conn, row)  # generated names: never taken
        return str(rows[0]["queue"]) if rows else ""

    def _row(self, submission: Submission) -> dict[str, Any]:
        return self._row_maker()(submission)

    def _row_maker(self) -> Callable[[Submission], dict[str, Any]]:
        """Makes the rows of one call's submissions: one clock reading for the lot."""
        now_us = to_us(clock.now())
        reserve_us = int(self.tombstone_window.total_seconds() * 1_000_000)
        step_us = self.priority_step_us
        random_bytes = self.random_bytes

        def generated_name() -> str:
            return random_bytes(16).hex()

        known = self._templates

        def row(submission: Submission) -> dict[str, Any]:
            parts = getattr(submission, "parts", None)
            if parts is not None:
                return built_row(
                    submission.task_class,
                    parts,
                    known,
                    now_us=now_us,
                    reserve_us=reserve_us,
                    generated_name=generated_name,
                    priority_step_us=step_us,
                )
            return task_row(
                submission.request,
                submission.task_class,
                now_us=now_us,
                reserve_us=reserve_us,
                generated_name=generated_name,
                priority_step_us=step_us,
            )

        return row
