"""Spanner transactions tq was not told about, on the emulator: the client's own
Database.run_in_transaction is seen (add_task refuses, and the fixes work);
batches, other threads and databases without a store are not (submitted at
once, as docs/outbox-spanner.md says)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import tq
import tq.txn.spanner
from tests._services.spanner import SpannerEmulator
from tests.conformance.support import RecordingSubmitter
from tests.testpb import payloads_pb2 as pb
from tq.txn.spanner import SpannerStore

pytestmark = pytest.mark.spanner

ORDERS_DDL = "CREATE TABLE Orders (ID STRING(MAX) NOT NULL) PRIMARY KEY (ID)"


@pytest.fixture
def database(spanner_emulator: SpannerEmulator) -> Iterator[Any]:
    db = spanner_emulator.create_database(extra_ddl=[ORDERS_DDL])
    try:
        yield db
    finally:
        spanner_emulator.drop_database(db)


@pytest.fixture
def store(database: Any) -> Iterator[SpannerStore]:
    s = SpannerStore(database, name="spanner-untold", retry_delay_s=0.01)
    try:
        yield s
    finally:
        tq.txn.unregister_store(s.name)


@pytest.fixture
def sub() -> RecordingSubmitter:
    return RecordingSubmitter()


@pytest.fixture
def disp(sub: RecordingSubmitter) -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1",
        default_target_host="app.example.com", submitter=sub,
    )  # fmt: skip
    d.register_task_class(
        tq.TaskClass(id="count", prototype=pb.Count, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q")
    )
    return d


def insert_order(transaction: Any) -> None:
    transaction.insert("Orders", ["ID"], [[os.urandom(8).hex()]])


def orders(database: Any) -> int:
    with database.snapshot() as snap:
        return len(list(snap.execute_sql("SELECT ID FROM Orders")))


def test_the_clients_own_run_in_transaction_is_refused_and_rolled_back(
    database: Any, store: SpannerStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    def place(transaction: Any) -> None:
        insert_order(transaction)
        disp.add_task(tq.Task(payload=pb.Count(n=1)))

    with pytest.raises(tq.TransactionError) as e:
        database.run_in_transaction(place)
    assert "a Spanner read-write transaction (Database.run_in_transaction" in str(e.value)
    assert "tq.txn.spanner.run_in_transaction(database, fn" in str(e.value)
    assert "tq.txn.outside_transaction()" in str(e.value)
    assert sub.submitted == []
    assert orders(database) == 0  # the refusal rolled the transaction back

    tq.txn.spanner.run_in_transaction(database, place)  # the fix: written, then submitted
    assert [s.payload.n for s in sub.submitted] == [1]  # type: ignore[union-attr]
    assert store.count_reminders() == (0, 0)

    def now_regardless(transaction: Any) -> None:
        insert_order(transaction)
        with tq.txn.outside_transaction():
            disp.add_task(tq.Task(payload=pb.Count(n=2)))

    database.run_in_transaction(now_regardless)
    assert [s.payload.n for s in sub.submitted] == [1, 2]  # type: ignore[union-attr]


def test_batches_and_other_threads_transactions_are_not_seen(
    database: Any, store: SpannerStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with database.batch() as batch:  # a batch of mutations: not seen
        insert_order(batch)
        disp.add_task(tq.Task(payload=pb.Count(n=1)))
    running, release = threading.Event(), threading.Event()

    def other_thread(transaction: Any) -> None:
        insert_order(transaction)
        running.set()
        release.wait(30)

    t = threading.Thread(target=database.run_in_transaction, args=(other_thread,))
    t.start()
    try:
        assert running.wait(30)
        disp.add_task(tq.Task(payload=pb.Count(n=2)))  # the transaction is another thread's
    finally:
        release.set()
        t.join()
    assert [s.payload.n for s in sub.submitted] == [1, 2]  # type: ignore[union-attr]


def test_a_database_without_a_store_is_not_seen(
    database: Any, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    def place(transaction: Any) -> None:
        insert_order(transaction)
        disp.add_task(tq.Task(payload=pb.Count(n=1)))  # submitted now: nothing to write to

    database.run_in_transaction(place)
    assert [s.payload.n for s in sub.submitted] == [1]  # type: ignore[union-attr]
