"""tq's metrics after whole scenarios, read from OpenTelemetry's in-memory reader."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

import tq
import tqtesting
from sweeper import InProcSweeper
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import RecordingSubmitter, submit_error
from tests.unit._otel import Telemetry, otel_fixture  # noqa: F401 (otel_fixture)
from tq import _envelope, _metrics
from tq._push import handle_push
from tqtesting import FakeClock, MemoryStore, RetryConfig

S = dt.timedelta(seconds=1)


def dispatcher(**kw: object) -> tq.Dispatcher:
    return tq.Dispatcher(
        cloud_project="proj",
        cloud_region="us-central1",
        default_target_host="app.example.com",
        **kw,  # type: ignore[arg-type]
    )


def test_retried_task_counts_each_attempt_with_its_result_and_latency(otel: Telemetry) -> None:
    disp = dispatcher()
    attempts: list[int] = []

    @disp.task_class(id="flaky", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="mail")
    def flaky(p: pb.Greet) -> None:
        attempts.append(tq.execution_info().execution_count)
        running = _metrics.observed("tq_pushes_running")
        assert (1.0, {"task_class": "flaky"}) in running, "the running gauge counts this handler"
        if len(attempts) == 1:
            raise tq.Transient("try again")

    backoff = dt.timedelta(seconds=7)
    retry = RetryConfig(min_backoff=backoff, max_backoff=backoff)
    with tqtesting.testing_context(disp, retry=retry) as sched:
        disp.add_task(tq.Task(payload=pb.Greet(name="ada")))
        sched.run(tqtesting.stop_when_drained())

    assert attempts == [0, 1]
    handled = "tq_pushes_handled"
    first = {"task_class": "flaky", "queue": "mail"}
    assert otel.value(handled, **first, result="transient", retry="false") == 1
    assert otel.value(handled, **first, result="ok", retry="true") == 1
    assert otel.value(handled) == 2
    # The expected ETA stays the add time, so the retry's latency includes the backoff.
    ok = otel.point("tq_push_latency", **first, result="ok")
    failed = otel.point("tq_push_latency", **first, result="transient")
    assert (ok.count, ok.sum) == (1, backoff.total_seconds())
    assert (failed.count, failed.sum) == (1, 0.0)
    assert otel.point("tq_push_duration", result="ok").count == 1
    assert otel.value("tq_pushes_running", task_class="flaky") == 0
    submits = otel.point("tq_submits", task_class="flaky", queue="mail", path="direct", code="OK")
    assert submits.value == 1
    assert otel.point("tq_submit_duration", path="direct", code="OK").count == 1
    for name in (handled, "tq_push_latency", "tq_push_duration", "tq_submit_duration"):
        assert otel.unit(name) == _metrics.BY_NAME[name].unit


async def test_rejected_push_is_counted_by_reason_and_runs_nothing(otel: Telemetry) -> None:
    disp = dispatcher()
    disp.register_task_class(
        tq.TaskClass(id="c", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    )
    bad = await handle_push(disp, "c", {}, b"not json")
    unknown = await handle_push(disp, None, {}, _envelope.encode("nope", pb.Greet()))
    no_handler = await handle_push(disp, None, {}, _envelope.encode("c", pb.Greet()))

    assert [bad.status, unknown.status, no_handler.status] == [400, 404, 404]
    assert otel.value("tq_pushes_rejected", reason="bad_envelope") == 1
    assert otel.value("tq_pushes_rejected", reason="unknown_class") == 1
    assert otel.value("tq_pushes_rejected", reason="no_handler") == 1
    assert otel.points("tq_pushes_handled") == []
    assert otel.points("tq_push_duration") == []


def test_swept_reminder_is_counted_as_stale_then_processed_on_the_sweep_path(
    otel: Telemetry, clock: FakeClock
) -> None:
    store = MemoryStore()
    cloud = RecordingSubmitter()
    disp = dispatcher(submitter=cloud, sweeper=InProcSweeper(stores=[store], sweep_shards=2))
    disp.register_task_class(
        tq.TaskClass(id="g", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    # A deadline now caps fresh_until at the add time: stale by commit, left to the sweeper.
    with store.transaction(deadline=clock.now()):
        disp.add_task(tq.Task(payload=pb.Greet(name="late")))
    assert cloud.submitted == []
    clock.advance(90 * S)
    disp.sweep()

    assert len(cloud.submitted) == 1
    assert store.reminders() == []
    assert otel.value("tq_reminders_created", task_class="g", staleness="stale") == 1
    assert otel.value("tq_reminders_created", staleness="fresh") == 0
    assert otel.value("tq_reminders_processed", task_class="g", path="sweep") == 1
    assert otel.value("tq_reminders_processed", path="happy") == 0
    latency = otel.point("tq_reminders_latency", task_class="g", path="sweep")
    staleness = otel.point("tq_reminders_staleness", task_class="g")
    assert (latency.count, latency.sum) == (1, 90.0)
    assert (staleness.count, staleness.sum) == (1, 90.0)
    assert otel.value("tq_submits", task_class="g", queue="q", path="sweep", code="OK") == 1
    assert otel.value("tq_sweep_scans", store="memory", result="ok") == 2  # one per shard
    assert otel.point("tq_sweep_scan_duration", store="memory", result="ok").count == 2
    assert otel.value("tq_sweep_scanned", store="memory", staleness="stale") == 1
    assert otel.value("tq_sweep_scanned", store="memory", staleness="fresh") == 0
    assert otel.value("tq_sweeps", mode="inproc") == 1
    assert otel.point("tq_sweep_duration", mode="inproc").count == 1


async def test_happy_path_counts_fresh_reminders_and_their_latency(
    otel: Telemetry, clock: FakeClock
) -> None:
    store = MemoryStore()
    cloud = RecordingSubmitter()
    disp = dispatcher(submitter=cloud)
    disp.register_task_class(
        tq.TaskClass(id="g", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    async with store.transaction_async():
        await disp.add_task_async(tq.Task(payload=pb.Greet(name="a")))
        await disp.add_task_async(tq.Task(payload=pb.Greet(name="b")))
        clock.advance(2 * S)  # the transaction takes a while; the reminders stay fresh

    assert len(cloud.submitted) == 2
    assert otel.value("tq_reminders_created", task_class="g", staleness="fresh") == 2
    assert otel.value("tq_reminders_processed", task_class="g", path="happy") == 2
    latency = otel.point("tq_reminders_latency", path="happy")
    assert (latency.count, latency.sum) == (2, 4.0)
    assert otel.value("tq_submits", path="happy", code="OK") == 2


@pytest.mark.parametrize(
    ("code", "raises"),
    [(grpc.StatusCode.ALREADY_EXISTS, False), (grpc.StatusCode.NOT_FOUND, True)],
)
def test_direct_submit_is_counted_with_its_grpc_code(
    otel: Telemetry, code: grpc.StatusCode, raises: bool
) -> None:
    disp = dispatcher(submitter=RecordingSubmitter(submit_error(code)))
    disp.register_task_class(
        tq.TaskClass(id="g", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    )
    if raises:
        with pytest.raises(tq.SubmitError):
            disp.add_task(tq.Task(payload=pb.Greet()))
    else:
        disp.add_task(tq.Task(payload=pb.Greet()))
    assert otel.value("tq_submits", task_class="g", path="direct", code=code.name) == 1
    assert otel.point("tq_submit_duration", code=code.name).count == 1
    assert otel.value("tq_submits", code="OK") == 0


def test_parked_reminder_is_counted_with_the_submit_code(otel: Telemetry) -> None:
    store = MemoryStore()
    disp = dispatcher(submitter=RecordingSubmitter(submit_error(grpc.StatusCode.NOT_FOUND)))
    disp.register_task_class(
        tq.TaskClass(id="g", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    with store.transaction():
        disp.add_task(tq.Task(payload=pb.Greet()))
    assert [r.parked for r in store.reminders()] == [True]
    assert otel.value("tq_reminders_parked", task_class="g", code="NOT_FOUND") == 1
    assert otel.value("tq_submits", path="happy", code="NOT_FOUND") == 1
    assert otel.value("tq_reminders_processed") == 0


def test_tally_counts_without_an_sdk_whatever_the_label_order() -> None:
    before = _metrics.value("tq_submits", task_class="tally")
    _metrics.add("tq_submits", task_class="tally", queue="q", path="direct", code="OK")
    _metrics.add("tq_submits", 2, code="OK", path="direct", queue="q", task_class="tally")
    assert _metrics.value("tq_submits", task_class="tally") == before + 3
    assert _metrics.value("tq_submits", code="OK", task_class="tally") == before + 3
    labels = (("code", "OK"), ("path", "direct"), ("queue", "q"), ("task_class", "tally"))
    assert _metrics.snapshot()[("tq_submits", labels)] == before + 3
