"""Helpers for the database queue's tests: requests, a recording push target, fixtures."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf import duration_pb2, timestamp_pb2

import tq
from tq import dbqueue
from tq._request import CreateTaskRequest
from tqtesting import FakeClock

PROJECT, REGION = "proj", "us-central1"
URL = "https://app.example.com/internal/tasks/t/greet"


def parent(queue: str) -> str:
    return f"projects/{PROJECT}/locations/{REGION}/queues/{queue}"


def submission(
    *,
    queue: str = "q",
    name: str | None = None,
    url: str = URL,
    body: bytes = b"{}",
    headers: dict[str, str] | None = None,
    eta: dt.datetime | None = None,
    deadline_s: int | None = None,
    oidc: tuple[str, str] | None = None,
    task_class: str = "greet",
) -> tq.Submission:
    """A Submission of a raw HTTP CreateTaskRequest, as a dispatcher would build."""
    req = CreateTaskRequest(parent=parent(queue))
    t = req.task
    if name:
        t.name = f"{parent(queue)}/tasks/{name}"
    h = t.http_request
    h.url = url
    h.http_method = 1  # POST
    h.headers.update(headers or {"Content-Type": "application/json"})
    h.body = body
    if oidc:
        h.oidc_token.service_account_email, h.oidc_token.audience = oidc
    if eta is not None:
        ts = timestamp_pb2.Timestamp()
        ts.FromDatetime(eta)
        t.schedule_time.CopyFrom(ts)
    if deadline_s is not None:
        t.dispatch_deadline.CopyFrom(duration_pb2.Duration(seconds=deadline_s))
    return tq.Submission(request=req, task_class=task_class, created=tq.clock.now())


@dataclasses.dataclass
class Push:
    """One request the recording app received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: bytes = b""

    @property
    def task(self) -> str:
        return self.headers.get("x-cloudtasks-taskname", "")

    @property
    def retry_count(self) -> int:
        return int(self.headers["x-cloudtasks-taskretrycount"])

    @property
    def execution_count(self) -> int:
        return int(self.headers["x-cloudtasks-taskexecutioncount"])


class RecordingApp:
    """An ASGI app that records pushes and answers with scripted statuses.

    `statuses[task name]` is a list of statuses to answer in turn (the last
    one repeats); other tasks get `default`. `hold` (an asyncio.Event) makes
    every push wait until it is set; `arrived` is set when a push comes in.
    `extra_headers` go into every response.
    """

    def __init__(self, default: int = 200) -> None:
        self.default = default
        self.statuses: dict[str, list[int]] = {}
        self.pushes: list[Push] = []
        self.hold: asyncio.Event | None = None
        self.started = 0
        self.arrived = asyncio.Event()  # set when the first push arrives
        self.extra_headers: list[tuple[bytes, bytes]] = []

    def names(self) -> list[str]:
        return [p.task for p in self.pushes]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.started += 1
        self.arrived.set()
        if self.hold is not None:
            await self.hold.wait()
        push = Push(scope["method"], scope["path"], headers, body, scope["query_string"])
        self.pushes.append(push)
        script = self.statuses.get(push.task)
        status = self.default
        if script:
            status = script.pop(0) if len(script) > 1 else script[0]
        await send({"type": "http.response.start", "status": status, "headers": self.extra_headers})
        await send({"type": "http.response.body", "body": b""})


# Fixtures: test modules import the *_fixture functions (marked noqa F401).


@pytest.fixture(name="clock")
def clock_fixture() -> Iterator[FakeClock]:
    """A fake clock in effect for the test, starting at a fixed time."""
    fc = FakeClock()
    with tq.clock.use_clock(fc):
        yield fc


def make_engine(path: pathlib.Path) -> sa.Engine:
    engine = dbqueue.sqlite_engine(path)
    dbqueue.create_schema(engine)
    return engine


@pytest.fixture(name="engine")
def engine_fixture(tmp_path: pathlib.Path) -> Iterator[sa.Engine]:
    """A SQLite database queue in a temporary file."""
    e = make_engine(tmp_path / "queue.db")
    yield e
    e.dispose()


@pytest.fixture(
    name="engine",
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def fidelity_engine_fixture(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> Iterator[sa.Engine]:
    """The queue's Cloud Tasks fidelity tests run on SQLite, PostgreSQL (whose workers
    take their own path, `tq.dbqueue._lease_pg`) and MariaDB."""
    if request.param == "sqlite":
        e = make_engine(tmp_path / "queue.db")
    elif request.param == "postgres":
        e = sa.create_engine(request.getfixturevalue("postgres_db_url"), pool_size=20)
        dbqueue.create_schema(e)
    else:
        e = dbqueue.mysql_engine(request.getfixturevalue("mariadb_db_url"), pool_size=20)
        dbqueue.create_schema(e)
    yield e
    e.dispose()


@pytest.fixture(name="submitter")
def submitter_fixture(engine: sa.Engine) -> dbqueue.DbQueueSubmitter:
    return dbqueue.DbQueueSubmitter(engine)


def task_state(engine: sa.Engine, name: str, queue: str = "q") -> dbqueue.TaskInfo:
    info = dbqueue.Admin(engine).get_task(queue, name)
    assert info is not None, f"no task {queue}/{name}"
    return info


def only_sqlite(engine: sa.Engine, why: str) -> None:
    """Skips a fidelity test that is about SQLite on the other databases."""
    if engine.dialect.name != "sqlite":
        pytest.skip(f"SQLite only: {why}")


async def wait_for(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Polls `cond` until true; fails the test after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.005)
