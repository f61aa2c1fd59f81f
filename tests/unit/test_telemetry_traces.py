"""tq's spans, and the trace context carried from add_task to the push."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.trace import StatusCode

import tq
import tqtesting
from sweeper import InProcSweeper
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import RecordingSubmitter, submit_error
from tests.unit._otel import Telemetry, otel_fixture  # noqa: F401 (otel_fixture)
from tq import _envelope, _request
from tq._push import handle_push
from tqtesting import FakeClock, MemoryStore, RetryConfig


def dispatcher(**kw: object) -> tq.Dispatcher:
    return tq.Dispatcher(
        cloud_project="proj",
        cloud_region="us-central1",
        default_target_host="app.example.com",
        **kw,  # type: ignore[arg-type]
    )


def headers_of(sub: tq.Submission) -> dict[str, str]:
    return {k.lower(): v for k, v in _request.http_parts(sub.request)[2].items()}


def test_each_push_of_a_retried_task_links_to_the_span_that_added_it(otel: Telemetry) -> None:
    disp = dispatcher()
    seen: list[int] = []

    @disp.task_class(id="flaky", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    def flaky(p: pb.Greet) -> None:
        seen.append(trace.get_current_span().get_span_context().span_id)
        if len(seen) == 1:
            raise tq.Transient("again")

    with tqtesting.testing_context(disp, retry=RetryConfig()) as sched:
        with otel.tracer.start_as_current_span("request"):
            disp.add_task(tq.Task(payload=pb.Greet(name="x")))
        sched.run(tqtesting.stop_when_drained())

    request, add = otel.span("request"), otel.span("tq.add_task")
    assert add.parent is not None
    assert add.parent.span_id == request.context.span_id
    assert add.kind is trace.SpanKind.PRODUCER
    assert dict(add.attributes or {}) == {
        "tq.tasks": 1,
        "tq.task_class": ("flaky",),
        "tq.transactional": False,
    }
    submit = otel.span("tq.submit")
    assert submit.parent is not None
    assert submit.parent.span_id == add.context.span_id
    pushes = otel.spans("tq.push")
    assert len(pushes) == 2
    for push in pushes:
        assert push.kind is trace.SpanKind.CONSUMER
        assert [link.context.span_id for link in push.links] == [add.context.span_id]
        # No server span around the push here: the push continues the adder's trace.
        assert push.context.trace_id == add.context.trace_id
    assert seen == [p.context.span_id for p in pushes]  # handlers run inside their push span
    failed, ok = pushes
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})["tq.outcome"] == "transient"
    assert (failed.attributes or {})["http.response.status_code"] == 500
    assert [e.name for e in failed.events] == ["exception"]
    assert ok.status.status_code is StatusCode.UNSET
    assert (ok.attributes or {})["tq.outcome"] == "ok"


async def test_push_under_a_server_span_keeps_it_as_parent_and_links_to_the_adder(
    otel: Telemetry,
) -> None:
    cloud = RecordingSubmitter()
    disp = dispatcher(submitter=cloud)

    @disp.task_class(id="g", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    async def handler(p: pb.Greet) -> None:
        pass

    await disp.add_task_async(tq.Task(payload=pb.Greet()))
    headers = headers_of(cloud.submitted[0])
    assert "traceparent" in headers
    _, _, _, body = _request.http_parts(cloud.submitted[0].request)
    with otel.tracer.start_as_current_span("server"):
        assert (await handle_push(disp, "g", headers, body)).status == 200

    add, server, push = otel.span("tq.add_task"), otel.span("server"), otel.span("tq.push")
    assert push.parent is not None
    assert push.parent.span_id == server.context.span_id
    assert [link.context.span_id for link in push.links] == [add.context.span_id]
    assert [link.context.trace_id for link in push.links] == [add.context.trace_id]


async def test_rejected_push_span_is_an_error_naming_the_reason(otel: Telemetry) -> None:
    result = await handle_push(dispatcher(), None, {}, b"{")
    assert result.status == 400
    push = otel.span("tq.push")
    assert push.status.status_code is StatusCode.UNSET  # a 4xx is the caller's fault
    assert (push.attributes or {})["tq.outcome"] == "bad_envelope"
    assert (push.attributes or {})["http.response.status_code"] == 400
    assert push.links == ()


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.ALREADY_EXISTS, StatusCode.UNSET),
        (grpc.StatusCode.NOT_FOUND, StatusCode.ERROR),
    ],
)
def test_submit_span_carries_the_grpc_code(
    otel: Telemetry, code: grpc.StatusCode, status: StatusCode
) -> None:
    disp = dispatcher(submitter=RecordingSubmitter(submit_error(code)))
    disp.register_task_class(
        tq.TaskClass(id="g", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    )
    try:
        disp.add_task(tq.Task(payload=pb.Greet()))
    except tq.SubmitError:
        pass
    submit = otel.span("tq.submit")
    assert (submit.attributes or {})["rpc.grpc.status_code"] == code.name
    assert (submit.attributes or {})["tq.path"] == "direct"
    assert submit.status.status_code is status


def test_trace_context_survives_the_outbox_to_the_sweeper(otel: Telemetry) -> None:
    clock = FakeClock()
    store = MemoryStore()
    cloud = RecordingSubmitter()
    disp = dispatcher(submitter=cloud, sweeper=InProcSweeper(stores=[store], sweep_shards=2))
    disp.register_task_class(
        tq.TaskClass(id="g", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    with tq.clock.use_clock(clock):
        with store.transaction(deadline=clock.now()):
            disp.add_task(tq.Task(payload=pb.Greet()))
        clock.advance(dt.timedelta(minutes=5))
        disp.sweep()

    add = otel.span("tq.add_task")
    assert (add.attributes or {})["tq.transactional"] is True
    post = otel.span("tq.post_commit")
    assert dict(post.attributes or {}) == {"tq.store": "memory", "tq.reminders": 1}
    sweep = otel.span("tq.sweep")
    scans = otel.spans("tq.sweep.scan")
    assert len(scans) == 2
    assert all(s.parent is not None and s.parent.span_id == sweep.context.span_id for s in scans)
    assert sorted((s.attributes or {})["tq.sweep.stale"] for s in scans) == [0, 1]
    submit = otel.span("tq.submit")
    assert submit.parent is not None
    assert submit.parent.span_id == sweep.context.span_id
    assert (submit.attributes or {})["tq.path"] == "sweep"
    assert (submit.attributes or {})["tq.reminder_id"] == cloud.submitted[0].reminder_id
    # The request read back from the reminder still names the span that added it.
    traceparent = headers_of(cloud.submitted[0])["traceparent"]
    assert traceparent.split("-")[1:3] == [
        f"{add.context.trace_id:032x}",
        f"{add.context.span_id:016x}",
    ]


async def test_push_without_trace_headers_starts_its_own_trace(otel: Telemetry) -> None:
    disp = dispatcher()

    @disp.task_class(id="g", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    def handler(p: pb.Greet) -> None:
        pass

    result = await handle_push(disp, "g", {}, _envelope.encode("g", pb.Greet()))
    assert result.status == 200
    push = otel.span("tq.push")
    assert push.parent is None
    assert push.links == ()
    assert (push.attributes or {})["tq.task_class"] == "g"
