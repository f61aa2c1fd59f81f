"""The pytest plugin's fixtures, and testing_context()."""

from __future__ import annotations

import datetime as dt

import pytest

import tq
import tqtesting
from tests.testpb import payloads_pb2 as pb
from tqtesting import FakeClock, Scheduler

_DISP = tq.Dispatcher(cloud_project="proj", cloud_region="r", default_target_host="h")
_GOT: list[pb.Greet] = []
_DISP.register_task_class(
    tq.TaskClass(
        id="greet",
        prototype=pb.Greet,
        kind=tq.Kind.NON_TRANSACTIONAL,
        queue="default",
        handler=_GOT.append,
    )
)


@pytest.fixture
def tq_dispatcher() -> tq.Dispatcher:
    _GOT.clear()
    return _DISP


def test_scheduler_fixture_receives_tasks_of_the_overridden_dispatcher(
    tq_scheduler: Scheduler, tq_clock: FakeClock
) -> None:
    assert tq_scheduler.dispatcher is _DISP
    assert tq_scheduler.clock is tq_clock
    _DISP.add_task(tq.Task(payload=pb.Greet(name="ada"), delay=dt.timedelta(hours=1)))
    start = tq_clock.now()
    tq_scheduler.run(tqtesting.stop_when_drained())
    assert tq_scheduler.tasks().finished().payloads() == [pb.Greet(name="ada")]
    assert [pb.Greet(name="ada")] == _GOT
    assert tq_clock.now() == start + dt.timedelta(hours=1)


def test_clock_fixture_is_the_current_clock(tq_clock: FakeClock) -> None:
    assert tq.clock.current() is tq_clock
    tq_clock.advance(5)
    assert tq.clock.now() == tq_clock.now()


async def test_fixtures_work_in_async_tests(tq_scheduler: Scheduler) -> None:
    assert tq.current_submitter() is tq_scheduler
    await _DISP.add_task_async(tq.Task(payload=pb.Greet(name="async")))
    await tq_scheduler.run_async()
    assert [pb.Greet(name="async")] == _GOT


def test_plugin_is_loaded_by_entry_point_and_uses_tq_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
        import tq, tqtesting
        from tests.testpb import payloads_pb2 as pb

        tq.default.configure(cloud_project="p", cloud_region="r", default_target_host="h")
        GOT = []
        tq.default.register_task_class(tq.TaskClass(
            id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q",
            handler=GOT.append))

        def test_signup(tq_scheduler, tq_dispatcher, tq_clock):
            assert tq_dispatcher is tq.default and tq_scheduler.dispatcher is tq.default
            tq.add_task(tq.Task(payload=pb.Greet(name="ada")))
            tq_scheduler.run(tqtesting.stop_when_drained())
            assert tq_scheduler.tasks().finished().payloads() == [pb.Greet(name="ada")]
            assert GOT == [pb.Greet(name="ada")]
        """
    )
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=1)


def test_testing_context_restores_submitter_and_clock() -> None:
    before_clock = tq.clock.current()
    with tqtesting.testing_context(_DISP) as sched:
        assert tq.current_submitter() is sched
        assert isinstance(tq.clock.current(), FakeClock)
        assert sched.dispatcher is _DISP
    assert tq.current_submitter() is None
    assert tq.clock.current() is before_clock


def test_testing_context_defaults_to_tq_default() -> None:
    with tqtesting.testing_context() as sched:
        assert sched.dispatcher is tq.default
