"""One replica of the service in the replica and fault scenarios (run under uvicorn).

    TQ_CHAOS_DB=postgresql+psycopg://... TQ_CHAOS_CERTS_URL=... TQ_CHAOS_TARGET=host:port \\
        python -m uvicorn tests.chaos._replica_app:app --workers 4

* `POST /burst` with `{"keys": [...]}` commits one transaction per key: a
  row in `chaos_orders` and a TRANSACTIONAL task `deliver(key)` (the outbox
  in the same PostgreSQL). Answers which keys committed.
* The push endpoint (`/internal/tasks`, OIDC authentication on) runs
  `deliver`, which records the delivery in `chaos_deliveries`.
* Tasks leave through the database queue, but not written in the caller's
  transaction: the outbox's happy path submits them after the commit, so
  that sweepers have work. `TQ_CHAOS_STUCK_RATE` of the tasks (chosen by
  reminder ID) fail every happy-path submit: half before the task is
  created (UNAVAILABLE), half after (DEADLINE_EXCEEDED, the caller cannot
  tell). Their reminders go stale after `TQ_CHAOS_FRESH_S` (the
  transaction's deadline) and the sweepers submit them; for the second
  half the task name absorbs the second submission.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from typing import Any

import anyio
import grpc
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import tq
import tq.asgi
import tq.txn.sql
from tests.chaos._tables import deliveries, events, make_engine, orders
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue

PUSHER = "tq-chaos@p.iam.gserviceaccount.com"
QUEUE = "chaos"


class StuckSubmits:
    """The database queue, with the happy path of some tasks failing for good."""

    def __init__(self, inner: dbqueue.DbQueueSubmitter, engine: sa.Engine, rate: float) -> None:
        self._inner = inner
        self._engine = engine
        self._rate = rate

    def _note(self, kind: str, reminder: str) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(events.insert().values(kind=kind, reminder=reminder))
        except sa.exc.SQLAlchemyError:
            pass  # the database is down: the figure misses one event

    def submit(self, sub: tq.Submission) -> None:
        rid = sub.reminder_id or ""
        share = int(rid[:8], 16) / 2**32 if rid else 1.0
        if share < self._rate / 2:
            self._note("failed_before_create", rid)
            raise tq.SubmitError(grpc.StatusCode.UNAVAILABLE, "injected before create")
        if share < self._rate:
            try:
                self._inner.submit(sub)
            except tq.SubmitError as e:
                if not e.already_exists:
                    raise
            self._note("failed_after_create", rid)
            raise tq.SubmitError(grpc.StatusCode.DEADLINE_EXCEEDED, "injected after create")
        self._inner.submit(sub)

    async def submit_async(self, sub: tq.Submission) -> None:
        await asyncio.to_thread(self.submit, sub)


DB_URL = os.environ["TQ_CHAOS_DB"]
engine = make_engine(DB_URL, pool_size=5, max_overflow=10)
store = tq.txn.sql.SQLStore(engine, name="chaos")
fresh_s = float(os.environ.get("TQ_CHAOS_FRESH_S", "1"))
dispatcher = tq.Dispatcher(
    cloud_project="chaos",
    cloud_region="local",
    default_target_host=os.environ["TQ_CHAOS_TARGET"],
    target_scheme="http",
    push_as=PUSHER,
    submitter=StuckSubmits(
        dbqueue.DbQueueSubmitter(engine),
        engine,
        float(os.environ.get("TQ_CHAOS_STUCK_RATE", "0")),
    ),
)


@dispatcher.task_class(id="deliver", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue=QUEUE)
def deliver(payload: pb.Greet) -> None:
    info = tq.execution_info()
    with engine.begin() as conn:
        conn.execute(
            deliveries.insert().values(
                key=payload.name, task=info.task_id, retry=info.retry_count, pid=os.getpid()
            )
        )


def commit_one(key: str) -> bool:
    deadline = tq.clock.now() + dt.timedelta(seconds=fresh_s)
    try:
        with tq.txn.sql.transaction(engine, store=store, deadline=deadline) as conn:
            conn.execute(orders.insert().values(key=key))
            dispatcher.add_task(tq.Task(payload=pb.Greet(name=key)))
    except sa.exc.SQLAlchemyError:
        return False  # e.g. the database restarted: the test reads what committed
    return True


def burst(request_keys: list[str]) -> dict[str, Any]:
    done = [k for k in request_keys if commit_one(k)]
    return {"committed": done}


async def burst_endpoint(request: Request) -> JSONResponse:
    keys = (await request.json())["keys"]
    return JSONResponse(await anyio.to_thread.run_sync(burst, keys))


app = Starlette(
    routes=[
        Route("/burst", burst_endpoint, methods=["POST"]),
        Mount(
            "/internal/tasks",
            app=tq.asgi.app(dispatcher, certs_url=os.environ["TQ_CHAOS_CERTS_URL"]),
        ),
    ]
)
