"""Background submits: the happy path queued in the process, never lost, drained at stop."""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import threading
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa

import tq
import tq.txn.sql
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import RecordingSubmitter, submit_error
from tq import _metrics, _outbox
from tqtesting import FakeClock


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_outbox, "_PAUSES_S", (0.0, 0.0))


class GatedSubmitter(RecordingSubmitter):
    """Records submissions; each submit first waits for the gate (open by default)."""

    def __init__(self, *errors: BaseException | None) -> None:
        super().__init__(*errors)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.threads: set[str] = set()

    def submit(self, submission: tq.Submission) -> None:
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        super().submit(submission)


@pytest.fixture
def engine(tmp_path: pathlib.Path) -> Iterator[sa.Engine]:
    e = sa.create_engine(f"sqlite:///{tmp_path}/outbox.db")
    yield e
    e.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> Iterator[tq.txn.sql.SQLStore]:
    s = tq.txn.sql.SQLStore(engine, name="background-test", register=False)
    s.create_schema()
    return s


def dispatcher(submitter: tq.Submitter) -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project="p", cloud_region="r", default_target_host="h", submitter=submitter
    )
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    return d


def commit_one(engine: sa.Engine, store: tq.txn.sql.SQLStore, d: tq.Dispatcher, name: str) -> None:
    with tq.txn.sql.transaction(engine, store=store):
        d.add_task(tq.Task(payload=pb.Greet(name=name)))


def reminder_ids(store: tq.txn.sql.SQLStore) -> set[str]:
    return {k.id for k in store.fetch_reminder_keys("0" * 32, "g", 10_000)}


def test_commit_returns_before_the_submit_which_runs_in_a_background_thread(
    engine: sa.Engine, store: tq.txn.sql.SQLStore
) -> None:
    sub = GatedSubmitter()
    sub.gate.clear()
    d = dispatcher(sub)
    with tq.BackgroundSubmits() as bg:
        commit_one(engine, store, d, "a")  # returns although the submit is blocked
        assert sub.entered.wait(60)
        assert sub.submitted == []
        assert len(reminder_ids(store)) == 1  # committed, not deleted yet
        sub.gate.set()
        assert bg.drain(10)
        assert len(sub.submitted) == 1
        assert reminder_ids(store) == set()
        assert bg.stats.submitted == 1
        assert bg.stats.deleted == 1
    assert sub.threads == {"tq-background-submit"}


def test_deletes_of_many_transactions_go_out_in_few_statements(
    engine: sa.Engine, store: tq.txn.sql.SQLStore
) -> None:
    sub = GatedSubmitter()
    sub.gate.clear()
    d = dispatcher(sub)
    deletes: list[str] = []
    sa.event.listen(
        engine,
        "before_cursor_execute",
        lambda conn, cur, stmt, *a: deletes.append(stmt) if stmt.startswith("DELETE") else None,
    )
    with tq.BackgroundSubmits(concurrency=1, delete_delay_s=0.5) as bg:
        for i in range(40):
            commit_one(engine, store, d, str(i))
        sub.gate.set()
        assert bg.drain(30)
    assert len(sub.submitted) == 40
    assert reminder_ids(store) == set()
    assert 1 <= len(deletes) <= 5, deletes


def test_a_full_queue_runs_the_happy_path_inline(
    engine: sa.Engine, store: tq.txn.sql.SQLStore
) -> None:
    gated = GatedSubmitter()
    gated.gate.clear()
    d_slow = dispatcher(gated)
    fast = RecordingSubmitter()
    d_fast = dispatcher(fast)
    before = _metrics.value("tq_background_full", fallback="inline")
    with tq.BackgroundSubmits(max_queued=1, concurrency=1) as bg:
        commit_one(engine, store, d_slow, "taken by the thread")
        assert gated.entered.wait(60)
        commit_one(engine, store, d_slow, "waits in the queue")
        commit_one(engine, store, d_fast, "queue full: inline")
        assert len(fast.submitted) == 1  # submitted before the commit's helper returned
        assert bg.stats.inline == 1
        gated.gate.set()
        assert bg.drain(10)
    assert len(gated.submitted) == 2
    assert reminder_ids(store) == set()
    assert _metrics.value("tq_background_full", fallback="inline") == before + 1


def test_a_full_queue_can_leave_the_reminders_to_the_sweeper(
    engine: sa.Engine, store: tq.txn.sql.SQLStore
) -> None:
    gated = GatedSubmitter()
    gated.gate.clear()
    d = dispatcher(gated)
    with tq.BackgroundSubmits(max_queued=1, concurrency=1, when_full="sweeper") as bg:
        commit_one(engine, store, d, "taken by the thread")
        assert gated.entered.wait(60)
        commit_one(engine, store, d, "waits in the queue")
        commit_one(engine, store, d, "left to the sweeper")
        assert bg.stats.left == 1
        gated.gate.set()
        assert bg.drain(10)
    left = reminder_ids(store)
    assert len(gated.submitted) == 2
    assert len(left) == 1
    # The sweeper finds it once it is stale, and submits it.
    swept = RecordingSubmitter()
    d_sweep = dispatcher(swept)
    later = FakeClock(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))
    import sweeper

    d_sweep.sweeper = sweeper.InProcSweeper()
    tq.txn.register_store(store)
    try:
        with tq.clock.use_clock(later):
            d_sweep.sweep()
    finally:
        tq.txn.unregister_store(store.name)
    assert [s.reminder_id for s in swept.submitted] == list(left)
    assert reminder_ids(store) == set()


