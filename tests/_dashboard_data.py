"""A database holding tasks in every state, reminders and parked reminders, for the dashboard.

Everything is made through tq's own paths: `add_task` on the database queue,
workers delivering through the push endpoint (done, failed), a pull queue's
lease (leased), the admin's delete (deleted), a refusing submitter on the
outbox (waiting and parked reminders), and a worker firing a cron class.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
from typing import Any

import grpc
import sqlalchemy as sa

import tq
import tq.asgi
import tq.txn.sql
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tq.cron import Cron

QUEUE = "emails"  # greet tasks in every state
PULL = "pulled"  # a pull queue holding a leased task
REPORTS = "reports"  # the cron class's queue
QUIET = "quiet"  # a paused queue


@dataclasses.dataclass
class Data:
    """What `populate` made: names to look for on the pages."""

    dispatcher: tq.Dispatcher
    store: tq.txn.sql.SQLStore
    names: dict[str, str]  # state -> the name of one task in that state (of QUEUE)
    leased: str  # the leased task of PULL (priority 5, tag batch-a)
    finished: str  # a task of PULL completed with a result
    waiting_reminders: list[str]
    parked_reminders: list[str]


def dispatcher(engine: sa.Engine) -> tq.Dispatcher:
    d = tq.Dispatcher(cloud_project="demo", cloud_region="local",
                      default_target_host="app.test", target_scheme="http",
                      submitter=dbqueue.DbQueueSubmitter(engine))  # fmt: skip
    d.register_task_class(tq.TaskClass(id="greet", prototype=pb.Greet, queue=QUEUE,
                                       kind=tq.Kind.FOLLOWS_CONTEXT))  # fmt: skip
    d.register_task_class(tq.TaskClass(id="pulled", prototype=pb.Blob, queue=PULL,
                                       kind=tq.Kind.NON_TRANSACTIONAL))  # fmt: skip
    d.register_task_class(tq.TaskClass(id="report", prototype=pb.Count, queue=REPORTS,
                                       kind=tq.Kind.NON_TRANSACTIONAL,
                                       schedule=Cron("*/5 * * * *"),
                                       schedule_payload=pb.Count(n=1)))  # fmt: skip

    def greet(payload: pb.Greet) -> None:
        if payload.name.startswith("fail"):
            raise tq.Transient("refused on purpose")

    d.attach_handler("greet", greet)
    d.attach_handler("report", lambda payload: None)
    return d


class _Refusing:
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    def submit(self, sub: tq.Submission) -> None:
        raise tq.SubmitError(self.code, "refused on purpose")

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submit(sub)


def create(engine: sa.Engine) -> tq.txn.sql.SQLStore:
    dbqueue.create_schema(engine)
    store = tq.txn.sql.SQLStore(engine, register=False)
    store.create_schema()
    dbqueue.apply_queues(engine, [
        dbqueue.QueueConfig(QUEUE, max_attempts=1), dbqueue.QueueConfig(PULL, pull=True),
        dbqueue.QueueConfig(REPORTS), dbqueue.QueueConfig(QUIET),
    ])  # fmt: skip
    dbqueue.Admin(engine).pause_queue(QUIET)
    return store


def populate(engine: sa.Engine, *, waiting: int = 3) -> Data:
    """Tasks in every state in QUEUE (and `waiting` more waiting), reminders, a cron row."""
    store = create(engine)
    d = dispatcher(engine)
    admin = dbqueue.Admin(engine)
    d.add_task(tq.Task(payload=pb.Greet(name="done-1"), title="done-1"))
    d.add_task(tq.Task(payload=pb.Greet(name="fail-1"), title="fail-1"))
    d.add_task(tq.Task(payload=pb.Blob(data=b"pulled"), priority=5, tag="batch-a"))
    d.add_task(tq.Task(payload=pb.Blob(data=b"finished")))
    # In a thread of its own: the caller may be inside an event loop (Playwright's).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _deliver(engine, d)).result()  # done-1 done, fail-1 failed
    pull = dbqueue.PullQueue(engine, PULL)
    leased, finished = pull.lease(2, dt.timedelta(hours=1))  # the higher priority first
    assert pull.complete(finished, result='{"rows": 3}')
    later = dt.timedelta(hours=2)
    for i in range(waiting):
        d.add_task(tq.Task(payload=pb.Greet(name=f"wait-{i}"), delay=later + dt.timedelta(
            seconds=i), title=f"wait-{i}"))  # fmt: skip
    d.add_task(tq.Task(payload=pb.Greet(name="doomed"), delay=later, title="doomed"))
    by_title = {t.url.rsplit("/", 1)[-1]: t for t in admin.list_tasks(queue=QUEUE, limit=10**6)}
    assert admin.delete_task(QUEUE, by_title["doomed"].name)
    names = {
        "done": by_title["done-1"].name,
        "failed": by_title["fail-1"].name,
        "pending": by_title["wait-0"].name,
        "deleted": by_title["doomed"].name,
    }
    waiting_ids = _remind(engine, store, d, grpc.StatusCode.UNAVAILABLE, ["late-1", "late-2"])
    parked_ids = _remind(engine, store, d, grpc.StatusCode.NOT_FOUND, ["lost-1", "lost-2"])
    return Data(d, store, names, leased.name, finished.name, waiting_ids, parked_ids)


async def _deliver(engine: sa.Engine, d: tq.Dispatcher) -> None:
    app = tq.asgi.app(d, auth=tq.asgi.INSECURE_NO_AUTH)
    async with dbqueue.Worker(engine, app=app, dispatcher=d) as w:
        await w.run_once()


def _remind(engine: sa.Engine, store: tq.txn.sql.SQLStore, d: tq.Dispatcher,
            code: grpc.StatusCode, names: list[str]) -> list[str]:  # fmt: skip
    refusing = tq.Dispatcher(cloud_project="demo", cloud_region="local",
                             default_target_host="app.test", submitter=_Refusing(code))  # fmt: skip
    refusing.register_task_class(tq.TaskClass(id="greet", prototype=pb.Greet, queue=QUEUE,
                                              kind=tq.Kind.TRANSACTIONAL))  # fmt: skip
    before = {r.id for r in _all(store)}
    with tq.txn.sql.transaction(engine, store=store):
        for n in names:
            refusing.add_task(tq.Task(payload=pb.Greet(name=n)))
    return sorted({r.id for r in _all(store)} - before)


def _all(store: tq.txn.sql.SQLStore) -> list[Any]:
    from tq.admin import OutboxAdmin

    admin = OutboxAdmin([store])
    return [c.reminder for c in admin.choose_parked(None)[0]] + [
        r for k in admin.keys(store, 10**6) for r in store.fetch_reminders([k.id])
    ]


def add_waiting(engine: sa.Engine, n: int, *, batch: int = 1000) -> None:
    """`n` more waiting tasks in QUEUE, fast (for the 10,000-task page)."""
    d = dispatcher(engine)
    store = tq.txn.sql.SQLStore(engine, register=False)
    later = dt.timedelta(hours=3)
    done = 0
    while done < n:
        k = min(batch, n - done)
        with tq.txn.sql.transaction(engine, store=store):
            for i in range(done, done + k):
                d.add_task(tq.Task(payload=pb.Greet(name=f"bulk-{i}"), delay=later,
                                   title=f"bulk-{i}"))  # fmt: skip
        done += k
