"""tqtesting honours priorities as the database queue does: due tasks run highest
priority first, within a bounded head start (priority x priority_step)."""

from __future__ import annotations

import datetime as dt

import tq
import tqtesting
from tests.testpb import payloads_pb2 as pb

S = dt.timedelta(seconds=1)


def run_order(tasks: list[tq.Task], step: dt.timedelta = S) -> list[str]:
    disp = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="app.example.com"
    )
    seen: list[str] = []
    disp.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")(
        lambda p: seen.append(p.name)
    )
    clock = tqtesting.FakeClock()
    sched = tqtesting.Scheduler(disp, clock=clock, priority_step=step)
    with tq.use_submitter(sched), tq.clock.use_clock(clock):
        disp.add_task(*tasks)
        clock.advance(dt.timedelta(minutes=1))  # everything is due
        sched.run(tqtesting.stop_when_drained())
    return seen


def test_due_tasks_run_highest_priority_first() -> None:
    assert run_order(
        [
            tq.Task(pb.Greet(name="plain")),
            tq.Task(pb.Greet(name="low"), priority=-5),
            tq.Task(pb.Greet(name="high"), priority=9),
            tq.Task(pb.Greet(name="mid"), priority=2),
        ]
    ) == ["high", "mid", "plain", "low"]


def test_a_priority_is_a_bounded_head_start() -> None:
    assert run_order(
        [
            tq.Task(pb.Greet(name="waited"), delay=S),
            tq.Task(pb.Greet(name="urgent-soon"), priority=10, delay=10 * S),
            tq.Task(pb.Greet(name="urgent-late"), priority=10, delay=12 * S),
        ]
    ) == ["urgent-soon", "waited", "urgent-late"]


def test_without_priorities_tasks_run_by_eta_then_as_added() -> None:
    assert run_order(
        [
            tq.Task(pb.Greet(name="b"), delay=2 * S),
            tq.Task(pb.Greet(name="a"), delay=S),
            tq.Task(pb.Greet(name="c"), delay=2 * S),
        ]
    ) == ["a", "b", "c"]
