"""Django's databases as tq sees them: SQLAlchemy engines from the same settings.

tq's sweeper, the database queue's workers and the `tq` command read and
write tq's tables through SQLAlchemy. For a Django alias they use an engine
made from that alias's own settings (`connections[alias].settings_dict`:
NAME, USER, PASSWORD, HOST, PORT and the libpq OPTIONS), read when first
needed and again whenever they change (Django's test runner renames the
database after start-up). Writes inside your `atomic()` blocks go through
Django's own connection (see `_atomic`).

`DjangoStore` is the outbox store of one alias, registered for sweepers
and admin commands under the name "django:<alias>".
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import threading
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from tq._reminder import Reminder
from tq.dbqueue import sqlite_engine
from tq.txn import Lease, ReminderKey, stores, unregister_store
from tq.txn.sql import DEFAULT_MAX_PAYLOAD, SQLStore
from tq.txn.sql._store import url_key

VENDORS = ("postgresql", "sqlite")
# Django's PostgreSQL OPTIONS that are Django's own, not libpq connection parameters.
_DJANGO_PG_OPTIONS = frozenset(
    {"isolation_level", "server_side_binding", "assume_role", "pool", "cursor_factory",
     "context", "prepare_threshold"}
)  # fmt: skip


def vendor(alias: str) -> str:
    """The alias's database vendor as Django names it ('postgresql', 'sqlite', ...)."""
    return str(connections[alias].vendor)


def supported(alias: str) -> bool:
    return vendor(alias) in VENDORS


def sqlalchemy_url(alias: str) -> sa.URL:
    """The SQLAlchemy URL of the database Django's `alias` connects to now.

    Raises ImproperlyConfigured for a database tq cannot share: another
    vendor than PostgreSQL or SQLite, or an in-memory SQLite database (a
    second connection would see another, empty database).
    """
    conn = connections[alias]
    sd = conn.settings_dict
    kind = conn.vendor
    if kind == "sqlite":
        name = str(sd["NAME"])
        if name == ":memory:" or "mode=memory" in name:
            raise ImproperlyConfigured(
                f"database {alias!r} is an in-memory SQLite database, which tq's workers "
                "and sweeper cannot share: use a file (in tests, set "
                "DATABASES[...]['TEST']['NAME'] to a file path)"
            )
        return sa.URL.create("sqlite", database=name)
    if kind == "postgresql":
        options = sd.get("OPTIONS") or {}
        query = {k: str(v) for k, v in options.items() if k not in _DJANGO_PG_OPTIONS}
        port = sd.get("PORT")
        # The driver Django uses: psycopg 3 if installed (Django's first choice), else psycopg2.
        driver = "psycopg" if importlib.util.find_spec("psycopg") is not None else "psycopg2"
        return sa.URL.create(
            f"postgresql+{driver}",
            username=sd.get("USER") or None,
            password=sd.get("PASSWORD") or None,
            host=sd.get("HOST") or None,
            port=int(port) if port else None,
            database=sd.get("NAME") or None,
            query=query,
        )
    raise ImproperlyConfigured(
        f"database {alias!r} is {kind}; tq's tables live on PostgreSQL or SQLite"
    )


_engines: dict[str, sa.Engine] = {}
_engines_lock = threading.Lock()


_by_settings: dict[tuple[str, int], tuple[Any, sa.Engine]] = {}


def engine_for(alias: str) -> sa.Engine:
    """The SQLAlchemy engine on `alias`'s database, one per database per process.

    SQLite files get the database queue's set-up (WAL, a busy timeout).
    Found again from the alias's settings unless they changed (every
    enqueue to the database queue asks).
    """
    sd = connections[alias].settings_dict
    seen = _by_settings.get((alias, id(sd)))
    fingerprint = (sd.get("NAME"), sd.get("HOST"), sd.get("PORT"), sd.get("USER"))
    if seen is not None and seen[0] == fingerprint:
        return seen[1]
    engine = _engine_of(alias)
    _by_settings[(alias, id(sd))] = (fingerprint, engine)
    return engine


