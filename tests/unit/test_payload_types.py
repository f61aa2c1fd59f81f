"""Every registrable payload type round-trips through the push path.

The envelope's `body` is the payload's proto JSON whatever its JSON kind
(a string for StringValue, a number for Int32Value, a list for ListValue,
null for a null Value...): each well-known type is added and delivered to
its handler through `tqtesting.Scheduler` and through the database queue
(SQLite, workers pushing into `tq.asgi.app`). The Cloud Tasks emulator's
run is in tests/e2e/test_payload_types_e2e.py.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from google.protobuf import empty_pb2, struct_pb2, timestamp_pb2, wrappers_pb2
from starlette.applications import Starlette
from starlette.routing import Mount

import tq
import tq.asgi
import tqtesting
from tests._dbqueue import PROJECT, REGION, engine_fixture  # noqa: F401
from tests._payload_types import SAMPLES, class_of, register_all
from tests.testpb import payloads_pb2 as pb
from tq import _envelope, dbqueue
from tq._envelope import EnvelopeError


@pytest.mark.parametrize("sample", SAMPLES)
def test_payload_type_round_trips_through_the_scheduler(sample: str) -> None:
    disp = tq.Dispatcher(cloud_project="p", cloud_region="r", default_target_host="h")
    received = register_all(disp, "q")
    sched = tqtesting.Scheduler(disp)
    with tq.use_submitter(sched):
        disp.add_task(tq.Task(payload=SAMPLES[sample]))
    sched.run(tqtesting.stop_when_drained())
    assert sched.tasks().finished().payloads() == [SAMPLES[sample]]
    assert received.of(class_of(sample)) == [SAMPLES[sample]]


@pytest.mark.parametrize("sample", SAMPLES)
async def test_payload_type_round_trips_through_the_database_queue(
    sample: str, engine: sa.Engine
) -> None:
    disp = tq.Dispatcher(
        cloud_project=PROJECT, cloud_region=REGION, default_target_host="app.example.com",
        submitter=dbqueue.DbQueueSubmitter(engine),
    )  # fmt: skip
    received = register_all(disp, "q")
    push = tq.asgi.app(disp, auth=tq.asgi.INSECURE_NO_AUTH)
    app = Starlette(routes=[Mount("/internal/tasks", push)])
    await disp.add_task_async(tq.Task(payload=SAMPLES[sample]))
    async with dbqueue.Worker(engine, app=app) as w:
        assert await w.run_until_idle() == 1
    assert received.of(class_of(sample)) == [SAMPLES[sample]]
    [task] = dbqueue.Admin(engine).list_tasks()
    assert task.state is dbqueue.State.DONE


@pytest.mark.parametrize(
    ("payload", "body"),
    [
        (wrappers_pb2.StringValue(value="x"), '"x"'),
        (wrappers_pb2.Int64Value(value=5), '"5"'),
        (wrappers_pb2.BoolValue(value=False), "false"),
        (struct_pb2.Value(null_value=struct_pb2.NULL_VALUE), "null"),
        (timestamp_pb2.Timestamp(seconds=1), '"1970-01-01T00:00:01Z"'),
        (empty_pb2.Empty(), "{}"),
    ],
)
def test_the_envelope_body_is_the_proto_json_of_any_kind(payload: object, body: str) -> None:
    raw = _envelope.encode("c", payload)  # type: ignore[arg-type]
    assert json.loads(raw)["body"] == json.loads(body)
    _, _, js = _envelope.peek(raw)
    assert _envelope.decode_body(js, type(payload)) == payload  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "prototype"),
    [
        ("abc", pb.Greet),  # json_format would take a string as an empty message
        ([], empty_pb2.Empty),
        (None, pb.Greet),
        (3, struct_pb2.Struct),
        ({"value": "x"}, wrappers_pb2.StringValue),
        ("yesterday", timestamp_pb2.Timestamp),
        ({}, struct_pb2.ListValue),
    ],
)
def test_a_body_of_the_wrong_json_kind_for_its_type_is_refused(
    body: object, prototype: type
) -> None:
    with pytest.raises(EnvelopeError, match="not a valid"):
        _envelope.decode_body(body, prototype)
