"""Operating the database queue: list, count, delete, purge, run, stats, retention, CLI."""

from __future__ import annotations

import datetime as dt
import json
import pathlib

import pytest
import sqlalchemy as sa

from tests._dbqueue import (
    RecordingApp,
    clock_fixture,  # noqa: F401
    engine_fixture,  # noqa: F401
    submission,
    submitter_fixture,  # noqa: F401
    task_state,
)
from tq import dbqueue
from tq.dbqueue import State
from tq.dbqueue._cli import main
from tqtesting import FakeClock

Sub = dbqueue.DbQueueSubmitter


@pytest.fixture
def admin(engine: sa.Engine) -> dbqueue.Admin:
    return dbqueue.Admin(engine)


async def deliver(engine: sa.Engine, app: RecordingApp) -> int:
    async with dbqueue.Worker(engine, app=app) as w:
        return await w.run_once()


async def test_count_and_list_filter_by_state_class_and_queue(
    engine: sa.Engine, submitter: Sub, admin: dbqueue.Admin, clock: FakeClock
) -> None:
    submitter.submit(submission(name="a1", queue="a", task_class="x"))
    submitter.submit(submission(name="a2", queue="a", task_class="y"))
    submitter.submit(submission(name="b1", queue="b", task_class="x"))
    submitter.submit(submission(name="later", queue="b", eta=clock.now() + dt.timedelta(hours=1)))
    app = RecordingApp()
    app.statuses["a2"] = [500]
    assert await deliver(engine, app) == 3
    assert admin.count_tasks() == 4
    assert admin.count_tasks(state=State.DONE) == 2
    assert admin.count_tasks(state="pending") == 2
    assert admin.count_tasks(queue="a", task_class="x") == 1
    assert [t.name for t in admin.list_tasks(task_class="x")] == ["a1", "b1"]
    first = admin.list_tasks(limit=2)
    rest = admin.list_tasks(after_id=first[-1].id)
    assert [t.name for t in first + rest] == ["a1", "a2", "b1", "later"]
    assert admin.get_task("b", "nope") is None


async def test_a_deleted_task_never_runs_and_keeps_its_name(
    engine: sa.Engine, submitter: Sub, admin: dbqueue.Admin, clock: FakeClock
) -> None:
    submitter.submit(submission(name="t1"))
    assert admin.delete_task("q", "t1")
    assert not admin.delete_task("q", "t1")  # not live any more
    assert await deliver(engine, RecordingApp()) == 0
    assert task_state(engine, "t1").state is State.DELETED


async def test_purge_deletes_the_queues_live_tasks_only(
    engine: sa.Engine, submitter: Sub, admin: dbqueue.Admin, clock: FakeClock
) -> None:
    submitter.submit(submission(name="done", queue="p"))
    await deliver(engine, RecordingApp())
    for i in range(3):
        submitter.submit(submission(name=f"t{i}", queue="p"))
    submitter.submit(submission(name="other", queue="keep"))
    assert admin.purge_queue("p") == 3
    app = RecordingApp()
    assert await deliver(engine, app) == 1
    assert app.names() == ["other"]
    assert task_state(engine, "done", queue="p").state is State.DONE


async def test_run_task_makes_a_task_due_and_replays_a_failed_one(
    engine: sa.Engine, submitter: Sub, admin: dbqueue.Admin, clock: FakeClock
) -> None:
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("q", max_attempts=1)])
    submitter.submit(submission(name="later", eta=clock.now() + dt.timedelta(days=1)))
    submitter.submit(submission(name="broken"))
    app = RecordingApp()
    app.statuses["broken"] = [500, 200]
    assert await deliver(engine, app) == 1
    assert task_state(engine, "broken").state is State.FAILED
    assert admin.run_task("q", "later")
    assert admin.run_task("q", "broken")
    assert await deliver(engine, app) == 2
    assert task_state(engine, "later").state is State.DONE
    broken = task_state(engine, "broken")
    assert (broken.state, broken.attempts) == (State.DONE, 1)
    assert not admin.run_task("q", "later")  # done: nothing to run


async def test_queue_stats(
    engine: sa.Engine, submitter: Sub, admin: dbqueue.Admin, clock: FakeClock
) -> None:
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("q", rate_per_s=7, max_attempts=1)])
    eta = clock.now() + dt.timedelta(minutes=5)
    submitter.submit(submission(name="ok"))
    submitter.submit(submission(name="bad"))
    submitter.submit(submission(name="later", eta=eta))
    app = RecordingApp()
    app.statuses["bad"] = [500]
    await deliver(engine, app)
    (s,) = admin.queue_stats("q")
    assert (s.tasks, s.oldest_eta, s.in_flight, s.done, s.failed) == (1, eta, 0, 1, 1)
    assert (s.executed_last_minute, s.effective_rate, s.paused) == (2, 7, False)
    clock.advance(61)
    admin.pause_queue("q")
    (s,) = admin.queue_stats()
    assert (s.executed_last_minute, s.effective_rate, s.paused) == (0, 0, True)


