"""The service of the crash tests of effectively-once handlers, in a child process or not.

`make(settings)` builds it; a child process gets its settings from the
environment (`app` below, built on import when TQ_ONCE_STORE is set):

    TQ_ONCE_STORE     sqlite | postgres | spanner: where `pay` writes (and, for
                      SQL, the outbox and the database queue)
    TQ_ONCE_DB        the SQLAlchemy URL, or the Spanner database's full name
    TQ_ONCE_QUEUE     the queue of both classes (a full Cloud Tasks name, or a short one)
    TQ_ONCE_CLOUDTASKS host:port of a Cloud Tasks emulator tasks go to (unset:
                      the database queue in TQ_ONCE_DB)
    TQ_ONCE_TARGET    host:port pushes come back to (Cloud Tasks)
    TQ_ONCE_DIE       a path: the process kills itself with SIGKILL right after
                      the first commit of `pay`, leaving its pid in the file; a
                      process started once the file exists does not die
    TQ_ONCE_PUSHES    a path prefix: each push answered is appended to
                      `<prefix>.<pid>` as "<class> <task ID> <pid> <status>"

`pay` is effectively once: it appends a row (its payload's name and the
process ID) to `ledger` (SQL) or `Ledger` (Spanner) and adds a `receipt`
task in its transaction. `receipt` does nothing (its pushes are recorded).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import signal
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.routing import Mount

import tq
import tq.asgi
import tq.txn.sql
from tests.testpb import payloads_pb2 as pb

PAY, RECEIPT = "pay", "receipt"
LEDGER_DDL = "CREATE TABLE IF NOT EXISTS ledger (name TEXT NOT NULL, pid INTEGER NOT NULL)"
SPANNER_LEDGER_DDL = (
    "CREATE TABLE Ledger (ID STRING(MAX) NOT NULL, Name STRING(MAX) NOT NULL, "
    "Pid INT64 NOT NULL) PRIMARY KEY (ID)"
)


@dataclasses.dataclass
class Service:
    app: Any
    dispatcher: tq.Dispatcher
    engine: sa.Engine | None  # SQL: the database of the ledger, outbox and queue
    database: Any  # Spanner: the database of the ledger and outbox


def _die_after_commit(path: str | None) -> None:
    if not path or os.path.exists(path):
        return
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


class _Recorder:
    """Records each push's class, task ID and response status."""

    def __init__(self, app: Any, prefix: str | None) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.prefix:
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        task = headers.get("x-cloudtasks-taskname", "?").rsplit("/", 1)[-1]
        cls = scope["path"].rstrip("/").rsplit("/", 1)[-1]

        async def recording_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                self._record(f"{cls} {task} {os.getpid()} {message['status']}\n")
            await send(message)

        await self.app(scope, receive, recording_send)

    def _record(self, line: str) -> None:
        with open(f"{self.prefix}.{os.getpid()}", "a") as f:  # a line: as good as instant
            f.write(line)


def pushes(prefix: str) -> list[tuple[str, str, int, int]]:
    """Every push recorded under `prefix`: (class, task ID, pid, status)."""
    out = []
    for path in glob.glob(f"{glob.escape(prefix)}.*"):
        with open(path) as f:
            for line in f:
                cls, task, pid, status = line.split()
                out.append((cls, task, int(pid), int(status)))
    return out


def _submitter(settings: Mapping[str, str], engine: sa.Engine | None) -> tq.Submitter:
    endpoint = settings.get("TQ_ONCE_CLOUDTASKS")
    if endpoint:
        return tq.CloudTasksSubmitter(endpoint=endpoint)
    from tq import dbqueue

    assert engine is not None, "the database queue needs a SQL database"
    return dbqueue.DbQueueSubmitter(engine)


def make(settings: Mapping[str, str]) -> Service:
    """The service as `settings` (the environment variables above) describe it."""
    kind, db = settings["TQ_ONCE_STORE"], settings["TQ_ONCE_DB"]
    queue = settings.get("TQ_ONCE_QUEUE", "default")
    die = settings.get("TQ_ONCE_DIE")
    engine: sa.Engine | None = None
    database: Any = None
    if kind == "spanner":
        from tests._services.spanner import open_client
        from tq.txn.spanner import SpannerStore

        _, project, _, instance, _, database_id = db.split("/")
        client = open_client(os.environ["SPANNER_EMULATOR_HOST"], project)
        database = client.instance(instance).database(database_id)
        SpannerStore(database, name="once-spanner")
    else:
        engine = sa.create_engine(
            db, **({"connect_args": {"timeout": 30}} if kind == "sqlite" else {})
        )
        tq.txn.sql.SQLStore(engine, name="once-sql")
    disp = tq.Dispatcher(
        cloud_project="once",
        cloud_region="us-central1",
        default_target_host=settings.get("TQ_ONCE_TARGET", "app.example.com"),
        target_scheme="http",
        submitter=_submitter(settings, engine),
    )
    if database is not None:
        once_pay = tq.txn.spanner.once(database)(_spanner_effects(disp))
    else:
        once_pay = tq.txn.sql.once(sessionmaker(engine))(_sql_effects(disp))

    @disp.task_class(id=PAY, prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue=queue)
    def pay(payload: pb.Greet) -> None:
        once_pay(payload)  # commits (and submits what it added), or finds it done
        _die_after_commit(die)

    @disp.task_class(id=RECEIPT, prototype=pb.Count, kind=tq.Kind.FOLLOWS_CONTEXT, queue=queue)
    def receipt(payload: pb.Count) -> None:
        pass

    recorded = _Recorder(
        tq.asgi.app(disp, auth=tq.asgi.INSECURE_NO_AUTH), settings.get("TQ_ONCE_PUSHES")
    )
    app = Starlette(routes=[Mount("/internal/tasks", app=recorded)])
    return Service(app=app, dispatcher=disp, engine=engine, database=database)


def _sql_effects(disp: tq.Dispatcher) -> Any:
    def effects(payload: pb.Greet, session: Session) -> None:
        session.execute(
            sa.text("INSERT INTO ledger (name, pid) VALUES (:n, :p)"),
            {"n": payload.name, "p": os.getpid()},
        )
        disp.add_task(tq.Task(payload=pb.Count(tag=payload.name)))

    return effects


def _spanner_effects(disp: tq.Dispatcher) -> Any:
    def effects(payload: pb.Greet, transaction: Any) -> None:
        transaction.insert(
            "Ledger", ("ID", "Name", "Pid"), [[os.urandom(8).hex(), payload.name, os.getpid()]]
        )
        disp.add_task(tq.Task(payload=pb.Count(tag=payload.name)))

    return effects


def ledger(service: Service) -> list[tuple[str, int]]:
    """(name, pid) of every committed run of `pay`."""
    if service.engine is not None:
        with service.engine.connect() as conn:
            return sorted(
                (r[0], int(r[1])) for r in conn.exec_driver_sql("SELECT name, pid FROM ledger")
            )
    from google.cloud.spanner_v1 import KeySet

    with service.database.snapshot() as snap:
        rows = snap.read("Ledger", ("Name", "Pid"), KeySet(all_=True))
        return sorted((r[0], int(r[1])) for r in rows)


app: Any = make(os.environ).app if os.environ.get("TQ_ONCE_STORE") else None