def _engine_of(alias: str) -> sa.Engine:
    url = sqlalchemy_url(alias)
    key = url.render_as_string(hide_password=False)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            if url.get_backend_name() == "sqlite":
                engine = sqlite_engine(str(url.database))
            else:
                engine = sa.create_engine(url, pool_pre_ping=True)
            _engines[key] = engine
        return engine


def dispose_engines() -> None:
    """Closes every engine made here (the next use makes new ones)."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
        _by_settings.clear()
    for e in engines:
        e.dispose()


class DjangoStore(SQLStore):
    """The outbox store of a Django alias: tq's `SQLStore` on an engine from its settings.

    Reminders are written by Django's own connection inside `atomic()`
    blocks; everything else (sweeper scans, deletes, parking, leases, done
    markers, admin) goes through this store, on the engine
    `engine_for(alias)` gives at the time of the call. It is a `SQLStore`
    (what tq's SQL tooling looks for) made on use rather than at start-up:
    Django's test runner renames the database after the app is ready.
    """

    def __init__(self, alias: str) -> None:  # no SQLStore.__init__: no engine yet
        self.alias = alias
        self._name = f"django:{alias}"
        self._lock = threading.Lock()
        self._store: SQLStore | None = None
        self._owns_engine = False
        self._max_payload_size = DEFAULT_MAX_PAYLOAD
        try:
            self.url_key = url_key(sqlalchemy_url(alias))
        except ImproperlyConfigured:  # said again when the store is used
            self.url_key = ("django", alias)

    def __repr__(self) -> str:
        return f"DjangoStore({self.alias!r})"

    def sql_store(self) -> SQLStore:
        """The SQLStore on the alias's database as configured now."""
        engine = engine_for(self.alias)
        with self._lock:
            if self._store is None or self._store.engine is not engine:
                self._store = SQLStore(engine, name=self._name, register=False)
                self.url_key = self._store.url_key
            return self._store

    @property
    def engine(self) -> sa.Engine:
        return self.sql_store().engine

    @property
    def dialect(self) -> str:
        return self.sql_store().dialect

    def create_schema(self) -> int:
        return self.sql_store().create_schema()

    def close(self) -> None:
        """Unregisters the store (engines stay shared: see `dispose_engines`)."""
        if any(s is self for s in stores()):
            unregister_store(self._name)

    def delete_reminders(self, ids: Sequence[str]) -> None:
        self.sql_store().delete_reminders(ids)

    def fetch_reminder_keys(self, low: str, high: str, limit: int) -> list[ReminderKey]:
        return self.sql_store().fetch_reminder_keys(low, high, limit)

    def fetch_reminders(self, ids: Sequence[str]) -> list[Reminder]:
        return self.sql_store().fetch_reminders(ids)

    def scan_reminders(self, low: str, high: str, limit: int) -> list[Reminder]:
        return self.sql_store().scan_reminders(low, high, limit)

    def park_reminder(self, reminder_id: str, extra: bytes) -> None:
        self.sql_store().park_reminder(reminder_id, extra)

    def list_parked(self, limit: int, after: str = "") -> list[Reminder]:
        return self.sql_store().list_parked(limit, after)

    def unpark_reminder(self, reminder_id: str, fresh_until: dt.datetime) -> bool:
        return self.sql_store().unpark_reminder(reminder_id, fresh_until)

    def count_reminders(self) -> tuple[int, int]:
        return self.sql_store().count_reminders()

    def take_lease(
        self,
        section: str,
        ranges: Sequence[tuple[int, int]],
        expires_at: dt.datetime,
        now: dt.datetime,
    ) -> Lease:
        return self.sql_store().take_lease(section, ranges, expires_at, now)

    def release_lease(self, section: str, lease_id: str) -> None:
        self.sql_store().release_lease(section, lease_id)
