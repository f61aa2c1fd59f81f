"""A task's row in `tq_tasks`: from a CreateTaskRequest, and inserting it.

`task_row` reads the request once into the values of a new row (queue and
name, the HTTP request, ETA, priority and tag); `insert_task` writes it with
one plain statement in the common case, and takes over a finished row of
the same name past its tombstone window otherwise. `insert_tasks` writes a
batch in one statement. The three databases' statements differ here only
in their INSERT (ON CONFLICT; INSERT IGNORE and a locked read on MySQL; on
PostgreSQL a batch travels as one JSON parameter, and every INSERT notifies
the new tasks' queues for workers in other processes).
"""

from __future__ import annotations

import functools
import json
import operator
import re
from base64 import b64encode as _b64
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii as _quote
from typing import Any

import grpc
import sqlalchemy as sa
from google.cloud.tasks_v2.types import target
from google.protobuf.message import Message
from sqlalchemy.dialects import postgresql, sqlite

from tq._errors import SubmitError
from tq._request import EXPECTED_ETA_HEADER
from tq._task import PRIORITY_HEADER, TAG_HEADER
from tq._taskclass import FULL_QUEUE_RE
from tq.dbqueue import _db
from tq.dbqueue._schema import State, tasks

_TASK_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
BATCH_ROWS = 500
"""The most rows one INSERT takes (bound parameters stay well under every driver's limit)."""
_dumps = json.JSONEncoder(separators=(",", ":")).encode


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


def built_row(
    task_class: str,
    parts: tuple[Any, ...],
    known: dict[int, tuple[Any, tuple[Any, ...]]],
    *,
    now_us: int,
    reserve_us: int,
    generated_name: Callable[[], str],
    priority_step_us: int = 1_000_000,
) -> dict[str, Any]:
    """`task_row` of the request of a `BuiltSubmission` from its `parts`, without building
    it: the same values (the headers' JSON keys may come in another order).

    The columns every task of a template shares come from `task_row` of the
    template's envelope, once per template (`known`, by the template's id).
    """
    tpl, parent, task_id, url, body, eta_value, eta_us, priority, tag = parts
    entry = known.get(id(tpl))
    if entry is None or entry[0] is not tpl:
        if len(known) >= 256:
            known.clear()
        entry = known[id(tpl)] = (tpl, _template_columns(tpl.envelope))
    method, headers_head, oidc_email, oidc_audience, app_engine, deadline = entry[1]
    reserve: int | None = reserve_us
    if task_id:
        if not _TASK_ID_RE.match(task_id):
            raise _invalid(f"task ID {task_id!r} must be 1 to 500 [A-Za-z0-9_-]")
        name = task_id
    else:
        name, reserve = generated_name(), None
    if eta_us is None:
        eta_us = now_us
    headers = headers_head + _quote(eta_value)
    if priority:
        headers += ',"' + PRIORITY_HEADER + '":"' + str(priority) + '"'
    if tag:
        headers += ',"' + TAG_HEADER + '":' + _quote(tag)
    row = {
        "queue": _queue_id(parent), "name": name,
        "task_class": task_class, "url": url, "method": method, "headers": headers + "}",
        "body": body, "oidc_email": oidc_email, "oidc_audience": oidc_audience,
        "app_engine": app_engine, "dispatch_deadline_s": deadline, "eta_us": eta_us,
        "created_us": now_us, "reserve_us": reserve,
    }  # fmt: skip
    if priority or tag:
        row["priority"] = priority
        row["rank_us"] = eta_us - priority * priority_step_us if priority else None
        row["tag"] = tag or None
    return row


def _template_columns(envelope: Message) -> tuple[Any, ...]:
    """What `built_row` takes from a template's envelope (through `task_row`)."""
    row = task_row(envelope, "", now_us=0, reserve_us=0, generated_name=str)
    head = row["headers"][:-1]  # the envelope's headers, then the ETA header's
    head += ("," if len(head) > 1 else "") + _quote(EXPECTED_ETA_HEADER) + ":"
    return (
        row["method"], head, row["oidc_email"], row["oidc_audience"], row["app_engine"],
        row["dispatch_deadline_s"],
    )  # fmt: skip


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
    if dialect == "postgresql":
        sql = _notifying(sql)
    if conn.exec_driver_sql(sql, values).rowcount == 1:
        return True
    return _reuse(conn, row)


def _reuse(conn: sa.Connection, row: dict[str, Any]) -> bool:
    """Takes over the name of a finished task past its window; False if the name is taken."""
    full = {**_ALL_NULL, "priority": 0, **row, **_NEW_TASK}
    if _db.is_mysql(conn):
        return _reuse_mysql(conn, full)
    return conn.execute(_reuse_statement(conn.dialect.name), full).first() is not None


NOTIFY_CHANNEL = "tq_tasks"
"""PostgreSQL: the channel a new task's commit notifies, with its queue as payload.

Workers in other processes LISTEN on it (`tq.dbqueue._listen`); the INSERT
itself notifies (no trigger, no extra statement), so the notification goes
out exactly when the row commits.
"""


