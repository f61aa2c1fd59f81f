"""SQLStore: the outbox's reminders and sweeper leases in PostgreSQL, SQLite or MySQL."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ARRAY,
    URL,
    Connection,
    Engine,
    Text,
    any_,
    bindparam,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url

from tq._errors import ConfigError
from tq._reminder import Reminder, reminder_row
from tq._request import MAX_TASK_SIZE
from tq.txn._keyspace import merge_ranges, subtract_ranges
from tq.txn._store import Lease, ReminderKey, register_store, reminder_key, stores, unregister_store
from tq.txn.sql import _schema
from tq.txn.sql._rows import driver_rows, pg_binary_rows, pg_times, pg_utc_session
from tq.txn.sql._schema import leases, reminders

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession


def async_types() -> tuple[type[AsyncEngine], type[AsyncSession]] | None:
    """SQLAlchemy's async classes, if loaded (they need greenlet; sync use does not)."""
    mod = sys.modules.get("sqlalchemy.ext.asyncio")
    return None if mod is None else (mod.AsyncEngine, mod.AsyncSession)


# A reminder holds a whole CreateTaskRequest (at most Cloud Tasks' 1 MiB) plus
# a small envelope; bytea and BLOB take far more, so Cloud Tasks is the limit.
DEFAULT_MAX_PAYLOAD = MAX_TASK_SIZE + 64 * 1024
_CHUNK = 500  # IDs per statement: well under SQLite's bound-parameter limit

_by_id = reminders.c.id
_ids: Any = bindparam("ids", expanding=True)
_DELETE = reminders.delete().where(_by_id.in_(_ids))
_FETCH = select(
    reminders.c.id, reminders.c.fresh_until, reminders.c.payload, reminders.c.extra
).where(_by_id.in_(_ids))
# PostgreSQL takes a batch of IDs in one parameter, one short statement
# whatever the batch size (an IN list renders a placeholder per ID): the IDs
# joined by commas and split by the server, as psycopg dumps a list parameter
# element by element (~3 us per ID, twice per swept reminder); as an array
# if an ID holds a comma (never for tq's hex IDs).
_PG_BY_IDS = _by_id == any_(func.string_to_array(bindparam("ids", type_=Text), ","))
_PG_BY_ID_ARRAY = _by_id == any_(bindparam("ids", type_=ARRAY(Text)))
_PG_DELETE = reminders.delete().where(_PG_BY_IDS)
_PG_DELETE_ARRAY = reminders.delete().where(_PG_BY_ID_ARRAY)
_PG_COLUMNS = (reminders.c.id, reminders.c.fresh_until, reminders.c.payload, reminders.c.extra)
_PG_FETCH = select(*_PG_COLUMNS).where(_PG_BY_IDS)
_PG_FETCH_ARRAY = select(*_PG_COLUMNS).where(_PG_BY_ID_ARRAY)


def _joined(ids: Sequence[str]) -> str | None:
    """The IDs joined by commas, or None if that would not split back into them."""
    s = ",".join(ids)
    return s if s and s.count(",") == len(ids) - 1 else None


_KEYS = (
    select(reminders.c.id, reminders.c.fresh_until)
    .where(~reminders.c.parked, _by_id >= bindparam("low"), _by_id < bindparam("high"))
    .order_by(_by_id)
    .limit(bindparam("limit"))
)
_SCAN = (
    select(reminders.c.id, reminders.c.fresh_until, reminders.c.payload, reminders.c.extra)
    .where(~reminders.c.parked, _by_id >= bindparam("low"), _by_id < bindparam("high"))
    .order_by(_by_id)
    .limit(bindparam("limit"))
)
_PARKED = (
    select(reminders.c.id, reminders.c.fresh_until, reminders.c.payload, reminders.c.extra)
    .where(reminders.c.parked, _by_id > bindparam("after"))
    .order_by(_by_id)
    .limit(bindparam("limit"))
)
_PARK = (
    reminders.update()
    .where(_by_id == bindparam("rid"))
    .values(parked=True, extra=bindparam("extra"))
)
_UNPARK = (
    reminders.update()
    .where(_by_id == bindparam("rid"))
    .values(parked=False, extra=b"", fresh_until=bindparam("fresh_until"))
)
_COUNT = select(reminders.c.parked, func.count()).group_by(reminders.c.parked)
_LEASE_GC = leases.delete().where(
    leases.c.section == bindparam("section"), leases.c.expires_at <= bindparam("now")
)
_LEASES_HELD = select(leases.c.ranges).where(leases.c.section == bindparam("section"))
_LEASE_DROP = leases.delete().where(
    leases.c.section == bindparam("section"), leases.c.lease_id == bindparam("lease_id")
)
_PG_LOCK = text("SELECT pg_advisory_xact_lock(:c, hashtext(:section))")
_PG_LEASE_LOCK_CLASS = 0x7472
_MYSQL_LOCK = text("SELECT GET_LOCK(:name, 60)")
_MYSQL_UNLOCK = text("SELECT RELEASE_LOCK(:name)")


