"""The Spanner outbox store on the real Cloud Spanner emulator."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core.exceptions import Aborted

import tq
from tests._services.spanner import SpannerEmulator, require_emulator, running_emulator, start
from tests.testpb import payloads_pb2 as pb
from tq._reminder import Reminder
from tq._request import CreateTaskRequest
from tq.txn import KEY_SPACE, PendingTask, current_transaction, key_bound
from tq.txn.spanner import (
    SpannerStore,
    SpannerTransaction,
    create_schema,
    run_in_transaction,
    schema_sql,
)

pytestmark = pytest.mark.spanner

ORDERS_DDL = "CREATE TABLE Orders (ID STRING(MAX) NOT NULL) PRIMARY KEY (ID)"
LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


class RecordingSubmitter:
    """Records submissions; fails each with `fail` when it is set."""

    def __init__(self, fail: tq.SubmitError | None = None, on_submit: Any = None) -> None:
        self.fail = fail
        self.on_submit = on_submit
        self.calls: list[tq.Submission] = []
        self.lock = threading.Lock()

    def submit(self, submission: tq.Submission) -> None:
        with self.lock:
            self.calls.append(submission)
        if self.on_submit is not None:
            self.on_submit(submission)
        if self.fail is not None:
            raise self.fail

    async def submit_async(self, submission: tq.Submission) -> None:
        self.submit(submission)

    def reminder_ids(self) -> list[str | None]:
        return [s.reminder_id for s in self.calls]


@pytest.fixture
def database(spanner_emulator: SpannerEmulator) -> Iterator[Any]:
    db = spanner_emulator.create_database(extra_ddl=[ORDERS_DDL])
    try:
        yield db
    finally:
        spanner_emulator.drop_database(db)


@pytest.fixture
def store(database: Any) -> Iterator[SpannerStore]:
    s = SpannerStore(database, name="spanner-test", retry=0.01)
    try:
        yield s
    finally:
        tq.txn.unregister_store(s.name)


@pytest.fixture
def submitter() -> RecordingSubmitter:
    return RecordingSubmitter()


@pytest.fixture
def disp(submitter: RecordingSubmitter) -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1",
        default_target_host="app.example.com", submitter=submitter,
    )  # fmt: skip
    for cls_id, proto in (("greet", pb.Greet), ("blob", pb.Blob)):
        d.register_task_class(
            tq.TaskClass(id=cls_id, prototype=proto, kind=tq.Kind.TRANSACTIONAL, queue="q")
        )
    return d


def order_ids(database: Any) -> list[str]:
    with database.snapshot() as snap:
        return [r[0] for r in snap.execute_sql("SELECT ID FROM Orders ORDER BY ID")]


def pending_ids() -> list[str]:
    txn = current_transaction()
    assert isinstance(txn, SpannerTransaction)
    return [p.reminder.id for p in txn.pending]


def put(store: SpannerStore, *ids: str, fresh_until: dt.datetime = LONG_AGO) -> None:
    """Writes reminders the happy path leaves alone (they are stale already)."""
    sub = tq.Submission(request=CreateTaskRequest(), task_class="c", created=LONG_AGO)

    def write(transaction: Any) -> None:
        txn = current_transaction()
        assert txn is not None
        for i in ids:
            txn.save_reminder(
                PendingTask(
                    Reminder(i, fresh_until, b"payload-" + i.encode()), sub, RecordingSubmitter()
                )
            )

    store.run_in_transaction(write)


# Transactions and the happy path.


def test_committed_txn_writes_reminder_then_submits_it_once_and_deletes_it(
    database: Any, store: SpannerStore, disp: tq.Dispatcher, submitter: RecordingSubmitter
) -> None:
    seen_during_submit: list[list[Reminder]] = []
    submitter.on_submit = lambda s: seen_during_submit.append(
        store.fetch_reminders([s.reminder_id])
    )

    def place(transaction: Any, order_id: str) -> str:
        transaction.insert("Orders", ["ID"], [[order_id]])
        disp.add_task(tq.Task(payload=pb.Greet(name="ann")))
        return "placed"

    assert run_in_transaction(database, place, "o-1") == "placed"

    assert len(submitter.calls) == 1
    rid = submitter.calls[0].reminder_id
    assert rid is not None
    assert submitter.calls[0].task_name.endswith(f"/tasks/{rid}")
    assert [r.id for r in seen_during_submit[0]] == [rid]  # committed before the submit
    assert store.count_reminders() == (0, 0)
    assert order_ids(database) == ["o-1"]
    assert current_transaction() is None


def test_raising_function_rolls_back_and_submits_nothing(
    database: Any, store: SpannerStore, disp: tq.Dispatcher, submitter: RecordingSubmitter
) -> None:
    def place(transaction: Any) -> None:
        transaction.insert("Orders", ["ID"], [["o-1"]])
        disp.add_task(tq.Task(payload=pb.Greet(name="ann")))
        raise LookupError("no stock")

    with pytest.raises(LookupError, match="no stock"):
        run_in_transaction(database, place)

    assert submitter.calls == []
    assert store.count_reminders() == (0, 0)
    assert order_ids(database) == []


def test_commit_aborted_by_a_conflict_reruns_and_submits_only_the_committed_attempt(
    database: Any, store: SpannerStore, disp: tq.Dispatcher, submitter: RecordingSubmitter
) -> None:
    attempts: list[list[str]] = []

    def conflicting(transaction: Any) -> None:
        transaction.insert("Orders", ["ID"], [["other"]])

    def place(transaction: Any) -> None:
        list(transaction.execute_sql("SELECT ID FROM Orders"))  # begins the transaction
        disp.add_task(tq.Task(payload=pb.Greet(name="ann")))
        attempts.append(pending_ids())
        if len(attempts) == 1:
            # The emulator runs one read-write transaction at a time: another
            # one starting now makes it abort this one (at our commit).
            other = threading.Thread(
                target=database.run_in_transaction, args=(conflicting,),
                kwargs={"default_retry_delay": 0.01},
            )  # fmt: skip
            other.start()
            other.join()
        transaction.insert("Orders", ["ID"], [["o-1"]])

    store.run_in_transaction(place)

    assert len(attempts) == 2
    assert attempts[0] != attempts[1]
    assert submitter.reminder_ids() == attempts[1]
    assert store.count_reminders() == (0, 0)
    assert order_ids(database) == ["o-1", "other"]


def test_abort_raised_in_function_reruns_and_keeps_one_reminder(
    database: Any, disp: tq.Dispatcher, submitter: RecordingSubmitter
) -> None:
    store = SpannerStore(database, name="spanner-test")
    submitter.fail = tq.SubmitError(grpc.StatusCode.UNAVAILABLE, "down")
    attempts: list[list[str]] = []

    def place(transaction: Any) -> None:
        disp.add_task(tq.Task(payload=pb.Greet(name="ann")))
        attempts.append(pending_ids())
        if len(attempts) == 1:
            raise Aborted("conflict", errors=[None])

    try:
        run_in_transaction(database, place, default_retry_delay=0.01)
    finally:
        tq.txn.unregister_store(store.name)

    assert len(attempts) == 2
    assert set(submitter.reminder_ids()) == set(attempts[1])
    assert [k.id for k in store.fetch_reminder_keys(key_bound(0), key_bound(KEY_SPACE), 10)] == (
        attempts[1]
    )


def test_transient_submit_failure_keeps_the_reminder_for_the_sweeper(
    database: Any, store: SpannerStore, disp: tq.Dispatcher, submitter: RecordingSubmitter
) -> None:
    submitter.fail = tq.SubmitError(grpc.StatusCode.UNAVAILABLE, "down")

    def place(transaction: Any) -> None:
        disp.add_task(tq.Task(payload=pb.Greet(name="ann")))

    run_in_transaction(database, place)

    rid = submitter.calls[0].reminder_id
    assert set(submitter.reminder_ids()) == {rid}
    assert store.count_reminders() == (1, 0)
    [kept] = store.fetch_reminders([rid or ""])
    assert not kept.parked
    assert kept.submission().request == submitter.calls[0].request


def test_permanent_submit_failure_parks_the_reminder(
    database: Any, store: SpannerStore, disp: tq.Dispatcher, submitter: RecordingSubmitter
) -> None:
    submitter.fail = tq.SubmitError(grpc.StatusCode.NOT_FOUND, "no such queue")

    def place(transaction: Any) -> None:
        disp.add_task(tq.Task(payload=pb.Greet(name="ann")))

    run_in_transaction(database, place)

    rid = submitter.calls[0].reminder_id or ""
    assert len(submitter.calls) == 1
    assert store.count_reminders() == (0, 1)
    assert store.fetch_reminder_keys(key_bound(0), key_bound(KEY_SPACE), 10) == []
    [parked] = store.list_parked(10)
    assert parked.id == rid
    assert parked.parked
    assert parked.submission().request == submitter.calls[0].request


def test_payload_over_the_store_limit_is_refused_before_anything_is_written(
    database: Any, store: SpannerStore, disp: tq.Dispatcher, submitter: RecordingSubmitter
) -> None:
    def place(transaction: Any) -> None:
        transaction.insert("Orders", ["ID"], [["o-1"]])
        disp.add_task(tq.Task(payload=pb.Blob(data=b"x" * 80_000)))  # ~107 KB as JSON

    with pytest.raises(tq.PayloadTooLarge, match="102400"):
        run_in_transaction(database, place)

    assert submitter.calls == []
    assert store.count_reminders() == (0, 0)
    assert order_ids(database) == []


def test_large_binary_payload_round_trips_through_the_bytes_columns(
    database: Any, store: SpannerStore, disp: tq.Dispatcher, submitter: RecordingSubmitter
) -> None:
    submitter.fail = tq.SubmitError(grpc.StatusCode.UNAVAILABLE, "down")
    data = bytes(range(256)) * 250  # every byte value; ~85 KB as a reminder

    run_in_transaction(database, lambda t: disp.add_task(tq.Task(payload=pb.Blob(data=data))))

    [kept] = store.fetch_reminders([submitter.calls[0].reminder_id or ""])
    assert len(kept.payload) > 80_000
    assert kept.submission().request == submitter.calls[0].request


def test_run_in_transaction_needs_a_store_for_the_database(
    database: Any, disp: tq.Dispatcher
) -> None:
    with pytest.raises(tq.ConfigError, match="SpannerStore"):
        run_in_transaction(database, lambda t: None)


@pytest.fixture(scope="module")
def faulty_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpannerEmulator]:
    """An emulator of its own that aborts commits at random."""
    log = tmp_path_factory.mktemp("spanner-faults") / "emulator.log"
    with running_emulator(require_emulator(), log, "--enable_fault_injection") as host:
        yield start(host)


def test_random_commit_aborts_submit_each_committed_task_once(
    faulty_emulator: SpannerEmulator, disp: tq.Dispatcher, submitter: RecordingSubmitter
) -> None:
    db = faulty_emulator.create_database(extra_ddl=[ORDERS_DDL])
    store = SpannerStore(db, name="spanner-faults", retry=0.001)
    committed: list[str] = []
    aborted = 0

    def place(transaction: Any, n: int, attempts: list[list[str]]) -> None:
        # The emulator injects aborts into transactions that read.
        list(transaction.execute_sql("SELECT 1"))
        transaction.insert("Orders", ["ID"], [[f"o-{n:03d}"]])
        disp.add_task(tq.Task(payload=pb.Greet(name=f"n{n}")))
        attempts.append(pending_ids())

    try:
        for n in range(500):
            attempts: list[list[str]] = []
            store.run_in_transaction(place, n, attempts)
            committed += attempts[-1]
            aborted += len(attempts) - 1
            if aborted >= 3:
                break

        assert aborted >= 3
        assert submitter.reminder_ids() == committed
        assert store.count_reminders() == (0, 0)
        assert len(order_ids(db)) == len(committed)
    finally:
        tq.txn.unregister_store(store.name)
        faulty_emulator.drop_database(db)


# The store protocol.


def test_fetch_reminder_keys_scans_a_half_open_range_ascending_with_a_limit(
    store: SpannerStore,
) -> None:
    top = f"{KEY_SPACE - 1:032x}"
    ids = [f"{k:032x}" for k in (0, 5, 6, 7, 1 << 127)] + [top]
    put(store, *reversed(ids))

    everything = store.fetch_reminder_keys(key_bound(0), key_bound(KEY_SPACE), 100)
    assert [k.id for k in everything] == ids
    assert all(k.fresh_until == LONG_AGO for k in everything)
    assert [k.id for k in store.fetch_reminder_keys(key_bound(5), key_bound(7), 100)] == ids[1:3]
    assert [k.id for k in store.fetch_reminder_keys(key_bound(5), key_bound(KEY_SPACE), 2)] == (
        ids[1:3]
    )
    top_only = store.fetch_reminder_keys(key_bound(KEY_SPACE - 1), key_bound(KEY_SPACE), 10)
    assert [k.id for k in top_only] == [top]
    assert store.fetch_reminder_keys(key_bound(8), key_bound(1 << 127), 10) == []


def test_fetch_reminders_returns_the_existing_ones(store: SpannerStore) -> None:
    a, b = f"{1:032x}", f"{2:032x}"
    put(store, a, b)

    got = store.fetch_reminders([b, f"{3:032x}", a])

    assert sorted((r.id, r.payload, r.extra) for r in got) == [
        (a, b"payload-" + a.encode(), b""),
        (b, b"payload-" + b.encode(), b""),
    ]
    assert store.fetch_reminders([]) == []


def test_parked_reminders_leave_the_scan_and_come_back_when_unparked(
    store: SpannerStore,
) -> None:
    a, b, c = (f"{k:032x}" for k in (1, 2, 3))
    put(store, a, b, c)
    extra = tq._reminder.parked_extra("NOT_FOUND", "no queue", LONG_AGO)

    store.park_reminder(b, extra)
    store.park_reminder(c, extra)

    assert [k.id for k in store.fetch_reminder_keys(key_bound(0), key_bound(KEY_SPACE), 10)] == [a]
    assert store.count_reminders() == (1, 2)
    assert [(r.id, r.extra) for r in store.list_parked(10)] == [(b, extra), (c, extra)]
    assert [r.id for r in store.list_parked(1, after=b)] == [c]
    assert store.list_parked(10)[0].payload == b"payload-" + b.encode()

    later = LONG_AGO + dt.timedelta(days=1)
    assert store.unpark_reminder(b, later) is True
    assert store.unpark_reminder(f"{9:032x}", later) is False

    keys = store.fetch_reminder_keys(key_bound(0), key_bound(KEY_SPACE), 10)
    assert [(k.id, k.fresh_until) for k in keys] == [(a, LONG_AGO), (b, later)]
    [back] = store.fetch_reminders([b])
    assert not back.parked
    assert back.payload == b"payload-" + b.encode()
    assert store.count_reminders() == (2, 1)


def test_delete_reminders_removes_unparked_and_parked_and_ignores_missing(
    store: SpannerStore,
) -> None:
    a, b, c = (f"{k:032x}" for k in (1, 2, 3))
    put(store, a, b, c)
    store.park_reminder(b, tq._reminder.parked_extra("NOT_FOUND", "x", LONG_AGO))

    store.delete_reminders([a, b, f"{9:032x}"])
    store.delete_reminders([])

    assert store.count_reminders() == (1, 0)
    assert [r.id for r in store.fetch_reminders([a, b, c])] == [c]


def test_park_of_a_missing_reminder_does_nothing(store: SpannerStore) -> None:
    store.park_reminder(f"{1:032x}", tq._reminder.parked_extra("NOT_FOUND", "x", LONG_AGO))
    assert store.count_reminders() == (0, 0)


# Leases.

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


def test_lease_takes_only_what_no_live_lease_holds(store: SpannerStore) -> None:
    first = store.take_lease("s", [(0, 100)], NOW + MINUTE, NOW)
    second = store.take_lease("s", [(50, 200), (300, KEY_SPACE)], NOW + MINUTE, NOW)
    other_section = store.take_lease("t", [(0, 100)], NOW + MINUTE, NOW)
    nothing = store.take_lease("s", [(10, 20)], NOW + MINUTE, NOW)

    assert first.ranges == ((0, 100),)
    assert second.ranges == ((100, 200), (300, KEY_SPACE))
    assert other_section.ranges == ((0, 100),)
    assert nothing.ranges == ()
    assert len({first.lease_id, second.lease_id, nothing.lease_id}) == 3


def test_expired_and_released_leases_free_their_ranges(store: SpannerStore) -> None:
    short = store.take_lease("s", [(0, 100)], NOW + MINUTE, NOW)
    long = store.take_lease("s", [(100, 200)], NOW + 10 * MINUTE, NOW)

    later = NOW + 2 * MINUTE
    assert store.take_lease("s", [(0, 200)], later + MINUTE, later).ranges == ((0, 100),)
    store.release_lease("s", long.lease_id)
    store.release_lease("s", short.lease_id)  # expired and dropped already: fine
    assert store.take_lease("s", [(100, 200)], later + MINUTE, later).ranges == ((100, 200),)


def test_concurrent_lease_takers_never_overlap(store: SpannerStore) -> None:
    takers = 4
    barrier = threading.Barrier(takers)
    leases: list[tq.txn.Lease] = []
    lock = threading.Lock()

    def take() -> None:
        barrier.wait()
        lease = store.take_lease("s", [(0, 1000)], NOW + MINUTE, NOW)
        with lock:
            leases.append(lease)

    threads = [threading.Thread(target=take) for _ in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(leases) == takers
    held = sorted(r for lease in leases for r in lease.ranges)
    assert held == [(0, 1000)]  # one taker got it all, the others nothing


# The schema.


def test_create_schema_is_idempotent(spanner_emulator: SpannerEmulator) -> None:
    db = spanner_emulator.instance.database("tq-schema-idem")
    db.create().result(30)
    try:
        assert create_schema(db) == ["TQReminders", "TQParkedReminders", "TQLeases", "TQDone"]
        assert create_schema(db) == []
    finally:
        spanner_emulator.drop_database(db)


def test_deploy_schema_file_matches_the_code() -> None:
    path = Path(__file__).parents[2] / "deploy" / "spanner" / "schema.sql"
    assert path.read_text() == schema_sql()
