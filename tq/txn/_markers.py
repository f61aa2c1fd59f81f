"""Done markers: what makes a handler's database effects happen once.

Cloud Tasks and the database queue deliver a task at least once: a handler
whose transaction committed may run again when its response was lost (the
process died, the connection dropped, the deadline passed). A handler made
effectively once writes a **done marker** in the same transaction as its
effects; a delivery that finds the marker committed answers 200 without
running the handler again. This module holds what every store shares:

* `marker_key(info)`: the marker's key, the identity of the task. Its queue
  and task ID (the reminder ID of a transactional task, the hash of a
  deduplication key, or the name Cloud Tasks, the database queue or
  tqtesting gave it) and, when tq built the task, the instant it was added
  for (`ExecutionInfo.expected_eta`). The last part tells apart two tasks
  added with one deduplication key once the queue forgot the first name
  (an hour or so after it ran); every delivery of one task carries the same
  value, so redeliveries still match.
* Retention: a marker lives `DEFAULT_MARKER_RETENTION` (35 days) after its
  commit, longer than Cloud Tasks keeps any task (31 days), then expired
  markers are deleted in batches (`tq markers expire`).
* `insert_marker`: the SQL write on a DB-API cursor, for an integration that
  writes markers on its own connection (the SQLAlchemy stores use the same
  statement through their connection).

Stores: `tq.txn.sql` (`mark_done`, `once`) and `tq.txn.spanner` (the same
names). Tables: `tq_done` (SQL), `TQDone` (Spanner).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from tq import _metrics, clock
from tq._errors import ConfigError
from tq._execution import ExecutionInfo, execution_info

log = logging.getLogger("tq.txn")

DEFAULT_MARKER_RETENTION = dt.timedelta(days=35)
"""How long a done marker lives after its commit: Cloud Tasks deletes a task at
the latest 31 days after it was created, so no redelivery comes later."""

MIN_MARKER_RETENTION = dt.timedelta(days=1)
"""The shortest retention accepted: redeliveries come after a lease or a
deadline (minutes) plus the queue's backoff (at most an hour by default)."""

MAX_MARKER_RETENTION = dt.timedelta(days=3650)
"""The longest retention accepted (ten years)."""

MAX_KEY_LENGTH = 1024

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def marker_key(info: ExecutionInfo | None = None) -> str:
    """The done marker's key of the task `info` describes (default: the running one).

    `"<queue>/<task ID>"`, followed by `"/<seconds>.<microseconds>"` of the
    task's `expected_eta` when it has one (every task tq adds does).
    Raises LookupError outside a handler without `info`, and ConfigError
    for a push that names no task (no `X-CloudTasks-TaskName` header): such
    a push cannot be told from a new task, so it cannot be run once.
    """
    if info is None:
        info = execution_info()
    if not info.task_id or not info.queue:
        raise ConfigError(
            f"tq: task of class {info.task_class!r} arrived without its queue or task name "
            "(X-CloudTasks-QueueName / X-CloudTasks-TaskName), so its done marker has no key; "
            "effectively-once handlers run behind Cloud Tasks, the database queue or tqtesting "
            "(or give the key yourself to mark_done)"
        )
    key = f"{info.queue}/{info.task_id}"
    eta = info.expected_eta
    if eta is not None:
        d = eta - _EPOCH
        key += f"/{d.days * 86_400 + d.seconds}.{d.microseconds:06d}"
    return check_key(key)