@functools.cache
def _notifying(insert: str) -> str:
    """A PostgreSQL INSERT of one row that also notifies its queue; one row back if it went in."""
    return (
        f"WITH i AS ({insert} RETURNING queue) SELECT pg_notify('{NOTIFY_CHANNEL}', queue) FROM i"
    )


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
    """`json.dumps(dict(headers), separators=(",", ":"))` of a string map, three times as fast.

    Iterates the map's keys and looks each up (both native to a protobuf map),
    where `items()` is `Mapping`'s pure-Python view.
    """
    return "{" + ",".join([_quote(k) + ":" + _quote(headers[k]) for k in headers]) + "}"


def _invalid(msg: str) -> SubmitError:
    return SubmitError(grpc.StatusCode.INVALID_ARGUMENT, f"database queue: {msg}")


def already_exists(row: dict[str, Any]) -> SubmitError:
    return SubmitError(
        grpc.StatusCode.ALREADY_EXISTS,
        f"task {row['name']!r} exists in queue {row['queue']!r} or finished within the "
        "tombstone window",
    )


# A batch of rows in one statement.


def insert_tasks(
    conn: sa.Connection, rows: Sequence[dict[str, Any]], *, atomic: bool = False
) -> list[bool]:
    """Inserts `task_row`s in as few statements as can be; per row, whether it went in.

    One multi-row `INSERT ... ON CONFLICT DO NOTHING` (MySQL: `INSERT
    IGNORE`) per `BATCH_ROWS` rows of the same columns (with or without a
    priority). When some names were given (not generated, so they may be
    taken), the statement returns the rows that went in (PostgreSQL,
    SQLite, MariaDB 10.5 and later), and only the others go on to
    `insert_task`'s reuse of a finished name; on MySQL, which cannot say
    which rows went in, such a batch goes row by row. Never aborts the
    caller's transaction.

    `atomic` (PostgreSQL, rows that `one_statement` takes, on a connection
    in autocommit mode): the rows go in together or not at all, in one
    statement without a transaction around it; a generated name that is
    taken fails the whole statement instead of being skipped.
    """
    if len(rows) == 1 and not atomic:
        return [insert_task(conn, rows[0])]
    dialect = conn.dialect.name
    named = any(r["reserve_us"] is not None for r in rows)  # generated names have none
    if named and not _returns_inserted(conn):
        return [insert_task(conn, r) for r in rows]
    out = [False] * len(rows)
    pg = dialect == "postgresql"
    for chunk, with_ext in _runs(rows):
        values = _ext_row_values if with_ext else _bound_values
        if pg:
            _pg_insert_chunk(conn, rows, chunk, values, with_ext, named, atomic, out)
            continue
        sql = _multi_insert(dialect, len(chunk), with_ext, named)
        params = tuple(v for i in chunk for v in values(rows[i]))
        res = conn.exec_driver_sql(sql, params)
        if named:
            went_in = set(res.fetchall())
            for i in chunk:
                r = rows[i]
                out[i] = (r["queue"], r["name"]) in went_in or _reuse(conn, r)
        elif res.rowcount == len(chunk):
            for i in chunk:
                out[i] = True
        else:
            raise _lost(len(chunk) - res.rowcount, len(chunk))
    return out


