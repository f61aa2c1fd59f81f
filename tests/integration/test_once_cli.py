"""`tq markers count|expire` on SQLite, PostgreSQL and the Spanner emulator."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import pytest

import tq
import tq.txn.spanner
import tq.txn.sql
import tqtesting
from tests._cli import db_url_fixture, rows  # noqa: F401
from tq.cli._databases import sql_engine
from tq.cli._errors import CONFIG

LONG_AGO = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)


def test_markers_count_and_expire_on_sql(db_url: str) -> None:
    rows("db", "init", "--db", db_url, "--only", "outbox")
    engine = sql_engine(db_url)
    try:
        with tq.clock.use_clock(tqtesting.FakeClock(LONG_AGO)):
            for i in range(5):  # expired long ago
                with engine.begin() as conn:
                    tq.txn.sql.mark_done(conn, f"q/old-{i}", retention=dt.timedelta(days=1))
        with engine.begin() as conn:
            tq.txn.sql.mark_done(conn, "q/live")
    finally:
        engine.dispose()
    assert rows("markers", "count", "--db", db_url) == [{"store": "sql", "live": 1, "expired": 5}]
    expire = ("markers", "expire", "--db", db_url, "--marker-batch-size", "2")
    assert rows(*expire, "--max-batches", "1") == [{"store": "sql", "deleted": 2}]
    assert rows(*expire) == [{"store": "sql", "deleted": 3}]
    assert rows("markers", "count", "--db", db_url) == [{"store": "sql", "live": 1, "expired": 0}]


def test_markers_without_a_database_is_a_configuration_error() -> None:
    rows("markers", "count", code=CONFIG)


@pytest.mark.spanner
def test_markers_count_and_expire_on_spanner(spanner_emulator: Any) -> None:
    db = spanner_emulator.create_database()
    store = tq.txn.spanner.SpannerStore(db, name="markers-cli")
    path = (
        f"projects/{spanner_emulator.project}/instances/"
        f"{spanner_emulator.instance.instance_id}/databases/{db.database_id}"
    )
    try:

        def mark(transaction: Any, key: str, retention: dt.timedelta) -> None:
            tq.txn.spanner.mark_done(transaction, key, retention=retention)

        with tq.clock.use_clock(tqtesting.FakeClock(LONG_AGO)):
            for i in range(3):
                store.run_in_transaction(mark, f"q/old-{secrets.token_hex(2)}-{i}", dt.timedelta(1))
        store.run_in_transaction(mark, "q/live", tq.txn.DEFAULT_MARKER_RETENTION)
        count = ("markers", "count", "--spanner", path)
        assert rows(*count) == [{"store": "cli-spanner", "live": 1, "expired": 3}]
        assert rows("markers", "expire", "--spanner", path) == [
            {"store": "cli-spanner", "deleted": 3}
        ]
        assert rows(*count) == [{"store": "cli-spanner", "live": 1, "expired": 0}]
    finally:
        tq.txn.unregister_store(store.name)
        spanner_emulator.drop_database(db)
