"""An app whose orders add a task in a SQLite transaction, for the background-submit tests.

`POST /orders/<name>` writes a row and adds a Greet task named the same in
one transaction (`$TQ_TEST_DB`, a SQLite file). The dispatcher's submitter
stands for a Cloud Tasks that does not answer until the file
`$TQ_TEST_GATE` exists; then it appends each task's name to
`$TQ_TEST_CREATED`. `app` is plain (for `tq serve --happy-path
background`); `app_with_lifespan` starts `tq.BackgroundSubmits` in its
lifespan (for plain uvicorn).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator

import grpc
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import tq
import tq.txn.sql
from tests.testpb import payloads_pb2 as pb

engine = sa.create_engine(f"sqlite:///{os.environ['TQ_TEST_DB']}", connect_args={"timeout": 30})
store = tq.txn.sql.SQLStore(engine, name="background-app")
store.create_schema()
with engine.begin() as _conn:
    _conn.execute(sa.text("CREATE TABLE IF NOT EXISTS orders (name TEXT PRIMARY KEY)"))


class GatedFile:
    """Waits for the gate file, then notes the task as created."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def submit(self, sub: tq.Submission) -> None:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.environ["TQ_TEST_GATE"]):
            if time.monotonic() > deadline:
                raise tq.SubmitError(grpc.StatusCode.UNAVAILABLE, "the gate never opened")
            time.sleep(0.01)
        assert isinstance(sub.payload, pb.Greet)
        with self._lock, open(os.environ["TQ_TEST_CREATED"], "a") as f:
            f.write(sub.payload.name + "\n")

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submit(sub)


dispatcher = tq.Dispatcher(
    cloud_project="p", cloud_region="r", default_target_host="app.example.com",
    submitter=GatedFile(),
)  # fmt: skip
dispatcher.register_task_class(
    tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q")
)


def order(request: Request) -> PlainTextResponse:
    name = request.path_params["name"]
    with tq.txn.sql.transaction(engine, store=store) as conn:
        conn.execute(sa.text("INSERT INTO orders (name) VALUES (:n)"), {"n": name})
        dispatcher.add_task(tq.Task(payload=pb.Greet(name=name)))
    return PlainTextResponse("ok\n")


routes = [Route("/orders/{name}", order, methods=["POST"])]
app = Starlette(routes=routes)


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    async with tq.BackgroundSubmits():
        yield


app_with_lifespan = Starlette(routes=routes, lifespan=_lifespan)
