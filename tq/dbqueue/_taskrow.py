"""A task's row in `tq_tasks`: from a CreateTaskRequest, and inserting it.

`task_row` reads the request once into the values of a new row (queue and
name, the HTTP request, ETA, priority and tag); `insert_task` writes it with
one plain statement in the common case, and takes over a finished row of
the same name past its tombstone window otherwise. The three databases'
statements differ here only in their INSERT (ON CONFLICT; INSERT IGNORE
and a locked read on MySQL).
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

import grpc
import sqlalchemy as sa
from google.cloud.tasks_v2.types import target
from google.protobuf.message import Message
from sqlalchemy.dialects import postgresql, sqlite

from tq._errors import SubmitError
from tq._task import PRIORITY_HEADER, TAG_HEADER
from tq._taskclass import FULL_QUEUE_RE
from tq.dbqueue import _db
from tq.dbqueue._schema import State, tasks

_TASK_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,500}$")


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
    sql, values = fast_insert(dialect, row)
    if conn.exec_driver_sql(sql, values).rowcount == 1:
        return True
    full = {**_ALL_NULL, "priority": 0, **row, **_NEW_TASK}
    if _db.is_mysql(conn):
        return _reuse_mysql(conn, full)
    return conn.execute(_reuse_statement(dialect), full).first() is not None


_EXT = ("priority", "rank_us", "tag")
_BOUND_EXT = (*_BOUND, *_EXT)
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


def fast_insert(dialect: str, row: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """The plain INSERT of a `task_row` (skipping a taken name) and its positional
    parameters, in the "format" style ("qmark" on SQLite)."""
    if "priority" in row:
        return _fast_insert(dialect, _BOUND_EXT), (*_bound_values(row), *_ext_values(row))
    return _fast_insert(dialect), _bound_values(row)


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


def already_exists(row: dict[str, Any]) -> SubmitError:
    return SubmitError(
        grpc.StatusCode.ALREADY_EXISTS,
        f"task {row['name']!r} exists in queue {row['queue']!r} or finished within the "
        "tombstone window",
    )
