"""DbQueueSubmitter: tq's Submitter storing each task as a row of `tq_tasks`."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import operator
import os
import re
import threading
import weakref
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, Protocol, runtime_checkable

import grpc
import sqlalchemy as sa
from google.cloud.tasks_v2.types import target
from google.protobuf.message import Message
from sqlalchemy.dialects import postgresql, sqlite

from tq import clock
from tq._errors import SubmitError
from tq._handles import check_task_name
from tq._submitter import Submission
from tq._task import PRIORITY_HEADER, TAG_HEADER
from tq._taskclass import FULL_QUEUE_RE
from tq._topic import is_publish
from tq.dbqueue import _db, _queuedb, _topics, _wakeup
from tq.dbqueue._admin import delete_live_task
from tq.dbqueue._schema import State, tasks, to_us

TOMBSTONE_WINDOW = dt.timedelta(hours=1)
"""How long a finished task's name stays taken by default (Cloud Tasks: ~1 hour)."""
PRIORITY_STEP = dt.timedelta(seconds=1)
"""The head start one point of `Task.priority` gives by default (see `_pick`)."""

_TASK_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
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
        self._written = (_WRITTEN, id(self))
        self._committed_key = (_COMMITTED, id(self))

    takes_topics = True
    """Messages of topic classes fan out to the topic's subscriptions (see `Subscription`)."""

    def submit(self, submission: Submission) -> str | None:
        """Inserts the task (or a message's rows, one per subscription) in its own transaction.

        Returns the task's full name (None for a message).
        """
        if is_publish(submission.request):
            try:
                with _db.write_txn(self.engine) as conn:
                    self._insert_message(conn, submission)
            except sa.exc.SQLAlchemyError as e:
                raise SubmitError(grpc.StatusCode.UNAVAILABLE, f"database queue: {e}") from e
            _wakeup.notify(self.wakeup_key)
            return None
        row = self._row(submission)
        try:
            self._ensure_queue_committed(row["queue"])
            with _db.write_txn(self.engine) as conn:
                inserted = insert_task(conn, row)
        except sa.exc.SQLAlchemyError as e:
            raise SubmitError(grpc.StatusCode.UNAVAILABLE, f"database queue: {e}") from e
        if not inserted:
            raise _already_exists(row)
        _wakeup.notify(self.wakeup_key)
        return f"{submission.request.parent}/tasks/{row['name']}"  # type: ignore[attr-defined]

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
        if is_publish(submission.request):
            return self._insert_message(connection, submission)
        row = self._row(submission)
        queue: str = row["queue"]
        with self._lock:
            known = queue in self._known_queues
        if not known:
            self._ensure_queue(connection, queue)
        if not insert_task(connection, row):
            raise _already_exists(row)
        return queue

    def transaction_committed(self, sure: list[Submission], unsure: list[Submission]) -> None:
        """After a commit: `sure` were inserted in it; `unsure` may have been undone before it.

        Wakes the workers of this process. Only `sure` queues are taken as
        existing from now on: an `unsure` one may have been created by a
        savepoint or an earlier transaction that was rolled back.
        """
        if sure:
            queues = {
                _queue_id(s.request.parent)  # type: ignore[attr-defined]
                for s in sure
                if not is_publish(s.request)
            }
            with self._lock:
                self._known_queues.update(queues)
        if sure or unsure:
            _wakeup.notify(self.wakeup_key)

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

    def _insert_message(self, conn: sa.Connection, submission: Submission) -> str:
        rows = _topics.message_rows(
            conn,
            submission.request,
            submission.task_class,
            now_us=to_us(clock.now()),
            # One name for the message: its ID, the same in every subscription (as on Pub/Sub).
            generated_name=self.random_bytes(16).hex,
        )
        for row in rows:
            insert_task(conn, row)  # generated names: never taken
        return str(rows[0]["queue"]) if rows else ""

    def _row(self, submission: Submission) -> dict[str, Any]:
        return task_row(
            submission.request,
            submission.task_class,
            now_us=to_us(clock.now()),
            reserve_us=int(self.tombstone_window.total_seconds() * 1_000_000),
            generated_name=self.random_bytes(16).hex,
            priority_step_us=self.priority_step_us,
        )


