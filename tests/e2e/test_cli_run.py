"""The tq command's long-running subcommands as real processes: dev, serve, worker, sweep --loop.

Each test starts `tq` as a subprocess (real uvicorn on loopback where it
serves), talks to it over HTTP, stops it with a signal and checks its exit
code. Waits poll with bounded deadlines.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import sqlalchemy as sa

import tq
import tq.txn.sql
import tqtesting
from examples.orders.db import make_engine
from examples.orders.service import OrdersService
from tests.testpb import payloads_pb2 as pb
from tq.cli._main import cli

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0
APP = "examples.orders.main:app"


class Proc:
    """A `tq` subprocess whose stderr lines are collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tq.cli", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str) -> re.Match[str]:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(line)
            m = re.search(pattern, line)
            if m:
                return m
        raise AssertionError(f"tq {self.args}: no {pattern!r} in:\n{''.join(self.seen)}")

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        finally:
            self.drain()

    def drain(self) -> str:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Proc:
        p = Proc(*args, env=env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


def poll(check: Callable[[], Any], what: str) -> Any:
    """`check()`'s first truthy result, within DEADLINE_S."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # poll interval, bounded by the deadline


def test_dev_serves_the_app_and_runs_its_tasks_with_auth_off(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    db = tmp_path / "dev.db"
    p = procs("dev", APP, "--port", "0", "--db", str(db), "--sweep-interval", "3600")
    base = "http://" + p.wait_for(r"serving \S+ on http://(\S+);").group(1)
    banner = "".join(p.seen)
    assert "AUTHENTICATION OFF" in banner

    with httpx.Client(base_url=base, timeout=10) as client:
        order = client.post("/orders", json={"email": "ada@example.com", "item": "tea"}).json()
        client.post("/countdown", json={"n": 3, "chain": "c"})
        poll(lambda: client.get(f"/orders/{order['id']}").json()["confirmed"], "confirmation")
        poll(lambda: client.get("/countdown/c").json()["steps"] == [3, 2, 1, 0], "the chain")
        # The push endpoint takes pushes without a token in dev.
        forged = client.post("/internal/tasks/t/count-down", json={})
        assert forged.status_code == 400  # not 403: no authentication, a bad body

    # On the database queue the workers fire the daily report's cron schedule.
    from tq.cli._databases import sql_engine
    from tq.dbqueue import cron_states

    engine = sql_engine(str(db))
    try:
        assert [(s.name, s.schedule) for s in cron_states(engine)] == [
            ("daily-report", "5 0 * * *")
        ]
    finally:
        engine.dispose()

    assert p.stop(signal.SIGINT) == 0
    assert "tq dev: stopped" in p.drain()
    result = _cli("tasks", "list", "--db", str(db), "--json")
    assert {json.loads(line)["state"] for line in result.splitlines()} == {"done"}


def test_dev_refuses_an_app_it_cannot_import(procs: Callable[..., Proc]) -> None:
    p = procs("dev", "no_such_module:app", "--port", "0")
    p.proc.wait(60)
    assert p.proc.returncode == 3
    assert "tq: error: cannot import app module 'no_such_module'" in p.drain()


def test_serve_configures_the_dispatcher_from_the_environment_and_keeps_auth_on(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    db = tmp_path / "serve.db"
    _cli("db", "init", "--db", str(db))
    env = {"TQ_DATABASE_URL": str(db), "TQ_TARGET_HOST": "orders.example.com",
           "TQ_PUSH_AS": "tq@p.iam.gserviceaccount.com", "TQ_PORT": "0"}  # fmt: skip
    p = procs("serve", APP, "--cloud-project", "p", "--cloud-region", "r", "--backend", "dbqueue",
              env=env)  # fmt: skip
    base = "http://" + p.wait_for(r"on http://(\S+)").group(1)

    with httpx.Client(base_url=base, timeout=10) as client:
        assert (
            client.post("/orders", json={"email": "a@example.com", "item": "x"}).status_code == 201
        )
        unsigned = client.post("/internal/tasks/t/send-confirmation/x", json={})
        assert unsigned.status_code == 403

    assert p.stop(signal.SIGTERM) == 0
    (task,) = [json.loads(x) for x in _cli("tasks", "list", "--db", str(db), "--json").splitlines()]
    assert task["url"] == "https://orders.example.com/internal/tasks/t/send-confirmation/order-1"
    assert task["state"] == "pending"


def test_serve_with_workers_runs_the_orders_example_end_to_end(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    # docs/cli.md, "tq serve": the two commands as written there.
    db = str(tmp_path / "orders.db")
    _cli("db", "init", "--db", db)
    p = procs("serve", APP, "--db", db, "--with-workers", env={"TQ_PORT": "0"})
    base = "http://" + p.wait_for(r"on http://(\S+);").group(1)

    with httpx.Client(base_url=base, timeout=10) as client:
        order = client.post("/orders", json={"email": "ada@example.com", "item": "tea"})
        assert order.status_code == 201
        client.post("/countdown", json={"n": 2, "chain": "c"})
        poll(lambda: client.get(f"/orders/{order.json()['id']}").json()["confirmed"],
             "the confirmation, pushed in-process by the workers")  # fmt: skip
        poll(lambda: client.get("/countdown/c").json()["steps"] == [2, 1, 0], "the chain")
        # Over HTTP the app's own authentication still holds.
        unsigned = client.post("/internal/tasks/t/count-down/x", json={})
        assert unsigned.status_code == 403

    assert p.stop(signal.SIGTERM) == 0
    assert "WITHOUT AUTHENTICATION" not in p.drain()
    done = [json.loads(x) for x in _cli("tasks", "list", "--db", db, "--json").splitlines()]
    assert len(done) == 4  # the confirmation and three steps of the chain
    assert {t["state"] for t in done} == {"done"}
    assert {t["attempts"] for t in done} == {1}  # no push was refused and retried


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--with-workers"], "--db URL"),
        (["--with-workers", "--db", "{db}", "--cloud-project", "p"], "--backend dbqueue"),
        ([], "--cloud-project and --cloud-region"),
        (["--cloud-project", "p", "--cloud-region", "r"], "--target-host"),
        (["--db", "{db}", "--cloud-project", "p", "--cloud-region", "r"], "--target-host"),
        (["--db", "{empty}", "--with-workers"], "tq db init"),
    ],
)
def test_serve_refusals_name_the_flag_that_fixes_them(
    tmp_path: Path, args: list[str], flag: str
) -> None:
    db, empty = str(tmp_path / "orders.db"), str(tmp_path / "empty.db")
    _cli("db", "init", "--db", db)
    argv = [a.format(db=db, empty=empty) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "tq.cli", "serve", APP, "--port", "0", *argv],
        cwd=ROOT, env={**os.environ, "TQ_DATABASE_URL": "", "PORT": ""}, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("tq: error: ")
    assert flag in line


@pytest.fixture(params=["sqlite", "postgres"])
def orders_db(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, OrdersService]]:
    """An orders database with one order whose confirmation waits in the database queue."""
    from tq.cli._databases import sql_engine
    from tq.dbqueue import DbQueueSubmitter, create_schema

    if request.param == "sqlite":
        db = str(tmp_path / "orders.db")
        url = f"sqlite:///{db}"
    else:
        db = url = request.getfixturevalue("postgres_db_url")
    queue_engine = sql_engine(db)
    create_schema(queue_engine)
    service = OrdersService(make_engine(url))
    service.dispatcher.configure(
        cloud_project="p", cloud_region="r", default_target_host="orders.internal",
        target_scheme="http", submitter=DbQueueSubmitter(queue_engine),
    )  # fmt: skip
    service.create_schema()
    service.place_order("ada@example.com", "tea", 1)
    try:
        yield db, service
    finally:
        service.close()
        queue_engine.dispose()


def _confirmed(service: OrdersService) -> bool:
    order = service.get_order(1)
    return order is not None and order.confirmed_at is not None


def test_worker_until_idle_pushes_into_the_app_in_process(
    procs: Callable[..., Proc], orders_db: tuple[str, OrdersService]
) -> None:
    db, service = orders_db
    # The app in the worker process reads TQ_DATABASE_URL, exported from --db.
    p = procs("worker", "--db", db, "--app", APP, "--insecure-no-auth", "--until-idle")
    assert p.proc.wait(DEADLINE_S) == 0, p.drain()
    assert "1 pushes, nothing due" in p.drain()
    assert _confirmed(service)


def test_worker_pushes_over_http_to_push_url(
    procs: Callable[..., Proc], orders_db: tuple[str, OrdersService], serve_app: Any
) -> None:
    from tq.cli._server import InsecurePushFront

    db, service = orders_db
    from examples.orders.web import create_app

    served = serve_app(InsecurePushFront(create_app(service), service.dispatcher))
    p = procs("worker", "--db", db, "--push-url", served.url)
    p.wait_for("worker\\(s\\) running")
    poll(lambda: _confirmed(service), "the confirmation pushed over HTTP")
    assert p.stop(signal.SIGTERM) == 0
    assert "tq worker: stopped" in p.drain()


def test_sweep_loop_submits_stale_reminders_until_stopped(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    db = tmp_path / "sweep.db"
    _cli("db", "init", "--db", str(db))
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        _add_stale_reminder(engine)
    finally:
        engine.dispose()
    p = procs("sweep", "--loop", "--db", str(db), "--backend", "dbqueue", "--sweep-interval",
              "0.2", "--sweep-shards", "2")  # fmt: skip

    poll(lambda: _cli("tasks", "list", "--db", str(db), "--json").strip(), "the swept task")

    assert p.stop(signal.SIGTERM) == 0
    assert "stopped after" in p.drain()


def _add_stale_reminder(engine: sa.Engine) -> None:
    class Down:
        def submit(self, sub: tq.Submission) -> None:
            raise tq.SubmitError(grpc.StatusCode.UNAVAILABLE, "down")

        async def submit_async(self, sub: tq.Submission) -> None:
            self.submit(sub)

    d = tq.Dispatcher(
        cloud_project="p", cloud_region="r", default_target_host="h", submitter=Down()
    )
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    store = tq.txn.sql.SQLStore(engine, register=False)
    past = tqtesting.FakeClock(tq.clock.now() - dt.timedelta(minutes=5))
    with tq.clock.use_clock(past), tq.txn.sql.transaction(engine, store=store):
        d.add_task(tq.Task(payload=pb.Greet(name="late")))


def _cli(*args: str) -> str:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout
