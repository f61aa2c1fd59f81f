"""The cleaner on SQLite, PostgreSQL and MariaDB: count, list and delete tasks by
queue, state and task class, in batches, with a dry run; and `tq tasks clean`."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import tq
from tests._dbengines import any_engine_fixture  # noqa: F401
from tests._dbqueue import clock_fixture, submission  # noqa: F401
from tq import dbqueue
from tq.cli._main import cli
from tq.dbqueue import State
from tqtesting import FakeClock

MINUTE = dt.timedelta(minutes=1)


def fill(engine: sa.Engine, clock: FakeClock) -> None:
    """q: 3 pending "a", 2 pending "b", 1 done "a" (past its window), 1 done "a"
    (name still reserved), 1 failed "b"; other: 2 pending "a"."""
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("q", pull=True, max_attempts=1)])
    sub = dbqueue.DbQueueSubmitter(engine, tombstone_window=dt.timedelta(hours=1))
    for name in ("old-done", "fail"):
        sub.submit(submission(name=name, task_class="b" if name == "fail" else "a"))
    puller = dbqueue.PullQueue(engine, "q")
    leased = {t.name: t for t in puller.lease(2, MINUTE)}
    assert puller.fail(leased["fail"], "no")
    assert puller.complete(leased["old-done"])
    clock.advance(dt.timedelta(hours=2))
    sub.submit(submission(name="new-done", task_class="a"))
    (t,) = puller.lease(1, MINUTE)
    assert puller.complete(t)
    for i in range(3):
        sub.submit(submission(name=f"a{i}", task_class="a"))
    for i in range(2):
        sub.submit(submission(name=f"b{i}", task_class="b"))
        sub.submit(submission(queue="other", name=f"o{i}", task_class="a"))


def states(engine: sa.Engine, queue: str = "q") -> dict[str, str]:
    return {t.name: t.state.value for t in dbqueue.Admin(engine).list_tasks(queue=queue)}


def test_a_dry_run_counts_and_changes_nothing(engine: sa.Engine, clock: FakeClock) -> None:
    fill(engine, clock)
    before = states(engine)
    c = dbqueue.Admin(engine).clean(queue="q", dry_run=True)
    assert (c.matched, c.deleted, c.dropped, c.kept, c.dry_run) == (8, 5, 2, 1, True)
    assert states(engine) == before


def test_cleaning_by_queue_state_and_class_deletes_only_those(
    engine: sa.Engine, clock: FakeClock
) -> None:
    fill(engine, clock)
    admin = dbqueue.Admin(engine)
    assert admin.count_tasks(queue="q", state="pending", task_class="a") == 3
    c = admin.clean(queue="q", state=State.PENDING, task_class="a")
    assert (c.matched, c.deleted, c.dropped, c.kept) == (3, 3, 0, 0)
    after = states(engine)
    assert {n: after[n] for n in ("a0", "a1", "a2", "b0", "b1")} == {
        "a0": "deleted", "a1": "deleted", "a2": "deleted", "b0": "pending", "b1": "pending",
    }  # fmt: skip
    assert set(states(engine, "other").values()) == {"pending"}
    with pytest.raises(tq.SubmitError):  # a deleted task's name stays taken
        dbqueue.DbQueueSubmitter(engine).submit(submission(name="a0"))


def test_finished_tasks_are_dropped_unless_their_name_is_reserved(
    engine: sa.Engine, clock: FakeClock
) -> None:
    fill(engine, clock)
    c = dbqueue.Admin(engine).clean(queue="q", state="done")
    assert (c.matched, c.deleted, c.dropped, c.kept) == (2, 0, 1, 1)
    assert "old-done" not in states(engine)
    assert states(engine)["new-done"] == "done"


def test_cleaning_goes_in_batches_and_reports_each(engine: sa.Engine, clock: FakeClock) -> None:
    fill(engine, clock)
    seen: list[int] = []
    c = dbqueue.Admin(engine).clean(task_class="a", batch_size=2, progress=seen.append)
    assert c.matched == sum(seen) == 7
    assert max(seen) <= 2
    assert c.deleted == 5


def test_cleaning_needs_a_filter(engine: sa.Engine) -> None:
    with pytest.raises(tq.ConfigError, match="never deletes every task"):
        dbqueue.Admin(engine).clean()
    with pytest.raises(ValueError, match="not a valid State"):
        dbqueue.Admin(engine).clean(state="running")


def test_tq_tasks_clean_dry_run_then_for_real(engine: sa.Engine, clock: FakeClock) -> None:
    fill(engine, clock)
    url = engine.url.render_as_string(hide_password=False)
    run = CliRunner().invoke
    dry = run(cli, ["tasks", "clean", "--db", url, "--queue", "q", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["deleted"] == 5
    assert states(engine)["a0"] == "pending"
    real = run(cli, ["tasks", "clean", "--db", url, "--queue", "q", "--state", "pending", "--yes"])
    assert real.exit_code == 0, real.output
    assert "5 tasks matched: 5 waiting or running were deleted" in real.output
    assert set(states(engine, "other").values()) == {"pending"}
    assert run(cli, ["tasks", "clean", "--db", url]).exit_code != 0
