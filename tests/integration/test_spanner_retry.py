"""Spanner transactions under contention: the retry pause is tq's short jittered backoff.

The emulator runs one read-write transaction at a time and aborts the
others without suggesting a delay; the Spanner client's own fallback then
sleeps 2**n seconds plus up to one before each re-run (16 s for 8 threads x
25 transactions here; `bench/spanner_contention.py` measures it). The
pauses are recorded, not slept: no test here depends on how fast the
machine is.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from google.cloud.spanner_v1 import _helpers

import tq
from tests._services.spanner import SpannerEmulator
from tests.testpb import payloads_pb2 as pb
from tq.txn.spanner import DEFAULT, Backoff, SpannerStore

pytestmark = pytest.mark.spanner

THREADS, TXNS = 4, 5


class _Pauses:
    """Records the pauses asked for, in place of sleeping them."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, seconds: float) -> None:
        with self._lock:
            self.seconds.append(seconds)


class _ClientTime:
    """The Spanner client's `time` module, with its retry sleeps recorded instead."""

    def __init__(self, real: Any, pauses: _Pauses) -> None:
        self._real = real
        self.sleep = pauses

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.fixture
def counter_db(spanner_emulator: SpannerEmulator) -> Iterator[Any]:
    db = spanner_emulator.create_database(
        ["CREATE TABLE Counter (ID STRING(MAX) NOT NULL, N INT64) PRIMARY KEY (ID)"]
    )
    with db.batch() as b:
        b.insert("Counter", ["ID", "N"], [["c", 0]])
    try:
        yield db
    finally:
        spanner_emulator.drop_database(db)


def _contend(store: SpannerStore, database: Any) -> int:
    """THREADS x TXNS read-modify-write transactions on one row, each adding a task."""
    disp = tq.Dispatcher(cloud_project="p", cloud_region="r", default_target_host="h")
    disp.register_task_class(
        tq.TaskClass(id="bump", prototype=pb.Count, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    submitted: list[tq.Submission] = []

    class Submitter:
        def submit(self, sub: tq.Submission) -> None:
            submitted.append(sub)

        async def submit_async(self, sub: tq.Submission) -> None:
            submitted.append(sub)

    def bump(transaction: Any) -> None:
        ((n,),) = list(transaction.execute_sql("SELECT N FROM Counter WHERE ID = 'c'"))
        transaction.update("Counter", ["ID", "N"], [["c", n + 1]])
        disp.add_task(tq.Task(payload=pb.Count(n=n + 1)))

    def worker() -> None:
        with tq.use_submitter(Submitter()):
            for _ in range(TXNS):
                store.run_in_transaction(bump)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s.request.task.name for s in submitted) == sorted(
        {s.request.task.name for s in submitted}
    )
    assert len(submitted) == THREADS * TXNS  # one task per committed transaction
    with database.snapshot() as snap:
        ((n,),) = list(snap.execute_sql("SELECT N FROM Counter WHERE ID = 'c'"))
    return int(n)


def test_contending_transactions_never_wait_the_clients_seconds_long_fallback(
    counter_db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client_pauses = _Pauses()
    monkeypatch.setattr(_helpers, "time", _ClientTime(_helpers.time, client_pauses))
    store = SpannerStore(counter_db, name="contention")  # the default retry
    try:
        assert _contend(store, counter_db) == THREADS * TXNS
    finally:
        tq.txn.unregister_store(store.name)
    # The client's 2**n + random() seconds never ran; what it paused (blind
    # deletes, which it retries itself) is the backoff's first step.
    assert [s for s in client_pauses.seconds if s > DEFAULT.first_s] == []


class _FakeDatabase:
    """Records what the store asks `run_in_transaction` for; aborts the first `aborts` runs."""

    def __init__(self, aborts: int) -> None:
        self.aborts = aborts
        self.kwargs: dict[str, Any] = {}

    def run_in_transaction(self, fn: Any, **kwargs: Any) -> Any:
        self.kwargs = kwargs
        for _ in range(self.aborts):
            fn(object())  # a run the client would re-run after an abort
        return fn(object())


@pytest.mark.parametrize(
    ("retry", "client_delay", "pauses"),
    [
        (DEFAULT, 0, [0.005, 0.01, 0.02]),  # tq's pauses; the client's only if Spanner asks
        (0.25, 0.25, []),
        (None, "unset", []),
    ],
)
def test_each_retry_policy_sets_who_pauses_and_how_long(
    retry: Backoff | float | None, client_delay: object, pauses: list[float]
) -> None:
    db, taken = _FakeDatabase(aborts=3), _Pauses()
    store = SpannerStore(db, name="policy", retry=retry, sleep=taken, random=lambda: 0.0)
    try:
        assert store.run_in_transaction(lambda t: "done") == "done"
    finally:
        tq.txn.unregister_store(store.name)
    assert db.kwargs.get("default_retry_delay", "unset") == client_delay
    assert taken.seconds == pauses


def test_a_call_with_its_own_default_retry_delay_keeps_it() -> None:
    db, taken = _FakeDatabase(aborts=2), _Pauses()
    store = SpannerStore(db, name="own-delay", sleep=taken)
    try:
        store.run_in_transaction(lambda t: None, default_retry_delay=0.3)
    finally:
        tq.txn.unregister_store(store.name)
    assert (db.kwargs["default_retry_delay"], taken.seconds) == (0.3, [])


def test_the_default_retry_is_the_jittered_backoff() -> None:
    store = SpannerStore(_FakeDatabase(0), name="default-retry")
    try:
        assert store.retry == DEFAULT == Backoff(first_s=0.01, max_s=0.5)
    finally:
        tq.txn.unregister_store(store.name)


def test_backoff_doubles_from_first_up_to_max_scaled_by_jitter() -> None:
    b = Backoff(first_s=0.01, max_s=0.05)
    assert [b.delay(n, random=lambda: 0.0) for n in (1, 2, 3, 4)] == [0.005, 0.01, 0.02, 0.025]
    assert b.delay(1, random=lambda: 0.999) == pytest.approx(0.009995)


@pytest.mark.parametrize(("first", "top"), [(-0.1, 1.0), (2.0, 1.0)])
def test_backoff_refuses_bounds_out_of_order(first: float, top: float) -> None:
    with pytest.raises(tq.ConfigError):
        Backoff(first_s=first, max_s=top)
