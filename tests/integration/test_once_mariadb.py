"""Effectively-once handlers' done markers on MariaDB: new or found, rolled back
with their transaction, a concurrent duplicate waiting on the first's key, and
expiry in batches (MySQL deletes by IDs: no LIMIT subquery on the same table)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

import tq
import tq.txn.sql
import tqtesting
from tests import _once
from tests.conformance.harness_sql import make_engine
from tests.integration.test_once_sql import _concurrent_duplicates
from tq.txn.sql import SQLStore

pytestmark = pytest.mark.mariadb
DAY = dt.timedelta(days=1)


@pytest.fixture
def engine(mariadb_db_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(mariadb_db_url)
    store = SQLStore(eng, name="once-mariadb")
    store.create_schema()
    with eng.begin() as conn:
        conn.exec_driver_sql(_once.LEDGER_DDL)
    yield eng
    store.close()
    eng.dispose()


def test_mark_done_says_whether_the_marker_is_new(engine: sa.Engine) -> None:
    sessions = sessionmaker(engine)
    with tq.txn.sql.transaction(sessions) as s:
        assert tq.txn.sql.mark_done(s, "q/t")
    with tq.txn.sql.transaction(sessions) as s:
        assert not tq.txn.sql.mark_done(s, "q/t")
    with engine.connect() as conn:
        assert tq.txn.sql.mark_done(conn, "q/u")
        conn.rollback()
        assert tq.txn.sql.mark_done(conn, "q/u")
        conn.commit()
    assert _once.markers(engine) == ["q/t", "q/u"]


@pytest.mark.parametrize("first_commits", [True, False], ids=["first-commits", "first-fails"])
def test_a_concurrent_duplicate_waits_on_the_marker_then_runs_only_if_needed(
    engine: sa.Engine, first_commits: bool
) -> None:
    _concurrent_duplicates(engine, sessionmaker(engine), first_commits)


def test_expired_markers_are_removed_in_batches_and_live_ones_kept(engine: sa.Engine) -> None:
    sessions: sessionmaker[Session] = sessionmaker(engine)
    clock = tqtesting.FakeClock()
    with tq.clock.use_clock(clock):
        for i in range(5):
            with tq.txn.sql.transaction(sessions) as s:
                tq.txn.sql.mark_done(s, f"q/old-{i}", retention=DAY)
        with tq.txn.sql.transaction(sessions) as s:
            tq.txn.sql.mark_done(s, "q/young", retention=3 * DAY)
        clock.advance(DAY)
        assert tq.txn.sql.count_markers(engine) == (1, 5)
        assert tq.txn.sql.expire_markers(engine, batch_size=2, max_batches=1) == 2
        assert tq.txn.sql.expire_markers(engine, batch_size=2) == 3
        assert tq.txn.sql.expire_markers(engine) == 0
    assert _once.markers(engine) == ["q/young"]