def sync_url(url: URL) -> URL:
    """The URL of a blocking driver for the same database as `url`.

    psycopg serves sync and async alike; asyncpg becomes psycopg and
    aiosqlite becomes the standard sqlite3 driver.
    """
    backend = url.get_backend_name()
    driver = url.get_driver_name()
    if backend == "postgresql" and driver in ("asyncpg", "psycopg_async"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver == "aiosqlite":
        if url.database in (None, "", ":memory:") or "mode=memory" in str(url):
            raise ConfigError(
                f"{url!r} is an in-memory SQLite database, which a second engine cannot "
                "see: give SQLStore a sync engine for it, or use a file"
            )
        return url.set(drivername="sqlite+pysqlite")
    return url


def url_key(url: URL) -> tuple[Any, ...]:
    """What identifies a database whatever the driver (for finding its store)."""
    backend = url.get_backend_name()
    database = url.database or ""
    if backend == "sqlite" and database and database != ":memory:":
        database = os.path.realpath(database)
    return (backend, url.username or "", url.host or "", url.port, database)


class SQLStore:
    """The outbox store of one PostgreSQL or SQLite database (SQLAlchemy 2).

    Args:
      engine: a sync `Engine`, an `AsyncEngine`, or a URL. For an async
        engine or URL the store makes (and owns) a sync engine on the same
        database: `postgresql+psycopg` serves both; `sqlite+aiosqlite` becomes
        `sqlite`; an in-memory SQLite database cannot be shared that way and
        is refused (ConfigError).
      name: the store's name among registered stores (default "sql"); give
        each database its own.
      max_payload_size: the largest reminder payload accepted, in bytes
        (default: room for a Cloud Tasks request of the maximal 1 MiB).
      register: register with `tq.txn.register_store` (default True), which
        is how sweepers and the transaction helpers find the store.

    Every method runs its own short transaction on the store's engine. The
    tables must exist: call `create_schema()` (or apply deploy/sql/*.sql).
    """

    def __init__(
        self,
        engine: Engine | AsyncEngine | str | URL,
        *,
        name: str = "sql",
        max_payload_size: int = DEFAULT_MAX_PAYLOAD,
        register: bool = True,
    ) -> None:
        self._owns_engine = not isinstance(engine, Engine)
        if isinstance(engine, str | URL):
            engine = create_engine(sync_url(make_url(engine)))
        elif not isinstance(engine, Engine):
            kinds = async_types()
            if kinds is None or not isinstance(engine, kinds[0]):
                raise ConfigError(
                    f"SQLStore takes an Engine, an AsyncEngine or a URL, not {engine!r}"
                )
            engine = create_engine(sync_url(engine.url))
        self._engine: Engine = engine
        self._dialect = _schema.dialect_name(engine)
        self._name = name
        self._max_payload_size = max_payload_size
        self.url_key = url_key(engine.url)
        if register:
            register_store(self)

    def __repr__(self) -> str:
        return f"SQLStore({self._engine.url!r}, name={self._name!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def dialect(self) -> str:
        """'postgresql' or 'sqlite'."""
        return self._dialect

    @property
    def max_payload_size(self) -> int:
        return self._max_payload_size

    def create_schema(self) -> int:
        """Creates or migrates the outbox tables (idempotent); returns the version."""
        return _schema.create_schema(self._engine)

    def close(self) -> None:
        """Unregisters the store and disposes of the engine if the store made it."""
        if any(s is self for s in stores()):
            unregister_store(self._name)
        if self._owns_engine:
            self._engine.dispose()

    # Reminders.

    def delete_reminders(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self._engine.begin() as conn:
            if self._dialect == "postgresql":
                joined = _joined(ids)
                if joined is not None:
                    conn.execute(_PG_DELETE, {"ids": joined})
                else:
                    conn.execute(_PG_DELETE_ARRAY, {"ids": list(ids)})
                return
            # SQLite's driver takes the IDs as they are: the Core statement's
            # expanding IN list is rendered anew for every batch (about 1 us
            # per ID, a quarter of what SQLite spends deleting the row).
            by_driver = conn.dialect.paramstyle == "qmark"
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i : i + _CHUNK]
                if by_driver:
                    marks = ", ".join("?" * len(chunk))
                    conn.exec_driver_sql(
                        f"DELETE FROM tq_reminders WHERE id IN ({marks})", tuple(chunk)
                    )
                else:
                    conn.execute(_DELETE, {"ids": list(chunk)})

    def fetch_reminder_keys(self, low: str, high: str, limit: int) -> list[ReminderKey]:
        if limit <= 0 or low >= high:
            return []
        with self._engine.connect() as conn:
            if self._dialect == "postgresql":
                pg_utc_session(conn)
            rows = driver_rows(conn.execute(_KEYS, {"low": low, "high": high, "limit": limit}))
        t = self._times(rows, 1)
        if t is None:
            return [reminder_key(i, f) for i, f in rows]
        return [reminder_key(i, t(f)) for i, f in rows]

    def scan_reminders(self, low: str, high: str, limit: int) -> list[Reminder]:
        """Up to `limit` unparked reminders with low <= ID < high, ascending, payloads included.

        What `fetch_reminder_keys` and then `fetch_reminders` read, in one
        statement: the sweeper reads a leased range page by page with it.
        """
        if limit <= 0 or low >= high:
            return []
        with self._engine.connect() as conn:
            params = {"low": low, "high": high, "limit": limit}
            if self._dialect == "postgresql":
                pg_utc_session(conn)
                with pg_binary_rows(conn):
                    rows = driver_rows(conn.execute(_SCAN, params))
            else:
                rows = driver_rows(conn.execute(_SCAN, params))
        t = self._times(rows, 1)
        if t is None:
            return [reminder_row(i, f, bytes(p), bytes(e)) for i, f, p, e in rows]
        return [reminder_row(i, t(f), bytes(p), bytes(e)) for i, f, p, e in rows]

    def fetch_reminders(self, ids: Sequence[str]) -> list[Reminder]:
        out: list[Reminder] = []
        if not ids:
            return out
        with self._engine.connect() as conn:
            if self._dialect == "postgresql":
                pg_utc_session(conn)
                joined = _joined(ids)
                if joined is not None:
                    res = conn.execute(_PG_FETCH, {"ids": joined})
                else:
                    res = conn.execute(_PG_FETCH_ARRAY, {"ids": list(ids)})
                rows = driver_rows(res)
                t = pg_times(rows, 1)
                if t is None:
                    return [reminder_row(i, f, bytes(p), bytes(e)) for i, f, p, e in rows]
                return [reminder_row(i, t(f), bytes(p), bytes(e)) for i, f, p, e in rows]
            t = _schema.from_micros
            for k in range(0, len(ids), _CHUNK):
                rows = driver_rows(conn.execute(_FETCH, {"ids": list(ids[k : k + _CHUNK])}))
                out.extend(reminder_row(i, t(f), bytes(p), bytes(e)) for i, f, p, e in rows)
        return out

    def _times(self, rows: list[tuple[Any, ...]], col: int) -> Callable[[Any], dt.datetime] | None:
        """How to turn column `col` of the driver's rows into UTC times; None: as they are."""
        if self._dialect in _schema.MICROS_DIALECTS:
            return _schema.from_micros
        return pg_times(rows, col)

    def park_reminder(self, reminder_id: str, extra: bytes) -> None:
        with self._engine.begin() as conn:
            conn.execute(_PARK, {"rid": reminder_id, "extra": extra})

    def list_parked(self, limit: int, after: str = "") -> list[Reminder]:
        if limit <= 0:
            return []
        with self._engine.connect() as conn:
            rows = conn.execute(_PARKED, {"after": after, "limit": limit})
            return [Reminder(r[0], r[1], bytes(r[2]), bytes(r[3])) for r in rows]

    def unpark_reminder(self, reminder_id: str, fresh_until: dt.datetime) -> bool:
        with self._engine.begin() as conn:
            res = conn.execute(_UNPARK, {"rid": reminder_id, "fresh_until": fresh_until})
            return bool(res.rowcount)

    def count_reminders(self) -> tuple[int, int]:
        counts = {False: 0, True: 0}
        with self._engine.connect() as conn:
            for parked, n in conn.execute(_COUNT):
                counts[bool(parked)] = int(n)
        return counts[False], counts[True]

    # Leases.

    def take_lease(
        self,
        section: str,
        ranges: Sequence[tuple[int, int]],
        expires_at: dt.datetime,
        now: dt.datetime,
    ) -> Lease:
        wanted = merge_ranges(ranges)
        lease_id = os.urandom(16).hex()
        with self._engine.connect() as conn, self._section_lock(conn, section):
            conn.execute(_LEASE_GC, {"section": section, "now": now})
            held: list[tuple[int, int]] = []
            for (encoded,) in conn.execute(_LEASES_HELD, {"section": section}):
                held.extend((int(lo), int(hi)) for lo, hi in json.loads(encoded))
            free = subtract_ranges(wanted, held)
            if free:
                conn.execute(
                    leases.insert(),
                    {
                        "section": section,
                        "lease_id": lease_id,
                        "ranges": json.dumps([[str(lo), str(hi)] for lo, hi in free]),
                        "expires_at": expires_at,
                    },
                )
            conn.commit()
        return Lease(section, lease_id, tuple(free), expires_at)

    def release_lease(self, section: str, lease_id: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(_LEASE_DROP, {"section": section, "lease_id": lease_id})

    @contextlib.contextmanager
    def _section_lock(self, conn: Connection, section: str) -> Iterator[None]:
        # Takers of one section run one at a time, so two never see the same
        # free ranges. PostgreSQL: a transaction-scoped advisory lock per section
        # (there may be no lease row to lock yet); SQLite: the database write
        # lock; MySQL: a named lock per section, released after the commit.
        if self._dialect == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield
        elif self._dialect == "mysql":
            name = "tq_lease_" + hashlib.sha1(section.encode()).hexdigest()
            conn.execute(_MYSQL_LOCK, {"name": name})
            try:
                yield
            finally:
                conn.execute(_MYSQL_UNLOCK, {"name": name})  # not transactional
        else:
            conn.execute(_PG_LOCK, {"c": _PG_LEASE_LOCK_CLASS, "section": section})
            yield
