"""Results of pushed tasks, on SQLite, PostgreSQL and MariaDB: what a handler
returns travels back in the push response and is kept with the task; an error
response's body is kept as the failure."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.routing import Mount

import tq
import tq.asgi
from tests._dbengines import any_engine_fixture  # noqa: F401
from tests._dbqueue import PROJECT, REGION, task_state
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tq.dbqueue import State


def build(engine: sa.Engine, greet: Any) -> tuple[tq.Dispatcher, Starlette]:
    disp = tq.Dispatcher(
        cloud_project=PROJECT, cloud_region=REGION, default_target_host="app.example.com",
        submitter=dbqueue.DbQueueSubmitter(engine),
    )  # fmt: skip
    disp.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")(
        greet
    )
    push = tq.asgi.app(disp, auth=tq.asgi.INSECURE_NO_AUTH)
    return disp, Starlette(routes=[Mount("/internal/tasks", push)])


def only_name(engine: sa.Engine) -> str:
    (info,) = dbqueue.Admin(engine).list_tasks(queue="q")
    return info.name


async def test_what_a_handler_returns_is_kept_as_the_tasks_result(engine: sa.Engine) -> None:
    async def greet(payload: pb.Greet) -> str:
        return f"hello {payload.name}"

    disp, app = build(engine, greet)
    await disp.add_task_async(tq.Task(pb.Greet(name="ada")))
    async with dbqueue.Worker(engine, app=app) as w:
        assert await w.run_once() == 1
    info = task_state(engine, only_name(engine))
    assert (info.state, info.result) == (State.DONE, b"hello ada")


async def test_a_sync_handler_returning_bytes_and_one_returning_nothing(
    engine: sa.Engine,
) -> None:
    def greet(payload: pb.Greet) -> bytes | None:
        return b"\x00\x01" if payload.name == "bytes" else None

    disp, app = build(engine, greet)
    await disp.add_task_async(
        tq.Task(pb.Greet(name="bytes"), deduplication_key="a"),
        tq.Task(pb.Greet(name="none"), deduplication_key="b"),
    )
    async with dbqueue.Worker(engine, app=app) as w:
        assert await w.run_once() == 2
    results = {t.name: (t.state, t.result) for t in dbqueue.Admin(engine).list_tasks(queue="q")}
    assert sorted(results.values(), key=repr) == sorted(
        [(State.DONE, b"\x00\x01"), (State.DONE, None)], key=repr
    )


async def test_an_error_response_is_kept_as_the_failure(engine: sa.Engine) -> None:
    async def greet(payload: pb.Greet) -> None:
        raise tq.Transient("not yet")

    disp, app = build(engine, greet)
    await disp.add_task_async(tq.Task(pb.Greet(name="x")))
    async with dbqueue.Worker(engine, app=app) as w:
        await w.run_once()
    info = task_state(engine, only_name(engine))
    assert (info.state, info.last_error, info.failure) == (
        State.PENDING,
        "HTTP 500",
        b"transient\n",
    )


async def test_a_result_over_the_limit_is_not_kept_and_the_task_is_done(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    async def greet(payload: pb.Greet) -> bytes:
        return b"x" * (64 * 1024 + 1)

    disp, app = build(engine, greet)
    await disp.add_task_async(tq.Task(pb.Greet(name="x")))
    with caplog.at_level(logging.WARNING, logger="tq.dbqueue"):
        async with dbqueue.Worker(engine, app=app) as w:
            assert await w.run_once() == 1
    info = task_state(engine, only_name(engine))
    assert (info.state, info.result) == (State.DONE, None)
    assert "not kept" in caplog.text