def test_a_reminder_gone_stale_in_the_queue_is_left_to_the_sweeper(
    engine: sa.Engine, store: tq.txn.sql.SQLStore
) -> None:
    clock = FakeClock()
    gated = GatedSubmitter()
    gated.gate.clear()
    d = dispatcher(gated)
    with tq.clock.use_clock(clock), tq.BackgroundSubmits(concurrency=1) as bg:
        commit_one(engine, store, d, "taken by the thread")
        assert gated.entered.wait(60)
        commit_one(engine, store, d, "stale by the time it is taken")
        clock.advance(dt.timedelta(minutes=1))
        gated.gate.set()
        assert bg.drain(10)
        assert bg.stats.stale == 1
    assert len(gated.submitted) == 1
    assert len(reminder_ids(store)) == 1


def test_failed_submits_keep_or_park_their_reminders(
    engine: sa.Engine, store: tq.txn.sql.SQLStore
) -> None:
    transient = [submit_error(grpc.StatusCode.UNAVAILABLE)] * 3
    sub = RecordingSubmitter(*transient, submit_error(grpc.StatusCode.INVALID_ARGUMENT))
    d = dispatcher(sub)
    with tq.BackgroundSubmits(concurrency=1) as bg:
        commit_one(engine, store, d, "kept")
        assert bg.drain(10)
        commit_one(engine, store, d, "parked")
        assert bg.drain(10)
        assert bg.stats.failed == 2
        assert bg.stats.deleted == 0
    assert len(reminder_ids(store)) == 1  # kept for the sweeper
    assert len(store.list_parked(10)) == 1


def test_stop_drains_the_queue_and_later_commits_run_inline(
    engine: sa.Engine, store: tq.txn.sql.SQLStore
) -> None:
    sub = GatedSubmitter()
    d = dispatcher(sub)
    bg = tq.BackgroundSubmits().start()
    assert tq.background_submits() is bg
    for i in range(5):
        commit_one(engine, store, d, str(i))
    assert bg.stop(10)
    assert tq.background_submits() is None
    assert len(sub.submitted) == 5
    assert reminder_ids(store) == set()
    sub.threads.clear()
    commit_one(engine, store, d, "after stop")
    assert sub.threads == {threading.current_thread().name}
    assert reminder_ids(store) == set()


def test_stop_gives_up_after_its_timeout_and_leaves_the_rest_to_the_sweeper(
    engine: sa.Engine, store: tq.txn.sql.SQLStore
) -> None:
    sub = GatedSubmitter()
    sub.gate.clear()
    d = dispatcher(sub)
    bg = tq.BackgroundSubmits(concurrency=1).start()
    commit_one(engine, store, d, "blocked")
    assert sub.entered.wait(60)
    assert bg.stop(timeout_s=0.05) is False
    assert len(reminder_ids(store)) == 1
    sub.gate.set()  # lets the thread finish and exit


def test_one_background_submits_per_process() -> None:
    with tq.BackgroundSubmits(), pytest.raises(tq.ConfigError, match="already"):
        tq.BackgroundSubmits().start()


@pytest.mark.parametrize(
    "kwargs",
    [{"max_queued": 0}, {"concurrency": 0}, {"when_full": "drop"}, {"delete_delay_s": -1}],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(tq.ConfigError):
        tq.BackgroundSubmits(**kwargs)  # type: ignore[arg-type]


async def test_async_transactions_queue_their_happy_path_too(tmp_path: pathlib.Path) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    sync_engine = sa.create_engine(f"sqlite:///{tmp_path}/a.db")
    store = tq.txn.sql.SQLStore(sync_engine, name="background-async", register=False)
    store.create_schema()
    aengine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/a.db")
    sub = GatedSubmitter()
    sub.gate.clear()
    d = dispatcher(sub)
    try:
        async with tq.BackgroundSubmits() as bg:
            async with tq.txn.sql.transaction_async(async_sessionmaker(aengine), store=store):
                await d.add_task_async(tq.Task(payload=pb.Greet(name="async")))
            assert sub.submitted == []
            sub.gate.set()
            assert await bg.drain_async(10)
        assert len(sub.submitted) == 1
        assert reminder_ids(store) == set()
    finally:
        await aengine.dispose()
        sync_engine.dispose()
        await asyncio.sleep(0)
