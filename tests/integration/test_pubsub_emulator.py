"""Topic classes against the real Pub/Sub emulator: the outbox publishes, subscribers receive.

The outbox is SQLite through tq.txn.sql; messages go out through
`tq.pubsub.Publisher` and come back by pull (the emulator's client API), by
the pull worker (`tq.pubsub.Subscriber`), or pushed by the emulator into
`tq.pubsub.app` served by uvicorn (the emulator sends no token, so that app
runs without authentication; tokens are tested in tests/unit/test_pubsub_push.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import tq
import tq.pubsub
import tq.txn.sql
from sweeper import InProcSweeper
from tests._services.pubsub import PubSubEmulator
from tests._services.uvicorn_server import ServedApp
from tests.testpb import payloads_pb2 as pb
from tq import _metrics, _outbox
from tq.txn.sql import SQLStore
from tqtesting import FakeClock

WAIT_S = 30.0


@pytest.fixture
def engine(tmp_path: object) -> Iterator[sa.Engine]:
    eng = sa.create_engine(f"sqlite:///{tmp_path}/outbox.db")
    with eng.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id TEXT PRIMARY KEY)"))
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> Iterator[SQLStore]:
    s = SQLStore(engine, name="pubsub-outbox", register=False)
    s.create_schema()
    yield s
    s.close()


@pytest.fixture
def publisher(pubsub_emulator: PubSubEmulator) -> Iterator[tq.pubsub.Publisher]:
    with tq.pubsub.Publisher(endpoint=pubsub_emulator.endpoint) as p:
        yield p


def dispatcher(
    emu: PubSubEmulator, topic: str, submitter: tq.Submitter | None = None, **handlers: Any
) -> tq.Dispatcher:
    d = tq.Dispatcher(cloud_project=emu.project, submitter=submitter)
    short = topic.rsplit("/", 1)[-1]
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, topic=short)
    )
    d.register_task_class(
        tq.TaskClass(id="count", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, topic=short)
    )
    for class_id, handler in handlers.items():
        d.attach_handler(class_id, handler)
    return d


def classes(messages: list[Any]) -> list[str]:
    return [m.attributes["tq_class"] for m in messages]


def wait_for(cond: Callable[[], bool], what: str) -> None:
    ev = threading.Event()
    for _ in range(int(WAIT_S / 0.05)):
        if cond():
            return
        ev.wait(0.05)  # poll interval, bounded by WAIT_S
    raise AssertionError(f"timed out waiting for {what}")


def test_committed_publish_reaches_each_subscription_once(
    pubsub_emulator: PubSubEmulator,
    engine: sa.Engine,
    store: SQLStore,
    publisher: tq.pubsub.Publisher,
) -> None:
    topic = pubsub_emulator.create_topic("orders")
    subs = [pubsub_emulator.create_subscription(topic, p) for p in ("billing", "mailer", "audit")]
    d = dispatcher(pubsub_emulator, topic, tq.Router(topics=publisher))
    with tq.txn.sql.transaction(engine, store=store) as conn:
        conn.execute(sa.text("INSERT INTO orders VALUES ('o-1')"))
        d.add_task(tq.Task(payload=pb.Greet(name="o-1")))
    assert store.count_reminders() == (0, 0)  # published and deleted after the commit
    for sub in subs:
        got = pubsub_emulator.pull(sub, expect=1)
        assert classes(got) == ["greet"], sub
        assert json.loads(got[0].data)["body"] == {"name": "o-1"}
        assert len(got[0].attributes["tq_task_id"]) == 32


def test_add_task_returns_the_message_id_pubsub_gave_and_a_transactional_add_its_task_id(
    pubsub_emulator: PubSubEmulator,
    engine: sa.Engine,
    store: SQLStore,
    publisher: tq.pubsub.Publisher,
) -> None:
    topic = pubsub_emulator.create_topic("handles")
    sub = pubsub_emulator.create_subscription(topic)
    d = dispatcher(pubsub_emulator, topic, tq.Router(topics=publisher))
    (now,) = d.add_task(tq.Task(payload=pb.Count(n=1)))
    with tq.txn.sql.transaction(engine, store=store):
        (later,) = d.add_task(tq.Task(payload=pb.Greet(name="after commit")))
    by_class = {m.attributes["tq_class"]: m for m in pubsub_emulator.pull(sub, expect=2)}
    assert now.name == f"{topic}/messages/{by_class['count'].message_id}"
    assert now.task_id == by_class["count"].message_id
    assert (now.existed, now.reminder_id) == (False, None)
    # Published after the commit: no message ID yet when add_task returned;
    # the reminder ID, the message's tq_task_id attribute, is its handle.
    assert (later.name, later.existed) == (None, None)
    assert later.reminder_id == by_class["greet"].attributes["tq_task_id"]


def test_rolled_back_publish_reaches_no_subscription(
    pubsub_emulator: PubSubEmulator,
    engine: sa.Engine,
    store: SQLStore,
    publisher: tq.pubsub.Publisher,
) -> None:
    topic = pubsub_emulator.create_topic("orders")
    sub = pubsub_emulator.create_subscription(topic)
    d = dispatcher(pubsub_emulator, topic, tq.Router(topics=publisher))

    def add_then_fail() -> None:
        with tq.txn.sql.transaction(engine, store=store):
            d.add_task(tq.Task(payload=pb.Greet(name="never")))
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        add_then_fail()
    d.add_task(tq.Task(payload=pb.Count(n=1)))  # a marker published after it
    got: list[Any] = []

    def marker_came() -> bool:
        got.extend(pubsub_emulator.pull(sub, wait_s=0.5))
        return "count" in classes(got)

    wait_for(marker_came, "the marker")
    assert classes(got) == ["count"]
    assert store.count_reminders() == (0, 0)


def test_crash_after_commit_is_swept_and_published(
    pubsub_emulator: PubSubEmulator,
    engine: sa.Engine,
    store: SQLStore,
    publisher: tq.pubsub.Publisher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = pubsub_emulator.create_topic("orders")
    sub = pubsub_emulator.create_subscription(topic)
    d = dispatcher(pubsub_emulator, topic, tq.Router(topics=publisher))
    # The process "dies" between the commit and the happy path.
    monkeypatch.setattr(_outbox, "after_commit", lambda store, pending: None)
    with tq.txn.sql.transaction(engine, store=store):
        d.add_task(tq.Task(payload=pb.Greet(name="survivor")))
    monkeypatch.undo()
    ((key,),) = [store.fetch_reminder_keys("0" * 32, "g", 10)]
    assert pubsub_emulator.pull(sub, wait_s=0.5) == []  # nothing published yet
    clock = FakeClock(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))  # past fresh_until
    with tq.clock.use_clock(clock):
        InProcSweeper(stores=[store]).sweep(d)
    got = pubsub_emulator.pull(sub, expect=1)
    assert classes(got) == ["greet"]
    assert got[0].attributes["tq_task_id"] == key.id  # the reminder ID: the dedup key
    assert store.count_reminders() == (0, 0)


def test_missing_topic_parks_the_reminder(
    pubsub_emulator: PubSubEmulator,
    engine: sa.Engine,
    store: SQLStore,
    publisher: tq.pubsub.Publisher,
) -> None:
    d = dispatcher(pubsub_emulator, f"projects/{pubsub_emulator.project}/topics/never-made")
    d.configure(submitter=tq.Router(topics=publisher))
    with tq.txn.sql.transaction(engine, store=store):
        d.add_task(tq.Task(payload=pb.Greet(name="lost?")))
    assert store.count_reminders() == (0, 1)  # parked (NOT_FOUND), never deleted
    (parked,) = store.list_parked(10)
    assert parked.submission().topic.endswith("/never-made")


def test_pull_worker_redelivers_a_failed_message_and_acks_unknown_classes(
    pubsub_emulator: PubSubEmulator, publisher: tq.pubsub.Publisher
) -> None:
    topic = pubsub_emulator.create_topic("work")
    sub = pubsub_emulator.create_subscription(topic, "worker")
    seen: list[tuple[str, str]] = []

    def greet(p: pb.Greet) -> None:
        info = tq.execution_info()
        seen.append((p.name, info.task_id))
        if len(seen) == 1:
            raise tq.Transient("first attempt fails")

    consumer = tq.Dispatcher(cloud_project=pubsub_emulator.project)
    consumer.task_class(
        id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL,
        topic=topic.rsplit("/", 1)[-1],
    )(greet)  # fmt: skip
    producer = dispatcher(pubsub_emulator, topic, tq.Router(topics=publisher))
    before = _metrics.value("tq_pushes_rejected", reason="unknown_class")
    producer.add_task(tq.Task(payload=pb.Count(n=7)))  # "count": unknown to the consumer
    producer.add_task(tq.Task(payload=pb.Greet(name="again")))

    async def run() -> int:
        worker = tq.pubsub.Subscriber(consumer, sub, endpoint=pubsub_emulator.endpoint)
        await worker.start()
        try:
            for _ in range(int(WAIT_S / 0.05)):
                if len(seen) >= 2 and worker.handled >= 3:
                    break
                await asyncio.sleep(0.05)  # poll interval, bounded by WAIT_S
        finally:
            await worker.stop()
        return worker.handled

    handled = asyncio.run(run())
    assert [name for name, _ in seen] == ["again", "again"]  # redelivered after the nack
    assert seen[0][1] == seen[1][1]  # the same tq_task_id on both deliveries
    assert handled == 3
    assert _metrics.value("tq_pushes_rejected", reason="unknown_class") == before + 1
    assert pubsub_emulator.pull(sub, wait_s=1.0) == []  # both acked: nothing left


def test_push_subscription_redelivers_until_the_handler_succeeds(
    pubsub_emulator: PubSubEmulator, publisher: tq.pubsub.Publisher
) -> None:
    topic = pubsub_emulator.create_topic("pushed")
    attempts: list[str] = []
    done = threading.Event()

    def greet(p: pb.Greet) -> None:
        attempts.append(tq.execution_info().subscription)
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        done.set()

    consumer = tq.Dispatcher(cloud_project=pubsub_emulator.project)
    consumer.task_class(
        id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL,
        topic=topic.rsplit("/", 1)[-1],
    )(greet)  # fmt: skip
    app = tq.pubsub.app(consumer, auth=tq.asgi.INSECURE_NO_AUTH)
    with ServedApp(app) as served:
        sub = pubsub_emulator.create_subscription(
            topic, "pushsub", push_endpoint=f"{served.url}/push"
        )
        producer = dispatcher(pubsub_emulator, topic, tq.Router(topics=publisher))
        producer.add_task(tq.Task(payload=pb.Greet(name="persist")))
        assert done.wait(WAIT_S)
    assert attempts == [sub.rsplit("/", 1)[-1]] * 3


def test_async_add_task_publishes_in_and_out_of_a_transaction(
    pubsub_emulator: PubSubEmulator,
    engine: sa.Engine,
    store: SQLStore,
    publisher: tq.pubsub.Publisher,
) -> None:
    topic = pubsub_emulator.create_topic("async")
    sub = pubsub_emulator.create_subscription(topic)
    d = dispatcher(pubsub_emulator, topic, tq.Router(topics=publisher))

    async def main() -> None:
        from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

        await d.add_task_async(tq.Task(payload=pb.Count(n=1)))
        aengine = create_async_engine(str(engine.url).replace("sqlite:", "sqlite+aiosqlite:"))
        try:
            async with tq.txn.sql.transaction_async(async_sessionmaker(aengine), store=store):
                await d.add_task_async(tq.Task(payload=pb.Greet(name="in txn")))
        finally:
            await aengine.dispose()

    asyncio.run(main())
    assert sorted(classes(pubsub_emulator.pull(sub, expect=2))) == ["count", "greet"]
    assert store.count_reminders() == (0, 0)


def test_pull_worker_stops_gracefully_finishing_the_running_handler(
    pubsub_emulator: PubSubEmulator, publisher: tq.pubsub.Publisher
) -> None:
    topic = pubsub_emulator.create_topic("graceful")
    sub = pubsub_emulator.create_subscription(topic, "slow", ack_deadline_s=60)
    started, finished = threading.Event(), []
    release = threading.Event()

    def greet(p: pb.Greet) -> None:
        started.set()
        release.wait(WAIT_S)  # still running when stop() is called
        finished.append(p.name)

    consumer = tq.Dispatcher(cloud_project=pubsub_emulator.project)
    consumer.task_class(
        id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL,
        topic=topic.rsplit("/", 1)[-1],
    )(greet)  # fmt: skip
    producer = dispatcher(pubsub_emulator, topic, tq.Router(topics=publisher))
    producer.add_task(tq.Task(payload=pb.Greet(name="slow one")))

    async def run() -> None:
        worker = tq.pubsub.Subscriber(consumer, sub, endpoint=pubsub_emulator.endpoint)
        await worker.start()
        assert await asyncio.to_thread(started.wait, WAIT_S)
        stopping = asyncio.ensure_future(worker.stop())
        await asyncio.sleep(0.2)  # stop() is waiting for the handler
        assert not stopping.done()
        release.set()
        await asyncio.wait_for(stopping, WAIT_S)
        assert worker.handled == 1

    asyncio.run(run())
    assert finished == ["slow one"]
    assert pubsub_emulator.pull(sub, wait_s=1.0) == []  # acked before stop() returned