def one_statement(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether `insert_tasks(..., atomic=True)` takes `rows`: generated names, one statement."""
    if not rows or len(rows) > BATCH_ROWS:
        return False
    ext = "priority" in rows[0]
    return all(r["reserve_us"] is None and ("priority" in r) is ext for r in rows)


def _pg_insert_chunk(
    conn: sa.Connection,
    rows: Sequence[dict[str, Any]],
    chunk: list[int],
    values: Callable[[Any], tuple[Any, ...]],
    with_ext: bool,
    named: bool,
    atomic: bool,
    out: list[bool],
) -> None:
    """PostgreSQL: one chunk in one statement answering in one row (see `_pg_json_insert`)."""
    n = len(chunk)
    batch = _pg_json(rows, chunk, values)
    if named:
        res = conn.exec_driver_sql(_pg_json_insert(with_ext, True, False), (batch, n))
        n_in, went, _ = res.one()
        if n_in == n:
            for i in chunk:
                out[i] = True
            return
        went_in = set(went or ())
        for i in chunk:
            r = rows[i]
            out[i] = f"{r['queue']}/{r['name']}" in went_in or _reuse(conn, r)
        return
    n_in = conn.exec_driver_sql(_pg_json_insert(with_ext, False, atomic), (batch,)).scalar_one()
    if n_in != n:
        raise _lost(n - n_in, n)
    for i in chunk:
        out[i] = True


def _lost(n: int, of: int) -> SubmitError:
    # Generated names are 128 random bits: never taken.
    return SubmitError(
        grpc.StatusCode.INTERNAL,
        f"database queue: {n} of {of} new tasks with generated names did not go in",
    )


def _runs(rows: Sequence[dict[str, Any]]) -> list[tuple[list[int], bool]]:
    """The rows' indexes cut into runs of the same columns, at most BATCH_ROWS each.

    Runs keep the rows' order, so that tasks due at once keep it in the table too.
    """
    runs: list[tuple[list[int], bool]] = []
    for i, r in enumerate(rows):
        ext = "priority" in r
        if not runs or runs[-1][1] != ext or len(runs[-1][0]) >= BATCH_ROWS:
            runs.append(([], ext))
        runs[-1][0].append(i)
    return runs


def _returns_inserted(conn: sa.Connection) -> bool:
    """Whether an INSERT that skips taken names can return the rows it inserted."""
    d = conn.dialect
    if d.name not in _db.MYSQL_DIALECTS:
        return True
    return bool(getattr(d, "is_mariadb", False)) and (d.server_version_info or ()) >= (10, 5)


def _ext_row_values(row: dict[str, Any]) -> tuple[Any, ...]:
    return (*_bound_values(row), *_ext_values(row))


@functools.lru_cache(maxsize=128)
def _multi_insert(dialect: str, n: int, with_ext: bool, returning: bool) -> str:
    """The INSERT of `n` new rows (their values in `_BOUND` order, then `_EXT`'s)."""
    bound = (*_BOUND, *_EXT) if with_ext else _BOUND
    mark = "?" if dialect == "sqlite" else "%s"
    consts = [f"'{v}'" if isinstance(v, str) else str(v) for v in _NEW_TASK.values()]
    one = f"({', '.join([mark] * len(bound) + consts)})"
    columns = f"{tasks.name} ({', '.join([*bound, *_NEW_TASK])})"
    values = "VALUES " + ", ".join([one] * n)
    if dialect in _db.MYSQL_DIALECTS:
        sql = f"INSERT IGNORE INTO {columns} {values}"
    else:
        sql = f"INSERT INTO {columns} {values} ON CONFLICT (queue, name) DO NOTHING"
    return sql + " RETURNING queue, name" if returning else sql


_BODY = _BOUND.index("body")


def _pg_json(
    rows: Sequence[dict[str, Any]], chunk: list[int], values: Callable[[Any], tuple[Any, ...]]
) -> str:
    """The rows of `chunk` as one JSON array of arrays, bodies in base64 (see `_pg_json_insert`)."""
    out = []
    for i in chunk:
        v = list(values(rows[i]))
        v[_BODY] = _b64(v[_BODY]).decode("ascii")
        out.append(v)
    return _dumps(out)


@functools.cache
def _pg_json_insert(with_ext: bool, named: bool, atomic: bool) -> str:
    """PostgreSQL: a batch as one JSON parameter, the statement the same for any batch.

    A multi-row VALUES statement would have psycopg rewrite its thousands of
    placeholders on every call (it caches only short statements); this one
    is short, so psycopg converts it once and the server prepares it once.
    It answers in one row: how many rows went in, and with `named` (its
    second parameter: the batch's size) the `queue/name` of each when some
    did not. `atomic`: no ON CONFLICT (a taken generated name fails it all).
    """
    bound = (*_BOUND, *_EXT) if with_ext else _BOUND
    picks = ", ".join(
        f"decode(r->>{i}, 'base64')" if c == "body" else f"(r->>{i})::{_PG_TYPES[c]}"
        for i, c in enumerate(bound)
    )
    consts = ", ".join(f"'{v}'" if isinstance(v, str) else str(v) for v in _NEW_TASK.values())
    conflict = "" if atomic else " ON CONFLICT (queue, name) DO NOTHING"
    # The new rows' queues are notified (see NOTIFY_CHANNEL) by an uncorrelated
    # subquery: evaluated once, even when no row went in.
    notify = (
        f"(SELECT count(pg_notify('{NOTIFY_CHANNEL}', q)) "
        "FROM (SELECT DISTINCT queue AS q FROM i) d)"
    )
    which = ""
    if named:
        which = ", CASE WHEN count(*) < %s THEN array_agg(i.queue || '/' || i.name) END"
    return (
        f"WITH i AS (INSERT INTO {tasks.name} ({', '.join([*bound, *_NEW_TASK])}) "
        f"SELECT {picks}, {consts} FROM jsonb_array_elements(%s::jsonb) AS r{conflict} "
        f"RETURNING queue, name) SELECT count(*){which}, {notify} FROM i"
    )


_PG_TYPES = {
    "queue": "text", "name": "text", "task_class": "text", "url": "text", "method": "text",
    "headers": "text", "oidc_email": "text", "oidc_audience": "text", "app_engine": "boolean",
    "dispatch_deadline_s": "float8", "eta_us": "bigint", "created_us": "bigint",
    "reserve_us": "bigint", "priority": "integer", "rank_us": "bigint", "tag": "text",
}  # fmt: skip
