"""The database queue end to end in one process: a Dispatcher, the real push endpoint
(`tq.asgi`), handlers, OIDC tokens, and transactional tasks delivered after commit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.routing import Mount

import tq
import tq.asgi
import tq.txn.sql
from tests._dbqueue import (
    PROJECT,
    REGION,
    fidelity_engine_fixture,  # noqa: F401
    task_state,
    wait_for,
)
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tq.dbqueue import State
from tqtesting.oidc import LocalIssuer

PUSHER = "tq@proj.iam.gserviceaccount.com"


class Handlers:
    """Greet handlers that record what they saw; Fail raises what its payload names."""

    def __init__(self) -> None:
        self.seen: list[tuple[Message, tq.ExecutionInfo]] = []
        self.event = asyncio.Event()

    async def greet(self, payload: pb.Greet) -> None:
        self.seen.append((payload, tq.execution_info()))
        self.event.set()

    def fail(self, payload: pb.Fail) -> None:  # a sync handler, run in a thread
        raise {"fatal": tq.Fatal, "ignore": tq.Ignore, "retry": tq.Retry}.get(
            payload.how, RuntimeError
        )(payload.how)


def build(engine: sa.Engine, *, push_as: str | None = None, auth: Any = None) -> Any:
    disp = tq.Dispatcher(
        cloud_project=PROJECT,
        cloud_region=REGION,
        default_target_host="app.example.com",
        push_as=push_as,
        submitter=dbqueue.DbQueueSubmitter(engine),
    )
    h = Handlers()
    disp.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue="mail")(
        h.greet
    )
    disp.task_class(id="fail", prototype=pb.Fail, kind=tq.Kind.NON_TRANSACTIONAL, queue="mail")(
        h.fail
    )
    push = tq.asgi.app(disp, auth=auth if auth is not None else tq.asgi.INSECURE_NO_AUTH)
    app = Starlette(routes=[Mount("/internal/tasks", push)])
    return disp, h, app


async def test_added_tasks_reach_their_handlers_through_the_push_endpoint(
    engine: sa.Engine,
) -> None:
    disp, h, app = build(engine)
    await disp.add_task_async(tq.Task(pb.Greet(name="ada"), title="hello"))
    async with dbqueue.Worker(engine, app=app) as w:
        assert await w.run_once() == 1
    ((payload, info),) = h.seen
    assert payload == pb.Greet(name="ada")
    assert (info.task_class, info.queue, info.execution_count, info.retry_count) == (
        "greet",
        "mail",
        0,
        0,
    )
    assert task_state(engine, info.task_id, queue="mail").state is State.DONE


@pytest.mark.parametrize(
    ("how", "status", "state"),
    [
        ("fatal", 202, State.DONE),
        ("ignore", 204, State.DONE),
        ("retry", 429, State.PENDING),
        ("boom", 500, State.PENDING),
    ],
)
async def test_handler_outcomes_finish_or_retry_the_task(
    engine: sa.Engine, how: str, status: int, state: State
) -> None:
    disp, _, app = build(engine)
    disp.add_task(tq.Task(pb.Fail(how=how), deduplication_key=how))
    async with dbqueue.Worker(engine, app=app) as w:
        await w.run_once()
    (info,) = dbqueue.Admin(engine).list_tasks()
    assert (info.state, info.last_status) == (state, status)


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as i:
        yield i


async def test_signed_pushes_pass_the_endpoints_token_check(
    engine: sa.Engine, issuer: LocalIssuer
) -> None:
    verifier = tq.asgi.OIDCVerifier(issuer.certs_url)
    disp, h, app = build(engine, push_as=PUSHER, auth=verifier)
    minted: list[tuple[str, str]] = []

    def sign(email: str, audience: str) -> str:
        minted.append((email, audience))
        return issuer.mint(email=email, audience=audience)

    await disp.add_task_async(tq.Task(pb.Greet(name="signed")))
    async with dbqueue.Worker(engine, app=app, signer=sign) as w:
        assert await w.run_once() == 1
    assert [p for p, _ in h.seen] == [pb.Greet(name="signed")]
    assert minted == [(PUSHER, "https://app.example.com")]


async def test_unsigned_pushes_are_refused_and_retried(
    engine: sa.Engine, issuer: LocalIssuer
) -> None:
    verifier = tq.asgi.OIDCVerifier(issuer.certs_url)
    disp, h, app = build(engine, push_as=PUSHER, auth=verifier)
    await disp.add_task_async(tq.Task(pb.Greet(name="unsigned")))
    async with dbqueue.Worker(engine, app=app) as w:  # no signer
        await w.run_once()
    assert h.seen == []
    (info,) = dbqueue.Admin(engine).list_tasks()
    assert (info.state, info.last_status) == (State.PENDING, 403)


async def test_a_committed_transactional_task_is_pushed_by_the_running_worker(
    engine: sa.Engine,
) -> None:
    store = tq.txn.sql.SQLStore(engine, name="dbqueue-e2e")
    store.create_schema()
    disp, h, app = build(engine)
    worker = dbqueue.Worker(engine, app=app, poll_interval=3600)  # only wakeups help
    await worker.start()
    try:
        with tq.txn.sql.transaction(engine):
            disp.add_task(tq.Task(pb.Greet(name="after commit")))
        await asyncio.wait_for(h.event.wait(), 30)
        admin = dbqueue.Admin(engine)
        await wait_for(lambda: admin.count_tasks(state=State.DONE) == 1)
    finally:
        await worker.aclose()
        store.close()
    assert [p for p, _ in h.seen] == [pb.Greet(name="after commit")]