async def test_pages_walk_every_task_once_in_each_order(
    submitter: Sub, admin: dbqueue.Admin, clock: FakeClock
) -> None:
    for i in range(7):  # ETAs 3, 3, 2, 2, 1, 1, 0 hours ahead: out of ID order, some equal
        eta = clock.now() + dt.timedelta(hours=(7 - i) // 2)
        submitter.submit(submission(name=f"t{i}", eta=eta))
    submitter.submit(submission(name="other", queue="elsewhere"))
    for order, want in [
        ("oldest", [f"t{i}" for i in range(7)]),
        ("newest", [f"t{i}" for i in reversed(range(7))]),
        ("overdue", ["t6", "t4", "t5", "t2", "t3", "t0", "t1"]),  # by ETA, then ID
    ]:
        seen, cursor = [], None
        while True:
            page, cursor = admin.page_tasks(queue="q", order=order, limit=3, cursor=cursor)
            assert len(page) <= 3
            seen += [t.name for t in page]
            if cursor is None:
                break
        assert seen == want, order
    with pytest.raises(ValueError, match="cursor"):
        admin.page_tasks(order="overdue", cursor="12")
    with pytest.raises(ValueError, match="order"):
        admin.page_tasks(order="random")


async def test_task_info_carries_the_request_headers_and_body(
    submitter: Sub, admin: dbqueue.Admin
) -> None:
    submitter.submit(submission(name="t", body=b'{"x":1}', headers={"X-A": "b"}))
    t = admin.get_task("q", "t")
    assert t is not None
    assert (t.body, json.loads(t.headers)) == (b'{"x":1}', {"X-A": "b"})


async def test_count_by_state_and_history_of_the_last_hour(
    engine: sa.Engine, submitter: Sub, admin: dbqueue.Admin, clock: FakeClock
) -> None:
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("q", max_attempts=1)])
    for i in range(3):
        submitter.submit(submission(name=f"early{i}"))
    clock.advance(dt.timedelta(minutes=30))
    app = RecordingApp()
    app.statuses["early2"] = [500]
    assert await deliver(engine, app) == 3  # at minute 30: 2 done, 1 failed
    clock.advance(dt.timedelta(minutes=10))
    submitter.submit(submission(name="late", eta=clock.now() + dt.timedelta(days=1)))
    clock.advance(dt.timedelta(minutes=5))
    counts = admin.count_by_state("q")
    assert counts[State.DONE] == 2
    assert counts[State.FAILED] == 1
    assert counts[State.PENDING] == 1
    assert counts[State.DELETED] == 0
    points = admin.history("q", window=dt.timedelta(hours=1), buckets=12)
    assert len(points) == 12
    assert points[-1].start < clock.now()
    assert sum(p.added for p in points) == 4
    assert sum(p.finished for p in points) == 3
    assert sum(p.failed for p in points) == 1
    by_start = {round((clock.now() - p.start).total_seconds() / 60): p for p in points}
    assert by_start[45].depth == 3  # the bucket after the first three were added
    assert by_start[15].depth == 0  # delivered at minute 30
    assert points[-1].depth == 1  # the late one
    assert admin.history("elsewhere")[-1].depth == 0


async def test_retention_drops_old_finished_tasks_but_keeps_tombstones_in_their_window(
    engine: sa.Engine, admin: dbqueue.Admin, clock: FakeClock
) -> None:
    sub = dbqueue.DbQueueSubmitter(engine, tombstone_window=dt.timedelta(hours=1))
    sub.submit(submission(name="named"))
    sub.submit(submission())  # a generated name: no tombstone
    sub.submit(submission(name="live", eta=clock.now() + dt.timedelta(days=2)))
    await deliver(engine, RecordingApp())
    clock.advance(dt.timedelta(minutes=30))
    assert admin.delete_finished(dt.timedelta(minutes=10)) == 1  # the unnamed one
    assert admin.count_tasks() == 2
    clock.advance(dt.timedelta(minutes=30))
    assert admin.delete_finished(dt.timedelta(minutes=10)) == 1  # the named one, window over
    assert [t.name for t in admin.list_tasks()] == ["live"]
    clock.advance(dt.timedelta(days=30))
    assert admin.delete_finished(dt.timedelta(0)) == 0  # live tasks are never dropped


def test_cli_creates_the_schema_applies_queue_yaml_and_reports(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "cli.db")
    queue_yaml = tmp_path / "queue.yaml"
    queue_yaml.write_text("queue:\n- name: emails\n  rate: 2/s\n")
    assert main(["--db", db, "init"]) == 0
    assert main(["--db", db, "apply-queues", str(queue_yaml)]) == 0
    assert main(["--db", db, "pause", "emails"]) == 0
    assert main(["--db", db, "stats"]) == 0
    assert main(["--db", db, "pause", "nope"]) == 1
    assert main(["--db", db, "retention", "7d"]) == 0
    assert main(["--db", db, "list", "--state", "pending"]) == 0
    out = capsys.readouterr().out
    assert "applied 1 queues" in out
    assert "emails: tasks=0" in out
    assert "rate=0/s" in out
    assert "PAUSED" in out
    assert "deleted 0 finished tasks" in out
