"""Effectively-once handlers on the Cloud Spanner emulator (`tq.txn.spanner.once`)."""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from google.cloud.spanner_v1 import KeySet

import tq
import tq.txn.spanner
import tqtesting
from tests import _once
from tests._services.spanner import SpannerEmulator
from tests.testpb import payloads_pb2 as pb
from tq._execution import ExecutionInfo, executing
from tq.txn import _spanner_markers
from tq.txn.spanner import SpannerStore

pytestmark = pytest.mark.spanner

LEDGER_DDL = (
    "CREATE TABLE Ledger (ID STRING(MAX) NOT NULL, Name STRING(MAX) NOT NULL) PRIMARY KEY (ID)"
)
DAY = dt.timedelta(days=1)


@pytest.fixture
def database(spanner_emulator: SpannerEmulator) -> Iterator[Any]:
    db = spanner_emulator.create_database([LEDGER_DDL])
    store = SpannerStore(db, name="once-spanner")
    try:
        yield db
    finally:
        tq.txn.unregister_store(store.name)
        spanner_emulator.drop_database(db)


def _ledger(database: Any) -> list[str]:
    with database.snapshot() as snap:
        return sorted(r[0] for r in snap.read("Ledger", ("Name",), KeySet(all_=True)))


def _markers(database: Any) -> list[str]:
    with database.snapshot() as snap:
        return sorted(r[0] for r in snap.read("TQDone", ("ID",), KeySet(all_=True)))


