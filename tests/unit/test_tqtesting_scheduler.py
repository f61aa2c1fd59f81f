"""tqtesting.Scheduler: an in-memory Cloud Tasks running tasks through tq's push path."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import threading
from collections.abc import Iterator

import grpc
import pytest

import tq
import tqtesting
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import FakeStore, in_txn
from tq._reminder import Reminder, encode_payload, fresh_until
from tqtesting import FakeClock, RetryConfig, Scheduler, TaskStatus

S = dt.timedelta(seconds=1)


@pytest.fixture
def disp() -> tq.Dispatcher:
    return tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="app.example.com"
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sched(disp: tq.Dispatcher, clock: FakeClock) -> Iterator[Scheduler]:
    with tqtesting.testing_context(disp, clock) as s:
        yield s


def register(
    disp: tq.Dispatcher, class_id: str, prototype: type, queue: str = "default", **kw: object
) -> tq.TaskClass:
    return disp.register_task_class(
        tq.TaskClass(
            id=class_id,
            prototype=prototype,
            kind=tq.Kind.NON_TRANSACTIONAL,
            queue=queue,
            **kw,  # type: ignore[arg-type]
        )
    )


# Running tasks.


def test_added_task_runs_its_handler_with_the_payload(
    disp: tq.Dispatcher, sched: Scheduler
) -> None:
    got: list[pb.Greet] = []
    register(disp, "greet", pb.Greet, handler=got.append)

    disp.add_task(tq.Task(payload=pb.Greet(name="ada")))
    assert sched.tasks().pending().payloads() == [pb.Greet(name="ada")]
    sched.run(tqtesting.stop_when_drained())

    assert got == [pb.Greet(name="ada")]
    done = sched.tasks().finished()
    assert len(done) == 1
    assert done[0].class_id == "greet"
    assert done[0].attempts == 1
    assert done[0].last_status == 200
    assert done[0].status is TaskStatus.FINISHED
    assert done[0].name.startswith("projects/proj/locations/us-central1/queues/default/tasks/")


def test_payload_recorded_is_a_copy_taken_at_submit(disp: tq.Dispatcher, sched: Scheduler) -> None:
    register(disp, "greet", pb.Greet)
    payload = pb.Greet(name="before")
    disp.add_task(tq.Task(payload=payload))
    payload.name = "after"
    assert sched.tasks().payloads() == [pb.Greet(name="before")]


async def test_async_handler_runs_with_run_async(disp: tq.Dispatcher, sched: Scheduler) -> None:
    got: list[str] = []

    async def handler(p: pb.Greet) -> None:
        got.append(p.name)

    register(disp, "greet", pb.Greet, handler=handler)
    await disp.add_task_async(tq.Task(payload=pb.Greet(name="a")), tq.Task(payload=pb.Greet()))
    await sched.run_async()
    assert sorted(got) == ["", "a"]
    assert len(sched.tasks().finished()) == 2


async def test_run_inside_a_running_loop_points_at_run_async(sched: Scheduler) -> None:
    with pytest.raises(tqtesting.SchedulerError, match="run_async"):
        sched.run()


# Names and deduplication.


def test_second_task_with_a_taken_name_is_already_exists(
    disp: tq.Dispatcher, sched: Scheduler
) -> None:
    register(disp, "greet", pb.Greet)
    disp.add_task(tq.Task(payload=pb.Greet(name="x"), deduplication_key="k"))
    first = sched.tasks()[0]

    sub = tq.Submission(
        request=first.request, task_class="greet", created=first.created, payload=pb.Greet()
    )
    with pytest.raises(tq.SubmitError) as err:
        sched.submit(sub)
    assert err.value.code == grpc.StatusCode.ALREADY_EXISTS
    # add_task counts an existing task as success: still one task.
    disp.add_task(tq.Task(payload=pb.Greet(name="y"), deduplication_key="k"))
    assert sched.tasks().payloads() == [pb.Greet(name="x")]
    assert first.task_id == tq._task.deduplicated_task_id("", "greet", "k")


def test_names_stay_taken_after_the_task_finished(disp: tq.Dispatcher, sched: Scheduler) -> None:
    register(disp, "greet", pb.Greet, handler=lambda p: None)
    disp.add_task(tq.Task(payload=pb.Greet(name="x"), deduplication_key="k"))
    sched.run()
    disp.add_task(tq.Task(payload=pb.Greet(name="x"), deduplication_key="k"))
    assert len(sched.tasks()) == 1
    assert len(sched.tasks().finished()) == 1


def test_unnamed_tasks_get_distinct_names(disp: tq.Dispatcher, sched: Scheduler) -> None:
    register(disp, "greet", pb.Greet)
    disp.add_task(*(tq.Task(payload=pb.Greet(name=str(i))) for i in range(5)))
    assert len(set(sched.tasks().names())) == 5


def test_task_named_outside_its_queue_is_invalid_argument(
    disp: tq.Dispatcher, sched: Scheduler
) -> None:
    register(disp, "greet", pb.Greet)
    disp.add_task(tq.Task(payload=pb.Greet(), deduplication_key="k"))
    req = type(sched.tasks()[0].request)()
    req.CopyFrom(sched.tasks()[0].request)
    req.task.name = "projects/proj/locations/us-central1/queues/other/tasks/abc"
    with pytest.raises(tq.SubmitError) as err:
        sched.submit(tq.Submission(request=req, task_class="greet", created=tq.clock.now()))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


# ETAs on the fake clock.


def test_tasks_run_in_eta_order_at_their_eta(
    disp: tq.Dispatcher, sched: Scheduler, clock: FakeClock
) -> None:
    start = clock.now()
    ran: list[tuple[str, dt.datetime]] = []
    register(disp, "greet", pb.Greet, handler=lambda p: ran.append((p.name, tq.clock.now())))

    disp.add_task(
        tq.Task(payload=pb.Greet(name="c"), delay=30 * S),
        tq.Task(payload=pb.Greet(name="a"), delay=10 * S),
        tq.Task(payload=pb.Greet(name="b"), eta=start + 20 * S),
    )
    sched.run()

    assert ran == [("a", start + 10 * S), ("b", start + 20 * S), ("c", start + 30 * S)]
    assert clock.now() == start + 30 * S


def test_tasks_due_together_run_in_submission_order(disp: tq.Dispatcher, sched: Scheduler) -> None:
    ran: list[str] = []
    register(disp, "greet", pb.Greet, handler=lambda p: ran.append(p.name))
    for name in "qwerty":
        disp.add_task(tq.Task(payload=pb.Greet(name=name), delay=5 * S))
    sched.run()
    assert ran == list("qwerty")


async def test_without_auto_advance_the_run_waits_for_the_clock(
    disp: tq.Dispatcher, clock: FakeClock
) -> None:
    ran = asyncio.Event()

    async def handler(p: pb.Greet) -> None:
        ran.set()

    register(disp, "greet", pb.Greet, handler=handler)
    sched = Scheduler(disp, clock=clock, auto_advance=False)
    with tq.clock.use_clock(clock), tq.use_submitter(sched):
        await disp.add_task_async(tq.Task(payload=pb.Greet(), delay=60 * S))
    run = asyncio.create_task(sched.run_async())
    for _ in range(5):  # let the run look at the queue and go to sleep
        await asyncio.sleep(0)
    assert not ran.is_set()
    assert len(sched.tasks().pending()) == 1

    clock.advance(60 * S)
    await asyncio.wait_for(run, timeout=60)
    assert ran.is_set()
    assert len(sched.tasks().finished()) == 1


def test_with_the_real_clock_the_run_waits_for_the_eta(disp: tq.Dispatcher) -> None:
    ran_at: list[dt.datetime] = []
    register(disp, "greet", pb.Greet, handler=lambda p: ran_at.append(tq.clock.now()))
    sched = Scheduler(disp, clock=tq.clock.SYSTEM)
    with tq.use_submitter(sched):
        disp.add_task(tq.Task(payload=pb.Greet(), delay=dt.timedelta(milliseconds=50)))
    eta = sched.tasks()[0].eta
    sched.run()
    assert len(ran_at) == 1
    assert ran_at[0] >= eta


def test_auto_advance_needs_a_fake_clock(disp: tq.Dispatcher) -> None:
    with pytest.raises(ValueError, match="FakeClock"):
        Scheduler(disp, clock=tq.clock.SYSTEM, auto_advance=True)


# Retries.


def test_retry_config_backoff_doubles_then_grows_linearly_to_the_cap() -> None:
    cfg = RetryConfig(max_attempts=10, min_backoff=10 * S, max_backoff=300 * S, max_doublings=3)
    waits = [cfg.backoff(k).total_seconds() for k in range(1, 9)]
    assert waits == [10, 20, 40, 80, 160, 240, 300, 300]


def test_failed_attempts_are_retried_with_backoff_on_the_clock(
    disp: tq.Dispatcher, clock: FakeClock
) -> None:
    start = clock.now()
    register(disp, "greet", pb.Greet)

    def handler(p: pb.Greet) -> None:
        if tq.execution_info().execution_count < 3:
            raise tq.Transient("not yet")

    disp.attach_handler("greet", handler)
    retry = RetryConfig(max_attempts=5, min_backoff=1 * S, max_backoff=3 * S, max_doublings=4)
    with tqtesting.testing_context(disp, clock, retry=retry) as sched:
        disp.add_task(tq.Task(payload=pb.Greet()))
        sched.run()

    (rec,) = sched.tasks()
    assert rec.status is TaskStatus.FINISHED
    assert rec.attempts == 4
    assert [a.at - start for a in rec.history] == [0 * S, 1 * S, 3 * S, 6 * S]
    assert [a.status for a in rec.history] == [500, 500, 500, 200]
    assert rec.error is None


def test_task_fails_for_good_after_max_attempts(disp: tq.Dispatcher, clock: FakeClock) -> None:
    calls: list[int] = []

    def handler(p: pb.Greet) -> None:
        calls.append(tq.execution_info().execution_count)
        raise tq.Retry("busy")

    register(disp, "greet", pb.Greet, handler=handler)
    with tqtesting.testing_context(disp, clock, retry=RetryConfig(max_attempts=3)) as sched:
        disp.add_task(tq.Task(payload=pb.Greet()))
        sched.run()  # Retry is an expected outcome: recorded, not raised

    assert calls == [0, 1, 2]
    (rec,) = sched.tasks().failed()
    assert rec.attempts == 3
    assert rec.last_status == 429
    assert isinstance(rec.error, tq.Retry)


def test_per_queue_retry_config_wins(disp: tq.Dispatcher, clock: FakeClock) -> None:
    def handler(p: pb.Greet) -> None:
        raise tq.Transient("no")

    register(disp, "a", pb.Greet, queue="fast", handler=handler)
    register(disp, "b", pb.Count, queue="slow", handler=handler)
    with tqtesting.testing_context(
        disp, clock, retry=RetryConfig(max_attempts=4), queues={"fast": RetryConfig(max_attempts=1)}
    ) as sched:
        disp.add_task(tq.Task(payload=pb.Greet()), tq.Task(payload=pb.Count()))
        sched.run()
    assert sched.tasks().of_class("a")[0].attempts == 1
    assert sched.tasks().of_class("b")[0].attempts == 4


def test_execution_info_counts_attempts_and_tells_the_previous_response(
    disp: tq.Dispatcher, sched: Scheduler, clock: FakeClock
) -> None:
    seen: list[tq.ExecutionInfo] = []

    def handler(p: pb.Greet) -> None:
        seen.append(tq.execution_info())
        if len(seen) < 3:
            raise tq.Retry("again")

    register(disp, "greet", pb.Greet, queue="emails", handler=handler)
    disp.add_task(tq.Task(payload=pb.Greet(), deduplication_key="k", delay=5 * S))
    sched.run()

    rec = sched.tasks()[0]
    assert [i.execution_count for i in seen] == [0, 1, 2]
    assert [i.retry_count for i in seen] == [0, 1, 2]
    assert [i.previous_response for i in seen] == [None, 429, 429]
    assert seen[0].retry_reason == ""
    assert "429" in seen[1].retry_reason
    assert {i.queue for i in seen} == {"emails"}
    assert {i.task_id for i in seen} == {rec.task_id}
    assert {i.task_class for i in seen} == {"greet"}
    assert [i.eta for i in seen] == [a.at for a in rec.history]


# Failures are visible.


def test_unexpected_exception_fails_the_run_with_task_failed_chaining_it(
    disp: tq.Dispatcher, clock: FakeClock
) -> None:
    def handler(p: pb.Greet) -> None:
        raise KeyError("the bug")

    register(disp, "greet", pb.Greet, handler=handler)
    with tqtesting.testing_context(disp, clock, retry=RetryConfig(max_attempts=2)) as sched:
        disp.add_task(tq.Task(payload=pb.Greet()))
        with pytest.raises(tqtesting.TaskFailed, match="the bug") as err:
            sched.run()

    assert isinstance(err.value.__cause__, KeyError)
    assert err.value.task.class_id == "greet"
    (rec,) = sched.tasks().failed()
    assert rec.attempts == 2
    assert isinstance(rec.error, KeyError)
    assert rec.outcome == "error"


def test_raise_on_task_error_false_only_records_the_failure(
    disp: tq.Dispatcher, clock: FakeClock
) -> None:
    def handler(p: pb.Greet) -> None:
        raise ValueError("bad")

    register(disp, "greet", pb.Greet, handler=handler)
    with tqtesting.testing_context(
        disp, clock, retry=RetryConfig(max_attempts=1), raise_on_task_error=False
    ) as sched:
        disp.add_task(tq.Task(payload=pb.Greet()))
        sched.run()
    (rec,) = sched.tasks().failed()
    assert isinstance(rec.error, ValueError)


def test_task_of_a_class_without_handler_fails_the_run(
    disp: tq.Dispatcher, clock: FakeClock
) -> None:
    register(disp, "greet", pb.Greet)
    with tqtesting.testing_context(disp, clock, retry=RetryConfig(max_attempts=1)) as sched:
        disp.add_task(tq.Task(payload=pb.Greet()))
        with pytest.raises(tqtesting.TaskFailed, match="no handler"):
            sched.run()
    assert sched.tasks()[0].last_status == 404


def test_fatal_drops_the_task_at_once_and_ignore_finishes_it(
    disp: tq.Dispatcher, sched: Scheduler
) -> None:
    def fatal(p: pb.Greet) -> None:
        raise tq.Fatal("never")

    def ignore(p: pb.Count) -> None:
        raise tq.Ignore("meh")

    register(disp, "fatal", pb.Greet, handler=fatal)
    register(disp, "ignore", pb.Count, handler=ignore)
    disp.add_task(tq.Task(payload=pb.Greet()), tq.Task(payload=pb.Count()))
    sched.run()

    (f,) = sched.tasks().failed()
    assert (f.class_id, f.attempts, f.last_status, f.outcome) == ("fatal", 1, 202, "fatal")
    (i,) = sched.tasks().finished()
    assert (i.class_id, i.attempts, i.last_status, i.outcome) == ("ignore", 1, 204, "ignore")


# Chains, stop options, limits.


def test_tasks_added_by_sync_and_async_handlers_run_in_the_same_run(
    disp: tq.Dispatcher, sched: Scheduler
) -> None:
    def step(p: pb.Count) -> None:  # sync: runs in a worker thread
        if p.n < 3:
            disp.add_task(tq.Task(payload=pb.Count(n=p.n + 1), delay=1 * S))
        else:
            disp.add_task(tq.Task(payload=pb.Greet(name="done")))

    async def finish(p: pb.Greet) -> None:
        await disp.add_task_async(tq.Task(payload=pb.Blob(data=b"end")))

    register(disp, "step", pb.Count, handler=step)
    register(disp, "finish", pb.Greet, handler=finish)
    register(disp, "end", pb.Blob, handler=lambda p: None)
    disp.add_task(tq.Task(payload=pb.Count(n=0)))
    sched.run()

    assert [p.n for p in sched.tasks().of_class("step").payloads()] == [0, 1, 2, 3]  # type: ignore[attr-defined]
    assert len(sched.tasks().finished()) == 6


def test_stop_after_task_stops_after_the_first_matching_attempt(
    disp: tq.Dispatcher, sched: Scheduler
) -> None:
    register(disp, "a", pb.Greet, handler=lambda p: None)
    register(disp, "b", pb.Count, handler=lambda p: None)
    disp.add_task(
        tq.Task(payload=pb.Greet(name="1")),
        tq.Task(payload=pb.Count(n=1)),
        tq.Task(payload=pb.Greet(name="2")),
    )
    sched.run(tqtesting.stop_after_task("b"))
    assert [r.class_id for r in sched.tasks().finished()] == ["a", "b"]
    assert sched.tasks().pending().payloads() == [pb.Greet(name="2")]

    sched.run(tqtesting.stop_after_task(lambda r: r.payload == pb.Greet(name="2")))
    assert len(sched.tasks().pending()) == 0


def test_stop_before_task_leaves_it_pending_and_the_clock_before_it(
    disp: tq.Dispatcher, sched: Scheduler, clock: FakeClock
) -> None:
    start = clock.now()
    register(disp, "a", pb.Greet, handler=lambda p: None)
    register(disp, "b", pb.Count, handler=lambda p: None)
    disp.add_task(
        tq.Task(payload=pb.Greet(), delay=1 * S), tq.Task(payload=pb.Count(), delay=9 * S)
    )

    sched.run(tqtesting.stop_before_task("b"))
    assert [r.class_id for r in sched.tasks().finished()] == ["a"]
    assert [r.class_id for r in sched.tasks().pending()] == ["b"]
    assert clock.now() == start + 1 * S

    sched.run(tqtesting.stop_when_drained())
    assert len(sched.tasks().finished()) == 2


def test_run_that_drains_before_its_stop_condition_raises(
    disp: tq.Dispatcher, sched: Scheduler
) -> None:
    register(disp, "a", pb.Greet, handler=lambda p: None)
    disp.add_task(tq.Task(payload=pb.Greet()))
    with pytest.raises(tqtesting.SchedulerError, match="stop condition"):
        sched.run(tqtesting.stop_after_task("nope"))
    assert len(sched.tasks().finished()) == 1


def test_endless_chain_hits_the_execution_cap(disp: tq.Dispatcher, sched: Scheduler) -> None:
    def forever(p: pb.Count) -> None:
        disp.add_task(tq.Task(payload=pb.Count(n=p.n + 1), delay=1 * S))

    register(disp, "forever", pb.Count, handler=forever)
    disp.add_task(tq.Task(payload=pb.Count()))
    with pytest.raises(tqtesting.RunLimitExceeded, match="max_executions"):
        sched.run(tqtesting.max_executions(25))
    assert len(sched.tasks().finished()) == 25
    assert len(sched.tasks().pending()) == 1


def test_tasks_run_one_at_a_time_by_default(disp: tq.Dispatcher, sched: Scheduler) -> None:
    running, peak = 0, 0

    async def handler(p: pb.Greet) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(3):
            await asyncio.sleep(0)
        running -= 1

    register(disp, "greet", pb.Greet, handler=handler)
    disp.add_task(*(tq.Task(payload=pb.Greet()) for _ in range(4)))
    sched.run()
    assert peak == 1


def test_parallel_runs_due_tasks_at_once(disp: tq.Dispatcher, sched: Scheduler) -> None:
    barrier: asyncio.Barrier | None = None
    executing_seen: list[int] = []

    async def handler(p: pb.Greet) -> None:
        nonlocal barrier
        barrier = barrier or asyncio.Barrier(3)
        # Would time out if the three did not run together.
        await asyncio.wait_for(barrier.wait(), timeout=60)
        executing_seen.append(len(sched.tasks().executing()))

    register(disp, "greet", pb.Greet, handler=handler)
    disp.add_task(*(tq.Task(payload=pb.Greet()) for _ in range(3)))
    sched.run(tqtesting.parallel(3))
    assert executing_seen == [3, 3, 3]
    assert len(sched.tasks().finished()) == 3


async def test_wait_when_drained_picks_up_tasks_added_later(
    disp: tq.Dispatcher, sched: Scheduler
) -> None:
    got: list[str] = []
    register(disp, "greet", pb.Greet, handler=lambda p: got.append(p.name))
    run = asyncio.create_task(
        sched.run_async(tqtesting.wait_when_drained(), tqtesting.stop_after_task("greet"))
    )
    await asyncio.sleep(0)
    # From another thread (with this context, so with the scheduler as submitter).
    ctx = contextvars.copy_context()
    task = tq.Task(payload=pb.Greet(name="late"))
    t = threading.Thread(target=ctx.run, args=(disp.add_task, task))
    t.start()
    t.join()
    await asyncio.wait_for(run, timeout=60)
    assert got == ["late"]


async def test_cancelled_run_leaves_the_running_task_pending(
    disp: tq.Dispatcher, sched: Scheduler
) -> None:
    started = asyncio.Event()

    async def handler(p: pb.Greet) -> None:
        started.set()
        await asyncio.Event().wait()  # hangs

    register(disp, "greet", pb.Greet, handler=handler)
    await disp.add_task_async(tq.Task(payload=pb.Greet()))
    run = asyncio.create_task(sched.run_async())
    await asyncio.wait_for(started.wait(), timeout=60)
    assert len(sched.tasks().executing()) == 1
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    (rec,) = sched.tasks().pending()
    assert rec.attempts == 0


@pytest.mark.parametrize("n", [1, 2])
def test_context_variables_a_handler_sets_stay_its_own(
    disp: tq.Dispatcher, sched: Scheduler, n: int
) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    async def handler(p: pb.Greet) -> None:
        seen.append(var.get())
        var.set(p.name)

    register(disp, "greet", pb.Greet, handler=handler)
    disp.add_task(*(tq.Task(payload=pb.Greet(name=str(i))) for i in range(4)))
    sched.run(tqtesting.parallel(n))
    assert seen == ["unset"] * 4
    assert var.get() == "unset"


def test_handler_timeout_and_task_group_act_on_the_handler_alone(
    disp: tq.Dispatcher, clock: FakeClock
) -> None:
    async def times_out(p: pb.Greet) -> None:
        async with asyncio.timeout(0):
            await asyncio.Event().wait()

    async def fails(p: pb.Count) -> None:
        async def boom() -> None:
            raise ValueError("boom")

        async with asyncio.TaskGroup() as tg:
            tg.create_task(boom())
            tg.create_task(asyncio.Event().wait())

    register(disp, "greet", pb.Greet, handler=times_out)
    register(disp, "count", pb.Count, handler=fails)
    register(disp, "after", pb.Blob, handler=lambda p: None)
    with tqtesting.testing_context(
        disp, clock, retry=RetryConfig(max_attempts=1), raise_on_task_error=False
    ) as sched:
        disp.add_task(
            tq.Task(payload=pb.Greet()), tq.Task(payload=pb.Count()), tq.Task(payload=pb.Blob())
        )
        sched.run()  # the run itself is not cancelled by either

    greet, count, after = sched.tasks()
    assert isinstance(greet.error, TimeoutError)
    assert isinstance(count.error, ExceptionGroup)
    assert after.status is TaskStatus.FINISHED


async def test_cancelled_run_is_cancelled_even_if_the_handler_swallows_it(
    disp: tq.Dispatcher, sched: Scheduler
) -> None:
    started = asyncio.Event()

    async def handler(p: pb.Greet) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass  # ends normally

    register(disp, "greet", pb.Greet, handler=handler)
    await disp.add_task_async(tq.Task(payload=pb.Greet()), tq.Task(payload=pb.Greet()))
    run = asyncio.create_task(sched.run_async())
    await asyncio.wait_for(started.wait(), timeout=60)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    first, second = sched.tasks()
    assert first.status is TaskStatus.FINISHED
    assert second.status is TaskStatus.PENDING


async def test_long_run_lets_other_coroutines_run(disp: tq.Dispatcher, sched: Scheduler) -> None:
    other_ran = asyncio.Event()
    seen: list[bool] = []

    async def handler(p: pb.Greet) -> None:  # never suspends
        seen.append(other_ran.is_set())

    async def other() -> None:
        other_ran.set()

    register(disp, "greet", pb.Greet, handler=handler)
    await disp.add_task_async(*(tq.Task(payload=pb.Greet()) for _ in range(100)))
    other_task = asyncio.create_task(other())
    await sched.run_async()
    await other_task
    assert seen[-1] is True


# Where tasks come from.


def test_task_read_back_from_a_reminder_has_its_payload_decoded(
    disp: tq.Dispatcher, sched: Scheduler, clock: FakeClock
) -> None:
    got: list[pb.Greet] = []
    register(disp, "greet", pb.Greet, handler=got.append)
    other = Scheduler(disp, clock=clock)
    with tq.use_submitter(other):
        disp.add_task(tq.Task(payload=pb.Greet(name="from-reminder")))
    original = other.tasks()[0]
    sub = tq.Submission(
        request=original.request, task_class="greet", created=clock.now(), payload=None
    )
    reminder = Reminder(
        id="ab" * 16, fresh_until=fresh_until(clock.now()), payload=encode_payload(sub)
    )

    sched.submit(reminder.submission())
    assert sched.tasks().payloads() == [pb.Greet(name="from-reminder")]
    assert sched.tasks()[0].reminder_id == "ab" * 16
    sched.run()
    assert got == [pb.Greet(name="from-reminder")]


def test_transactional_task_reaches_the_scheduler_after_commit(
    disp: tq.Dispatcher, sched: Scheduler
) -> None:
    got: list[pb.Greet] = []
    disp.register_task_class(
        tq.TaskClass(
            id="greet",
            prototype=pb.Greet,
            kind=tq.Kind.TRANSACTIONAL,
            queue="q",
            handler=got.append,
        )
    )
    store = FakeStore()
    with in_txn(store) as txn:
        disp.add_task(tq.Task(payload=pb.Greet(name="committed")))
    assert len(sched.tasks()) == 0  # nothing before the commit
    tq._outbox.after_commit(store, txn.commit())

    (rec,) = sched.tasks()
    assert rec.reminder_id == txn.saved[0].reminder.id
    assert rec.task_id == rec.reminder_id
    sched.run()
    assert got == [pb.Greet(name="committed")]
    assert store.rows == {}


def test_custom_payload_pointing_elsewhere_is_recorded_not_pushed(
    disp: tq.Dispatcher, sched: Scheduler
) -> None:
    called: list[object] = []

    def custom(p: object) -> tq.CustomPayload:
        return tq.CustomPayload(body=b"raw", relative_uri="/hooks/x", meta={"X-K": "v"})

    register(disp, "custom", pb.Blob, custom=custom, handler=called.append)
    disp.add_task(tq.Task(payload=pb.Blob(data=b"d")))
    sched.run()

    (rec,) = sched.tasks().finished()
    assert not rec.pushed
    assert rec.outcome == "not_pushed"
    assert rec.attempts == 0
    assert rec.payload == pb.Blob(data=b"d")
    assert rec.request.task.http_request.url == "https://app.example.com/hooks/x"  # type: ignore[attr-defined]
    assert called == []


def test_app_engine_task_runs_with_app_engine_headers(clock: FakeClock) -> None:
    disp = tq.Dispatcher(cloud_project="p", cloud_region="r", app_engine=True)
    seen: list[tq.ExecutionInfo] = []
    register(
        disp, "greet", pb.Greet, queue="gae", handler=lambda p: seen.append(tq.execution_info())
    )
    with tqtesting.testing_context(disp, clock) as sched:
        disp.add_task(tq.Task(payload=pb.Greet(), title="t1"))
        sched.run()
    assert sched.tasks()[0].request.task.HasField("app_engine_http_request")  # type: ignore[attr-defined]
    assert seen[0].queue == "gae"
    assert seen[0].task_id == sched.tasks()[0].task_id


def test_task_of_a_class_the_dispatcher_does_not_know_fails_with_404(
    disp: tq.Dispatcher, clock: FakeClock
) -> None:
    elsewhere = tq.Dispatcher(cloud_project="proj", cloud_region="r", default_target_host="h")
    register(elsewhere, "greet", pb.Greet)
    with tqtesting.testing_context(disp, clock, retry=RetryConfig(max_attempts=1)) as sched:
        elsewhere.add_task(tq.Task(payload=pb.Greet()))  # goes to the scheduler in context
        with pytest.raises(tqtesting.TaskFailed, match="no task class"):
            sched.run()
    assert sched.tasks()[0].last_status == 404
    assert sched.tasks()[0].payload == pb.Greet()


def test_task_list_filters(disp: tq.Dispatcher, sched: Scheduler) -> None:
    register(disp, "a", pb.Greet, handler=lambda p: None)
    register(disp, "b", pb.Count, handler=lambda p: None)
    disp.add_task(tq.Task(payload=pb.Greet(name="1")), tq.Task(payload=pb.Count(n=2), delay=S))
    sched.run(tqtesting.stop_after_task("a"))
    tasks = sched.tasks()
    assert len(tasks) == 2
    assert [r.class_id for r in tasks] == ["a", "b"]
    assert tasks.of_class("b").payloads() == [pb.Count(n=2)]
    assert tasks.finished().of_class("a").payloads() == [pb.Greet(name="1")]
    assert tasks.pending().of_class("a").payloads() == []
    assert len(tasks[:1]) == 1
    assert isinstance(tasks[:1], tqtesting.TaskList)


def test_submission_with_a_bad_parent_is_invalid_argument(sched: Scheduler) -> None:
    req = tq._request.CreateTaskRequest(parent="emails")
    with pytest.raises(tq.SubmitError) as err:
        sched.submit(tq.Submission(request=req, task_class="x", created=tq.clock.now()))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
