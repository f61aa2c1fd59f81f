"""The failure effectively-once handlers exist for, with real processes.

The handler's transaction commits, then its process dies (SIGKILL) before
the queue sees the response; the queue delivers the task again, and the
redelivery must answer 200 without repeating the effects:

* the database queue: a `python -m tq.dbqueue worker` process dies after
  the commit; another worker redelivers once the dead one's lease expires;
* Cloud Tasks (its emulator): the app under uvicorn dies after the commit;
  the emulator's retry reaches the restarted app.

On SQLite and PostgreSQL (the handler, the outbox and the database queue
in one database), and with the handler on the Spanner emulator behind
Cloud Tasks. The app is tests/_once_apps.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import tq
import tq.txn.sql
from tests import _once_apps
from tests._services.cloudtasks import CloudTasksEmulator, free_port, run_emulator
from tests.testpb import payloads_pb2 as pb
from tq import _metrics, dbqueue
from tqtesting import FakeClock

ROOT = Path(__file__).resolve().parents[2]
KILLED = -signal.SIGKILL
TIMEOUT_S = 120.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_db(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(kind, SQLAlchemy URL) of an empty database with tq's tables and the ledger."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/once.db"
    else:
        url = request.getfixturevalue("postgres_db_url")
    engine = sa.create_engine(url)
    try:
        tq.txn.sql.create_schema(engine)
        dbqueue.create_schema(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql(_once_apps.LEDGER_DDL)
        if request.param == "sqlite":
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()
    return request.param, url


@pytest.fixture
def service_closer() -> Iterator[list[_once_apps.Service]]:
    made: list[_once_apps.Service] = []
    yield made
    for s in made:
        for store in list(tq.txn.stores()):
            if store.name.startswith("once-"):
                tq.txn.unregister_store(store.name)
        if s.engine is not None:
            s.engine.dispose()


def _child_env(settings: dict[str, str], extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(settings)
    env.update(extra or {})
    env["NO_PROXY"] = env["no_proxy"] = "*"
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _died(path: Path) -> int:
    assert path.exists(), "the child died before its handler's commit"
    return int(path.read_text())


# The database queue.


async def test_dbqueue_redelivery_after_a_worker_killed_past_the_commit_runs_nothing(
    sql_db: tuple[str, str], tmp_path: Path, service_closer: list[_once_apps.Service]
) -> None:
    kind, url = sql_db
    settings = {
        "TQ_ONCE_STORE": kind, "TQ_ONCE_DB": url, "TQ_ONCE_QUEUE": "once",
        "TQ_ONCE_PUSHES": str(tmp_path / "pushes"),
    }  # fmt: skip
    service = _once_apps.make(settings)  # this process's: it never dies
    service_closer.append(service)
    assert service.engine is not None
    service.dispatcher.add_task(tq.Task(payload=pb.Greet(name="ada")))

    died = tmp_path / "died"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tq.dbqueue", "--db", url, "worker",
        "--app", "tests._once_apps:app", "--poll-interval", "0.02",
        cwd=ROOT, env=_child_env(settings, {"TQ_ONCE_DIE": str(died)}),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    assert proc.returncode == KILLED, err.decode(errors="replace")[-3000:]
    dead = _died(died)
    assert _once_apps.ledger(service) == [("ada", dead)]  # the effects committed, then death

    admin = dbqueue.Admin(service.engine)
    (pay,) = admin.list_tasks(task_class=_once_apps.PAY)
    assert pay.state is dbqueue.State.LEASED  # Cloud Tasks semantics: the worker never answered
    assert pay.lease_expires is not None
    found_before = _metrics.value("tq_markers_found", task_class=_once_apps.PAY)

    clock = FakeClock(pay.lease_expires)
    with tq.clock.use_clock(clock):
        async with dbqueue.Worker(service.engine, app=service.app) as worker:
            # The lease expires, the task is retried after its backoff; a receipt
            # the dead worker had leased too (a moment after the pay task, however
            # long that moment was on a loaded machine) expires later.
            for _ in range(600):  # ends as soon as both are done
                clock.advance(1)
                await worker.run_once()
                if admin.count_tasks(state=dbqueue.State.DONE) == 2:
                    break
    (pay,) = admin.list_tasks(task_class=_once_apps.PAY)
    assert pay.state is dbqueue.State.DONE
    assert _once_apps.ledger(service) == [("ada", dead)]  # not run again
    assert _metrics.value("tq_markers_found", task_class=_once_apps.PAY) == found_before + 1
    (receipt,) = admin.list_tasks(task_class=_once_apps.RECEIPT)  # added once, by the dead run
    assert receipt.state is dbqueue.State.DONE
    answered = [(c, pid, s) for c, _, pid, s in _once_apps.pushes(settings["TQ_ONCE_PUSHES"])]
    assert (_once_apps.PAY, os.getpid(), 200) in answered
    # The dead worker never answered the pay push. (The receipt its commit
    # added may have been pushed and answered by it in the moment before it
    # died: the worker's loop runs beside the handler's thread.)
    assert all(pid != dead for c, pid, _ in answered if c == _once_apps.PAY)


# Cloud Tasks (the emulator) and uvicorn.


@pytest.fixture(scope="module")
def patient_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudTasksEmulator]:
    """An emulator of our own that retries a failed push (every ~0.1 s) for minutes."""
    log = tmp_path_factory.mktemp("once-emulator") / "emulator.log"
    with run_emulator(log, max_retries=5000) as emu:
        yield emu


class _Server:
    """`python -m tests._once_serve PORT`, started ahead and told when to serve."""

    def __init__(self, port: int, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests._once_serve", str(port)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._out,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until imported (or dead)
        assert line.strip() == b"ready", self.tail()

    def serve(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()

    def tail(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        for pipe in (self.proc.stdin, self.proc.stdout, self._out):
            if pipe is not None:
                pipe.close()


def _wait(condition: Any, what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _cloudtasks_crash(
    settings: dict[str, str],
    child_extra: dict[str, str],
    emu: CloudTasksEmulator,
    tmp_path: Path,
    service_closer: list[_once_apps.Service],
) -> None:
    port = free_port()
    queue = emu.create_queue("once")
    settings = {
        **settings, "TQ_ONCE_QUEUE": queue, "TQ_ONCE_CLOUDTASKS": emu.endpoint,
        "TQ_ONCE_TARGET": f"127.0.0.1:{port}", "TQ_ONCE_PUSHES": str(tmp_path / "pushes"),
    }  # fmt: skip
    died = tmp_path / "died"
    env = _child_env(settings, {"TQ_ONCE_DIE": str(died), **child_extra})
    first = _Server(port, env, tmp_path / "first.log")
    second = _Server(port, env, tmp_path / "second.log")  # the restart, imported ahead
    service = _once_apps.make(settings)  # adds the task; never serves
    service_closer.append(service)
    try:
        first.serve()
        service.dispatcher.add_task(tq.Task(payload=pb.Greet(name="ada")))
        first.proc.wait(TIMEOUT_S)
        assert first.proc.returncode == KILLED, first.tail()
        dead = _died(died)
        assert _once_apps.ledger(service) == [("ada", dead)]
        second.serve()  # the emulator keeps retrying the push: now it lands here

        def answered(cls: str) -> list[tuple[int, int]]:
            return [
                (p, s) for c, _, p, s in _once_apps.pushes(settings["TQ_ONCE_PUSHES"]) if c == cls
            ]

        _wait(lambda: (second.proc.pid, 200) in answered(_once_apps.PAY), "the redelivery's 200")
        _wait(lambda: bool(answered(_once_apps.RECEIPT)), "the receipt's push")
        assert _once_apps.ledger(service) == [("ada", dead)]  # not run again
        assert answered(_once_apps.PAY) == [(second.proc.pid, 200)]  # the dead one answered none
        # The receipt was submitted by the dead run's happy path, once; the
        # emulator delivers it to whichever process serves then.
        assert [s for _, s in answered(_once_apps.RECEIPT)] == [200]
    finally:
        emu.retire_queue(queue)
        first.stop()
        second.stop()


@pytest.mark.cloudtasks
def test_cloudtasks_retry_after_the_app_killed_past_the_commit_runs_nothing(
    sql_db: tuple[str, str],
    patient_emulator: CloudTasksEmulator,
    tmp_path: Path,
    service_closer: list[_once_apps.Service],
) -> None:
    kind, url = sql_db
    _cloudtasks_crash(
        {"TQ_ONCE_STORE": kind, "TQ_ONCE_DB": url}, {}, patient_emulator, tmp_path, service_closer
    )


@pytest.mark.cloudtasks
@pytest.mark.spanner
def test_cloudtasks_retry_after_the_app_killed_past_a_spanner_commit_runs_nothing(
    spanner_emulator: Any,
    patient_emulator: CloudTasksEmulator,
    tmp_path: Path,
    service_closer: list[_once_apps.Service],
) -> None:
    db = spanner_emulator.create_database([_once_apps.SPANNER_LEDGER_DDL])
    name = f"projects/{spanner_emulator.project}/instances/{spanner_emulator.instance.instance_id}"
    try:
        _cloudtasks_crash(
            {"TQ_ONCE_STORE": "spanner", "TQ_ONCE_DB": f"{name}/databases/{db.database_id}"},
            spanner_emulator.env,
            patient_emulator,
            tmp_path,
            service_closer,
        )
    finally:
        spanner_emulator.drop_database(db)