def _pay(disp: tq.Dispatcher, database: Any, on_run: Any = None) -> None:
    @disp.task_class(id=_once.PAY, prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q")
    @tq.txn.spanner.once(database)
    def pay(payload: pb.Greet, transaction: Any) -> None:
        transaction.insert("Ledger", ("ID", "Name"), [[os.urandom(8).hex(), payload.name]])
        disp.add_task(tq.Task(payload=pb.Count(tag=payload.name)))
        if on_run is not None:
            on_run(payload, transaction)

    @disp.task_class(id=_once.RECEIPT, prototype=pb.Count, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q")
    def receipt(payload: pb.Count) -> None:
        pass


def test_redelivery_after_a_lost_response_does_not_repeat_the_effects(database: Any) -> None:
    disp = _once.dispatcher()
    _pay(disp, database)
    with tqtesting.testing_context(disp) as sched:
        disp.add_task(tq.Task(payload=pb.Greet(name="ada")))
        sched.run(tqtesting.lose_response(_once.PAY, times=2), tqtesting.stop_when_drained())
        (pay,) = sched.tasks().of_class(_once.PAY)
        receipts = sched.tasks().of_class(_once.RECEIPT)
    assert [a.outcome for a in pay.history] == ["lost", "lost", "ok"]
    assert _ledger(database) == ["ada"]
    assert [r.payload for r in receipts] == [pb.Count(tag="ada")]
    assert receipts[0].reminder_id  # written in the handler's transaction
    (marker,) = _markers(database)
    assert marker.startswith(f"q/{pay.task_id}/")


def test_a_handler_that_raises_leaves_no_marker_and_no_effects(database: Any) -> None:
    failures = [RuntimeError("first attempt fails after its insert")]

    def fail_once(payload: pb.Greet, transaction: Any) -> None:
        if failures:
            raise failures.pop()

    disp = _once.dispatcher()
    _pay(disp, database, on_run=fail_once)
    with tqtesting.testing_context(disp, raise_on_task_error=False) as sched:
        disp.add_task(tq.Task(payload=pb.Greet(name="bo")))
        sched.run(tqtesting.stop_after_task(_once.PAY))
        assert (_ledger(database), _markers(database)) == ([], [])
        sched.run(tqtesting.stop_when_drained())
        (pay,) = sched.tasks().of_class(_once.PAY)
    assert [a.outcome for a in pay.history] == ["error", "ok"]
    assert _ledger(database) == ["bo"]
    assert len(_markers(database)) == 1


@pytest.mark.parametrize("first_commits", [True, False], ids=["first-commits", "first-fails"])
def test_concurrent_duplicate_deliveries_run_the_effects_once(
    database: Any, first_commits: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside = threading.Event()
    release = threading.Event()
    second_tried = threading.Event()
    runs: list[str] = []
    real_mark_done = _spanner_markers.mark_done

    def watched_mark_done(transaction: Any, key: Any = None, **kw: Any) -> bool:
        if threading.current_thread().name == "second":
            second_tried.set()
        return real_mark_done(transaction, key, **kw)

    monkeypatch.setattr(_spanner_markers, "mark_done", watched_mark_done)

    @tq.txn.spanner.once(database)
    def handler(payload: pb.Greet, transaction: Any) -> None:
        transaction.insert("Ledger", ("ID", "Name"), [[os.urandom(8).hex(), "dup"]])
        runs.append(threading.current_thread().name)
        if threading.current_thread().name == "first" and not inside.is_set():
            inside.set()
            assert release.wait(60)
            if not first_commits:
                raise RuntimeError("the first delivery fails")

    errors: list[BaseException] = []
    info = ExecutionInfo(task_class="pay", task_id="dup", queue="q")

    def deliver() -> None:
        try:
            with executing(info):
                handler(pb.Greet(name="dup"))
        except BaseException as e:
            errors.append(e)

    first = threading.Thread(target=deliver, name="first")
    second = threading.Thread(target=deliver, name="second")
    first.start()
    assert inside.wait(60)
    second.start()
    assert second_tried.wait(60)  # the second delivery is in its transaction too
    release.set()
    first.join(120)
    second.join(120)
    assert _ledger(database) == ["dup"]
    assert len(_markers(database)) == 1
    # An attempt may run the body and then be aborted: only what committed counts.
    if first_commits:
        assert errors == []
    else:
        assert "second" in runs
        assert [str(e) for e in errors] == ["the first delivery fails"]


def test_mark_done_says_whether_the_marker_is_new(database: Any) -> None:
    def mark(transaction: Any) -> bool:
        return tq.txn.spanner.mark_done(transaction, "q/t")

    assert tq.txn.spanner.run_in_transaction(database, mark)
    assert not tq.txn.spanner.run_in_transaction(database, mark)


def test_a_retention_out_of_bounds_is_refused_at_start_up(database: Any) -> None:
    with pytest.raises(tq.ConfigError, match="retention"):
        tq.txn.spanner.once(database, retention=dt.timedelta(hours=1))


def test_expired_markers_are_removed_in_batches_and_live_ones_kept(database: Any) -> None:
    clock = tqtesting.FakeClock()
    with tq.clock.use_clock(clock):

        def mark(transaction: Any, key: str, retention: dt.timedelta) -> None:
            assert tq.txn.spanner.mark_done(transaction, key, retention=retention)

        for i in range(5):
            tq.txn.spanner.run_in_transaction(database, mark, f"q/old-{i}", DAY)
        tq.txn.spanner.run_in_transaction(database, mark, "q/young", 3 * DAY)
        assert tq.txn.spanner.count_markers(database) == (6, 0)
        clock.advance(DAY)
        assert tq.txn.spanner.count_markers(database) == (1, 5)
        # Pages of 2 in key order: old-0 old-1 | old-2 old-3 | old-4 young.
        assert tq.txn.spanner.expire_markers(database, batch_size=2, max_batches=1) == 2
        assert tq.txn.spanner.expire_markers(database, batch_size=2) == 3
        assert tq.txn.spanner.expire_markers(database) == 0
    assert _markers(database) == ["q/young"]


def test_a_version_1_database_gets_the_marker_table(spanner_emulator: SpannerEmulator) -> None:
    db = spanner_emulator.instance.database(f"once-v1-{os.getpid()}")
    db.create().result(30)
    try:
        v1 = [s for name, s in tq.txn._spanner_schema.STATEMENTS.items() if name != "TQDone"]
        db.update_ddl(v1).result(60)
        assert tq.txn.spanner.schema_version(db) == 1
        assert tq.txn.spanner.create_schema(db) == ["TQDone"]
        assert tq.txn.spanner.schema_version(db) == 2
    finally:
        spanner_emulator.drop_database(db)