def task_row(
    req: Message,
    task_class: str,
    *,
    now_us: int,
    reserve_us: int,
    generated_name: Callable[[], str],
    priority_step_us: int = 1_000_000,
) -> dict[str, Any]:
    """The values of a new `tq_tasks` row of a CreateTaskRequest; SubmitError if malformed.

    Holds the columns `insert_task` binds; the rest take a new task's values.
    A priority or tag (the request's X-Tq-Priority / X-Tq-Tag headers) adds
    "priority", "rank_us" and "tag".
    """
    parent: str = req.parent  # type: ignore[attr-defined]
    queue = _queue_id(parent)
    t = req.task  # type: ignore[attr-defined]
    reserve: int | None = reserve_us
    if t.name:
        prefix = parent + "/tasks/"
        name = t.name[len(prefix) :] if t.name.startswith(prefix) else ""
        if not _TASK_ID_RE.match(name):
            raise _invalid(
                f"task name {t.name!r} must be '{prefix}<ID>' with ID of 1 to 500 [A-Za-z0-9_-]"
            )
    else:
        name, reserve = generated_name(), None
    oidc_email = oidc_audience = None
    target_kind = t.WhichOneof("message_type")
    if target_kind == "http_request":
        app_engine = False
        h = t.http_request
        url = h.url
        if h.HasField("oidc_token"):
            oidc_email = h.oidc_token.service_account_email or None
            oidc_audience = h.oidc_token.audience or None
    elif target_kind == "app_engine_http_request":
        app_engine = True
        h = t.app_engine_http_request
        url = h.relative_uri
    else:
        raise _invalid("the task has neither http_request nor app_engine_http_request")
    method = _METHOD_NAMES.get(h.http_method)
    if method is None:
        raise _invalid(f"unknown HTTP method {h.http_method}")
    eta_us = now_us
    if t.HasField("schedule_time"):
        eta_us = t.schedule_time.seconds * 1_000_000 + t.schedule_time.nanos // 1000
    deadline = None
    if t.HasField("dispatch_deadline"):
        deadline = t.dispatch_deadline.seconds + t.dispatch_deadline.nanos / 1e9
    headers = h.headers
    row = {
        "queue": queue, "name": name, "task_class": task_class,
        "url": url, "method": method, "headers": _headers_json(headers),
        "body": h.body, "oidc_email": oidc_email, "oidc_audience": oidc_audience,
        "app_engine": app_engine, "dispatch_deadline_s": deadline, "eta_us": eta_us,
        "created_us": now_us, "reserve_us": reserve,
    }  # fmt: skip
    if PRIORITY_HEADER in headers or TAG_HEADER in headers:
        _add_priority_and_tag(row, headers, priority_step_us)
    return row


def _add_priority_and_tag(row: dict[str, Any], headers: Any, step_us: int) -> None:
    raw = headers.get(PRIORITY_HEADER, "0")
    try:
        priority = int(raw)
    except ValueError:
        raise _invalid(f"{PRIORITY_HEADER} {raw!r} is not an integer") from None
    row["priority"] = priority
    row["rank_us"] = row["eta_us"] - priority * step_us if priority else None
    row["tag"] = headers.get(TAG_HEADER) or None


# The columns of a new row that `task_row` gives (bound in this order); those
# the same for every new task (constants in the statement); the rest start NULL.
_BOUND = (
    "queue", "name", "task_class", "url", "method", "headers", "body", "oidc_email",
    "oidc_audience", "app_engine", "dispatch_deadline_s", "eta_us", "created_us", "reserve_us",
)  # fmt: skip
_NEW_TASK = {"state": State.PENDING.value, "attempts": 0, "executions": 0}
_ALL_NULL = {c.name: None for c in tasks.c if c.name != "id"}
_bound_values = operator.itemgetter(*_BOUND)


def insert_task(conn: sa.Connection, row: dict[str, Any]) -> bool:
    """Inserts a `task_row`; False if its name is live or still within its tombstone window.

    Never aborts the caller's transaction. The common case is one plain
    `INSERT ... ON CONFLICT DO NOTHING` with positional parameters (no
    statement compiled per call, no RETURNING). Only when the name is taken
    does a second statement run: an upsert that overwrites the conflicting
    row in place if it is finished and past its window (and inserts, should
    that row have been deleted meanwhile).
    """
    dialect = conn.dialect.name
    if "priority" in row:
        sql, values = _fast_insert_ext(dialect), (*_bound_values(row), *_ext_values(row))
    else:
        sql, values = _fast_insert(dialect), _bound_values(row)
    if conn.exec_driver_sql(sql, values).rowcount == 1:
        return True
    full = {**_ALL_NULL, "priority": 0, **row, **_NEW_TASK}
    if _db.is_mysql(conn):
        return _reuse_mysql(conn, full)
    return conn.execute(_reuse_statement(dialect), full).first() is not None


_EXT = ("priority", "rank_us", "tag")
_ext_values = operator.itemgetter(*_EXT)


@functools.cache
def _fast_insert(dialect: str, bound: tuple[str, ...] = _BOUND) -> str:
    # Plain SQL in the driver's positional style (sqlite3: qmark, psycopg: format).
    mark = "?" if dialect == "sqlite" else "%s"
    consts = [f"'{v}'" if isinstance(v, str) else str(v) for v in _NEW_TASK.values()]
    columns = f"{tasks.name} ({', '.join([*bound, *_NEW_TASK])})"
    values = f"VALUES ({', '.join([mark] * len(bound) + consts)})"
    if dialect in _db.MYSQL_DIALECTS:
        # Ignores the duplicate name (the row values are checked before: the
        # errors IGNORE would also hide cannot happen).
        return f"INSERT IGNORE INTO {columns} {values}"
    return f"INSERT INTO {columns} {values} ON CONFLICT (queue, name) DO NOTHING"


def _fast_insert_ext(dialect: str) -> str:
    return _fast_insert(dialect, (*_BOUND, *_EXT))


@functools.cache
def _reuse_statement(dialect: str) -> Any:
    # Built once per dialect: constructing an upsert costs more than running it.
    stmt = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(tasks)
    # finished_us is set exactly on finished rows (done, failed, deleted).
    reusable = (
        tasks.c.finished_us + sa.func.coalesce(tasks.c.reserve_us, 0) <= stmt.excluded.created_us
    )
    return stmt.on_conflict_do_update(
        index_elements=[tasks.c.queue, tasks.c.name],
        set_={c.name: stmt.excluded[c.name] for c in tasks.c if c.name != "id"},
        where=reusable,
    ).returning(tasks.c.id)


def _reuse_mysql(conn: sa.Connection, full: dict[str, Any]) -> bool:
    """The reuse upsert on MySQL (whose upsert cannot say whether it wrote): takes
    the conflicting row's lock, overwrites it if finished and past its window."""
    key = (tasks.c.queue == full["queue"], tasks.c.name == full["name"])
    found = conn.execute(
        sa.select(tasks.c.id, tasks.c.finished_us, tasks.c.reserve_us).where(*key).with_for_update()
    ).first()
    if found is None:  # deleted meanwhile (retention): insert again
        return bool(conn.execute(sa.insert(tasks).prefix_with("IGNORE").values(full)).rowcount)
    if (
        found.finished_us is None
        or found.finished_us + (found.reserve_us or 0) > full["created_us"]
    ):
        return False
    conn.execute(sa.update(tasks).where(tasks.c.id == found.id).values(full))
    return True


# Cloud Tasks' HttpMethod numbers by name; unspecified means POST.
_METHOD_NAMES: dict[int, str] = {
    int(m): "POST" if m.name == "HTTP_METHOD_UNSPECIFIED" else str(m.name)
    for m in target.HttpMethod.__members__.values()
}


@functools.lru_cache(maxsize=1024)
def _queue_id(parent: str) -> str:
    """The short queue ID of a full queue name; SubmitError if it is not one."""
    if not FULL_QUEUE_RE.match(parent):
        raise _invalid(f"parent {parent!r} is not a queue name 'projects/P/locations/L/queues/Q'")
    return parent[parent.rindex("/") + 1 :]


def _headers_json(headers: Any) -> str:
    """`json.dumps(dict(headers), separators=(",", ":"))` of a string map, twice as fast."""
    return "{" + ",".join([_quote(k) + ":" + _quote(v) for k, v in headers.items()]) + "}"


def _invalid(msg: str) -> SubmitError:
    return SubmitError(grpc.StatusCode.INVALID_ARGUMENT, f"database queue: {msg}")


def _already_exists(row: dict[str, Any]) -> SubmitError:
    return SubmitError(
        grpc.StatusCode.ALREADY_EXISTS,
        f"task {row['name']!r} exists in queue {row['queue']!r} or finished within the "
        "tombstone window",
    )
