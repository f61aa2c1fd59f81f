"""tq's structured log fields and the JSON formatter."""

from __future__ import annotations

import json
import logging

import grpc
import pytest

import tq
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import RecordingSubmitter, submit_error
from tests.unit._otel import captured
from tq import _envelope
from tq._push import handle_push
from tq.telemetry import JSONFormatter
from tqtesting import MemoryStore

HEADERS = {
    "x-cloudtasks-taskname": "projects/p/locations/l/queues/mail/tasks/t-17",
    "x-cloudtasks-queuename": "mail",
    "x-cloudtasks-taskexecutioncount": "2",
    "x-cloudtasks-taskretrycount": "2",
}


def dispatcher(handler: object, **cls_options: object) -> tq.Dispatcher:
    disp = tq.Dispatcher(
        cloud_project="p", cloud_region="r", default_target_host="h", submitter=RecordingSubmitter()
    )
    disp.register_task_class(
        tq.TaskClass(
            id="c",
            prototype=pb.Greet,
            kind=tq.Kind.FOLLOWS_CONTEXT,
            queue="mail",
            handler=handler,  # type: ignore[arg-type]
            **cls_options,  # type: ignore[arg-type]
        )
    )
    return disp


def boom(p: pb.Greet) -> None:
    raise KeyError("boom")


@pytest.mark.parametrize(("quiet_on_error", "level"), [(False, "ERROR"), (True, "WARNING")])
async def test_handler_error_log_names_class_task_queue_and_attempt(
    caplog: pytest.LogCaptureFixture, quiet_on_error: bool, level: str
) -> None:
    disp = dispatcher(boom, quiet_on_error=quiet_on_error)
    with caplog.at_level(logging.INFO, logger="tq"):
        result = await handle_push(disp, "c", HEADERS, _envelope.encode("c", pb.Greet()))
    assert result.outcome == "error"
    [rec] = [r for r in caplog.records if r.name == "tq.push"]
    assert rec.levelname == level
    assert (rec.tq_class, rec.tq_task, rec.tq_queue, rec.tq_attempt) == ("c", "t-17", "mail", 3)  # type: ignore[attr-defined]
    assert (rec.tq_outcome, rec.tq_status) == ("error", 500)  # type: ignore[attr-defined]


async def test_rejection_log_names_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    disp = dispatcher(boom)
    with caplog.at_level(logging.INFO, logger="tq"):
        await handle_push(disp, None, HEADERS, _envelope.encode("zzz", pb.Greet()))
    [rec] = [r for r in caplog.records if r.name == "tq.push"]
    assert (rec.tq_class, rec.tq_outcome, rec.tq_status) == ("zzz", "unknown_class", 404)  # type: ignore[attr-defined]


@pytest.mark.parametrize("quiet", [False, True])
async def test_payload_bodies_are_logged_only_for_classes_that_are_not_quiet(
    caplog: pytest.LogCaptureFixture, quiet: bool
) -> None:
    disp = dispatcher(lambda p: None, quiet=quiet)
    payload = pb.Greet(name="secret-name")
    with caplog.at_level(logging.DEBUG, logger="tq"):
        disp.add_task(tq.Task(payload=payload))
        await handle_push(disp, "c", HEADERS, _envelope.encode("c", payload))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert ("secret-name" in logged) is not quiet
    if not quiet:
        adding, running = (r for r in caplog.records if "secret-name" in r.getMessage())
        assert (adding.tq_class, adding.tq_queue) == ("c", "mail")  # type: ignore[attr-defined]
        assert (running.tq_task, running.tq_attempt) == ("t-17", 3)  # type: ignore[attr-defined]


def test_parked_reminder_log_names_its_reminder(caplog: pytest.LogCaptureFixture) -> None:
    disp = dispatcher(boom)
    disp.configure(submitter=RecordingSubmitter(submit_error(grpc.StatusCode.PERMISSION_DENIED)))
    store = MemoryStore()
    with caplog.at_level(logging.INFO, logger="tq"), store.transaction():
        disp.add_task(tq.Task(payload=pb.Greet()))
    [parked] = store.reminders()
    [rec] = [r for r in caplog.records if r.name == "tq.outbox"]
    assert rec.levelname == "ERROR"
    assert (rec.tq_class, rec.tq_queue, rec.tq_reminder, rec.tq_task) == (  # type: ignore[attr-defined]
        "c",
        "mail",
        parked.id,
        parked.id,
    )


def record(msg: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("tq.push", logging.WARNING, __file__, 1, msg, args or ("x",), None)
    rec.__dict__.update(extra)
    return rec


def test_json_formatter_writes_message_severity_and_extra_fields() -> None:
    line = JSONFormatter().format(record(tq_class="c", tq_attempt=3, odd=object))
    out = json.loads(line)
    assert "\n" not in line
    assert out["message"] == "hello x"
    assert (out["severity"], out["logger"]) == ("WARNING", "tq.push")
    assert (out["tq_class"], out["tq_attempt"]) == ("c", 3)
    assert out["odd"] == str(object)
    assert out["time"].endswith("+00:00")
    assert "trace_id" not in out
    assert "exception" not in out


def test_json_formatter_writes_the_exception_and_the_current_span() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        rec = record()
        rec.exc_info = sys.exc_info()
    with captured() as otel, otel.tracer.start_as_current_span("s") as span:
        out = json.loads(JSONFormatter(cloud_project="proj").format(rec))
    ctx = span.get_span_context()
    assert "ValueError: bad" in out["exception"]
    assert (out["trace_id"], out["span_id"]) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert out["logging.googleapis.com/trace"] == f"projects/proj/traces/{ctx.trace_id:032x}"
    assert out["logging.googleapis.com/spanId"] == f"{ctx.span_id:016x}"