def check_key(key: str) -> str:
    """`key` if it can key a marker; ConfigError if it is empty or too long."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise ConfigError(
            f"a done marker's key must be a string of 1 to {MAX_KEY_LENGTH} characters, "
            f"got {key!r:.80}"
        )
    return key


def check_retention(retention: dt.timedelta) -> dt.timedelta:
    """`retention` if it is within the bounds; ConfigError saying why if not."""
    if not isinstance(retention, dt.timedelta):
        raise ConfigError(f"marker retention must be a datetime.timedelta, got {retention!r}")
    if retention < MIN_MARKER_RETENTION:
        raise ConfigError(
            f"marker retention {retention} is shorter than {MIN_MARKER_RETENTION}: a "
            "redelivery after the marker expired would run the handler again (Cloud Tasks "
            "may redeliver for up to 31 days; keep the default of 35 days there)"
        )
    if retention > MAX_MARKER_RETENTION:
        raise ConfigError(
            f"marker retention {retention} is longer than {MAX_MARKER_RETENTION.days} days"
        )
    return retention


def expiry(retention: dt.timedelta, now: dt.datetime | None = None) -> dt.datetime:
    """When a marker committed now (the context's clock by default) expires."""
    return (now if now is not None else clock.now()) + retention


def to_micros(value: dt.datetime) -> int:
    """A timezone-aware time as integer microseconds since the epoch (SQLite's times)."""
    d = value - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


# The SQL write, shared by the SQLAlchemy stores and integrations with a
# connection of their own. PostgreSQL: a second transaction inserting the same
# key waits on the unique index until the first ends, then inserts nothing
# (committed) or the row (rolled back). SQLite: writers take turns. MySQL:
# INSERT IGNORE waits on the duplicate key the same way.
MARKER_TABLE = "tq_done"
SQL_DIALECTS = ("postgresql", "sqlite", "mysql", "mariadb")
_MICROS = ("sqlite", "mysql", "mariadb")  # times as integer microseconds
_PLACEHOLDERS = {
    "qmark": ("?", "?"),
    "format": ("%s", "%s"),
    "pyformat": ("%(id)s", "%(expires_at)s"),
    "named": (":id", ":expires_at"),
    "numeric": (":1", ":2"),
    "numeric_dollar": ("$1", "$2"),
}


def insert_marker_sql(paramstyle: str, dialect: str = "postgresql") -> str:
    """The marker INSERT in a DB-API `paramstyle`; it inserts nothing when the key exists."""
    marks = _PLACEHOLDERS.get(paramstyle)
    if marks is None:
        raise ConfigError(f"tq: unsupported driver parameter style {paramstyle!r}")
    values = f"{MARKER_TABLE} (id, expires_at) VALUES ({marks[0]}, {marks[1]})"
    if dialect in ("mysql", "mariadb"):
        return f"INSERT IGNORE INTO {values}"
    return f"INSERT INTO {values} ON CONFLICT (id) DO NOTHING"


def insert_marker_params(
    key: str, expires_at: dt.datetime, *, dialect: str, paramstyle: str
) -> Any:
    """The parameters of `insert_marker_sql` (SQLite and MySQL keep times as integer
    microseconds)."""
    if dialect not in SQL_DIALECTS:
        raise ConfigError(f"tq: no done markers for {dialect!r}; use one of {SQL_DIALECTS}")
    if expires_at.tzinfo is None:
        raise ConfigError(f"tq: naive datetime {expires_at!r}; times must be timezone-aware")
    when: Any = to_micros(expires_at) if dialect in _MICROS else expires_at
    if paramstyle in ("pyformat", "named"):
        return {"id": key, "expires_at": when}
    return (key, when)


def insert_marker(
    cursor: Any,
    key: str,
    expires_at: dt.datetime,
    *,
    dialect: str,
    paramstyle: str = "format",
) -> bool:
    """Writes a done marker through a DB-API `cursor`, in its connection's transaction.

    True: the marker is new (run the handler, then commit). False: a
    committed marker exists (the task is done; run nothing). `dialect` is
    "postgresql", "sqlite" or "mysql"; `paramstyle` the cursor's (Django's cursors
    take "format" whatever the database). The `tq_done` table must exist
    (`tq db migrate`).
    """
    check_key(key)
    cursor.execute(
        insert_marker_sql(paramstyle, dialect),
        insert_marker_params(key, expires_at, dialect=dialect, paramstyle=paramstyle),
    )
    return bool(cursor.rowcount == 1)


def note_done_already(key: str, task_class: str) -> None:
    """Logs and counts a delivery answered without running its handler."""
    _metrics.add("tq_markers_found", task_class=task_class)
    log.info(
        "tq: task %s of class %s is done already (its done marker is committed); "
        "answering without running it again",
        key,
        task_class,
        extra={"tq_class": task_class or None, "tq_marker": key},
    )
