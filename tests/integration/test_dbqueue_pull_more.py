"""Pull consumers beyond Cloud Tasks, on SQLite, PostgreSQL and MariaDB: leases
that wait for work, heartbeats with progress, results and failures kept with
the task, and leasing one task by name with a clear conflict."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import sqlalchemy as sa

import tq
from tests._dbengines import any_engine_fixture  # noqa: F401
from tests._dbqueue import clock_fixture, submission, task_state  # noqa: F401
from tq import dbqueue
from tq.dbqueue import State
from tqtesting import FakeClock

MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def puller(engine: sa.Engine) -> dbqueue.PullQueue:
    dbqueue.apply_queues(
        engine, [dbqueue.QueueConfig("q", pull=True, max_attempts=2, min_backoff_s=10)]
    )
    return dbqueue.PullQueue(engine, "q", owner="me")


def test_a_waiting_lease_returns_as_soon_as_a_task_is_added(
    engine: sa.Engine, puller: dbqueue.PullQueue
) -> None:
    sub = dbqueue.DbQueueSubmitter(engine)
    got: list[dbqueue.PulledTask] = []
    consumer = threading.Thread(
        target=lambda: got.extend(puller.lease(duration=MINUTE, wait=dt.timedelta(seconds=60)))
    )
    consumer.start()
    sub.submit(submission(name="late"))
    consumer.join(timeout=60)
    assert not consumer.is_alive()
    assert [t.name for t in got] == ["late"]


def test_a_waiting_lease_gives_up_empty_after_its_wait(puller: dbqueue.PullQueue) -> None:
    started = time.monotonic()
    assert puller.lease(duration=MINUTE, wait=dt.timedelta(milliseconds=200)) == []
    assert time.monotonic() - started >= 0.2


async def test_the_async_waiting_lease_sees_a_task_of_another_consumer(
    engine: sa.Engine, puller: dbqueue.PullQueue
) -> None:
    import asyncio

    waiting = asyncio.create_task(
        puller.lease_async(duration=MINUTE, wait=dt.timedelta(seconds=60))
    )
    await asyncio.sleep(0)
    # The submitter of this process wakes the waiting consumer.
    dbqueue.DbQueueSubmitter(engine).submit(submission(name="t"))
    got = await asyncio.wait_for(waiting, 60)
    assert [t.name for t in got] == ["t"]


def test_heartbeats_extend_the_lease_and_show_progress(
    engine: sa.Engine, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    dbqueue.DbQueueSubmitter(engine).submit(submission(name="job"))
    (t,) = puller.lease(duration=MINUTE)
    clock.advance(dt.timedelta(seconds=50))
    beat = puller.heartbeat(t, progress='{"done": 40, "of": 100}')
    assert beat is not None
    assert beat.lease_expires == clock.now() + MINUTE
    info = task_state(engine, "job")
    assert info.progress == '{"done": 40, "of": 100}'
    assert info.lease_expires == clock.now() + MINUTE
    clock.advance(dt.timedelta(seconds=50))  # past the first lease, within the renewed one
    other = dbqueue.PullQueue(engine, "q", owner="other")
    assert other.lease(duration=MINUTE) == []
    assert puller.complete(beat)


def test_a_heartbeat_after_the_lease_was_lost_says_so(
    engine: sa.Engine, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    dbqueue.DbQueueSubmitter(engine).submit(submission(name="job"))
    (t,) = puller.lease(duration=MINUTE)
    clock.advance(dt.timedelta(minutes=2))
    dbqueue.PullQueue(engine, "q", owner="other").lease(duration=MINUTE)  # reclaims it
    assert puller.heartbeat(t, progress="late") is None
    assert task_state(engine, "job").progress is None


def test_progress_over_its_limit_is_refused(engine: sa.Engine, puller: dbqueue.PullQueue) -> None:
    dbqueue.DbQueueSubmitter(engine).submit(submission(name="job"))
    (t,) = puller.lease(duration=MINUTE)
    with pytest.raises(tq.ValidationError, match="at most"):
        puller.heartbeat(t, progress="x" * (64 * 1024 + 1))


def test_a_completed_task_keeps_its_result_and_a_failed_one_its_failure(
    engine: sa.Engine, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    sub = dbqueue.DbQueueSubmitter(engine)
    sub.submit(submission(name="ok"))
    sub.submit(submission(name="bad"))
    a, b = puller.lease(max_tasks=2, duration=MINUTE)
    assert puller.complete(a, result="42 rows")
    assert puller.fail(b, "parse error", details=b"Traceback ...")
    assert task_state(engine, "ok").result == b"42 rows"
    bad = task_state(engine, "bad")
    assert (bad.state, bad.last_error, bad.failure) == (
        State.PENDING,
        "parse error",
        b"Traceback ...",
    )
    clock.advance(dt.timedelta(seconds=10))
    (b2,) = puller.lease(duration=MINUTE)
    assert puller.fail(b2, "still broken", details="second traceback")
    bad = task_state(engine, "bad")
    assert (bad.state, bad.failure) == (State.FAILED, b"second traceback")


def test_a_result_over_the_limit_is_refused_and_the_lease_kept(
    engine: sa.Engine, puller: dbqueue.PullQueue
) -> None:
    dbqueue.DbQueueSubmitter(engine).submit(submission(name="big"))
    (t,) = puller.lease(duration=MINUTE)
    with pytest.raises(tq.ValidationError, match="65536 bytes"):
        puller.complete(t, result=b"x" * (64 * 1024 + 1))
    assert task_state(engine, "big").state is State.LEASED
    assert puller.complete(t, result=b"x" * 64 * 1024)
    assert task_state(engine, "big").result == b"x" * 64 * 1024


def test_lease_by_name_takes_a_task_whatever_its_eta(
    engine: sa.Engine, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    dbqueue.DbQueueSubmitter(engine).submit(
        submission(name="job-42", eta=clock.now() + dt.timedelta(hours=1))
    )
    t = puller.lease_task("job-42", MINUTE)
    assert (t.name, t.retry_count, t.lease_expires) == ("job-42", 0, clock.now() + MINUTE)
    again = puller.lease_task("job-42", dt.timedelta(minutes=5))  # the holder: extended
    assert again.lease_expires == clock.now() + dt.timedelta(minutes=5)
    assert puller.complete(again, result=b"done")


def test_lease_by_name_held_by_another_is_a_clear_conflict(
    engine: sa.Engine, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    dbqueue.DbQueueSubmitter(engine).submit(submission(name="job-42"))
    puller.lease_task("job-42", MINUTE)
    other = dbqueue.PullQueue(engine, "q", owner="other")
    with pytest.raises(dbqueue.LeaseConflict, match="leased by 'me' until") as e:
        other.lease_task("job-42", MINUTE)
    assert (e.value.holder, e.value.until) == ("me", clock.now() + MINUTE)
    clock.advance(MINUTE)  # expired: the other takes it over, as a new attempt
    t = other.lease_task("job-42", MINUTE)
    assert t.retry_count == 1
    with pytest.raises(dbqueue.LeaseConflict, match="leased by 'other'"):
        puller.lease_task("job-42", MINUTE)


def test_lease_by_name_of_a_missing_or_finished_task_is_not_found(
    engine: sa.Engine, puller: dbqueue.PullQueue
) -> None:
    with pytest.raises(dbqueue.TaskNotFound, match="does not exist"):
        puller.lease_task("nope", MINUTE)
    dbqueue.DbQueueSubmitter(engine).submit(submission(name="gone"))
    puller.complete(puller.lease_task("gone", MINUTE))
    with pytest.raises(dbqueue.TaskNotFound, match="is done"):
        puller.lease_task("gone", MINUTE)


def test_tq_tasks_list_shows_priority_tag_and_progress(
    engine: sa.Engine, puller: dbqueue.PullQueue
) -> None:
    import json

    from click.testing import CliRunner

    from tq._task import PRIORITY_HEADER, TAG_HEADER
    from tq.cli._main import cli

    headers = {"Content-Type": "application/json", PRIORITY_HEADER: "7", TAG_HEADER: "batch-1"}
    dbqueue.DbQueueSubmitter(engine).submit(submission(name="job", headers=headers))
    (t,) = puller.lease(duration=MINUTE)
    assert puller.heartbeat(t, progress="40/100") is not None
    url = engine.url.render_as_string(hide_password=False)
    out = CliRunner().invoke(cli, ["tasks", "list", "--db", url, "--queue", "q", "--json"])
    assert out.exit_code == 0, out.output
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert (row["priority"], row["tag"], row["progress"]) == (7, "batch-1", "40/100")
    table = CliRunner().invoke(cli, ["tasks", "list", "--db", url, "--queue", "q"])
    assert "40/100" in table.output
    assert "batch-1" in table.output
