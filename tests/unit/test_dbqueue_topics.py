"""The database queue standing for Pub/Sub: topics fanned out to subscriptions, pushed
in Pub/Sub's format through `tq.pubsub.app`, transactional publishes with the caller's commit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.routing import Mount

import tq
import tq.pubsub
import tq.txn.sql
from tests._dbqueue import engine_fixture  # noqa: F401
from tests.testpb import payloads_pb2 as pb
from tq import _metrics, dbqueue
from tq.dbqueue import QueueConfig, State, Subscription

BASE = "http://app.local"


class Consumer:
    """A service receiving one subscription: its own dispatcher and handler."""

    def __init__(self, fail_first: int = 0) -> None:
        self.seen: list[tuple[str, tq.ExecutionInfo]] = []
        self.fail_first = fail_first
        self.disp = tq.Dispatcher(cloud_project="proj")
        self.disp.task_class(
            id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, topic="orders"
        )(self.greet)

    def greet(self, p: pb.Greet) -> None:
        self.seen.append((p.name, tq.execution_info()))
        if len(self.seen) <= self.fail_first:
            raise tq.Transient("not yet")


def setup(engine: sa.Engine, **consumers: Consumer) -> tuple[tq.Dispatcher, Starlette]:
    dbqueue.create_schema(engine)
    fast = {"min_backoff_s": 0.0, "max_backoff_s": 0.0}
    dbqueue.apply_subscriptions(
        engine,
        [
            Subscription(name, "orders", push_endpoint=f"{BASE}/pubsub/{name}/push",
                         queue=QueueConfig(name, **fast))  # type: ignore[arg-type]
            for name in consumers
        ],
    )  # fmt: skip
    app = Starlette(
        routes=[
            Mount(f"/pubsub/{name}", tq.pubsub.app(c.disp, auth=tq.asgi.INSECURE_NO_AUTH))
            for name, c in consumers.items()
        ]
    )
    producer = tq.Dispatcher(cloud_project="proj", submitter=dbqueue.DbQueueSubmitter(engine))
    producer.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, topic="orders")
    )
    return producer, app


async def test_committed_message_reaches_each_subscription_once_rolled_back_never(
    engine: sa.Engine,
) -> None:
    billing, mailer = Consumer(), Consumer()
    producer, app = setup(engine, billing=billing, mailer=mailer)
    store = tq.txn.sql.SQLStore(engine, name="topics", register=False)
    store.create_schema()
    with tq.txn.sql.transaction(engine, store=store):
        producer.add_task(tq.Task(payload=pb.Greet(name="kept")))
    with pytest.raises(RuntimeError, match="abort"):
        _add_then_fail(producer, engine, store)
    assert store.count_reminders() == (0, 0)  # the rows were written in the transaction
    async with dbqueue.Worker(engine, app=app) as w:
        await w.run_until_idle()
    store.close()
    assert [n for n, _ in billing.seen] == ["kept"]
    assert [n for n, _ in mailer.seen] == ["kept"]
    (b_info,), (m_info,) = (i for _, i in billing.seen), (i for _, i in mailer.seen)
    assert (b_info.subscription, m_info.subscription) == ("billing", "mailer")
    assert b_info.message_id == m_info.message_id  # one message, two subscriptions
    assert b_info.delivery_attempt == 1


def _add_then_fail(producer: tq.Dispatcher, engine: sa.Engine, store: object) -> None:
    with tq.txn.sql.transaction(engine, store=store):  # type: ignore[arg-type]
        producer.add_task(tq.Task(payload=pb.Greet(name="rolled back")))
        raise RuntimeError("abort")


async def test_nacked_message_is_delivered_again_with_the_next_attempt(engine: sa.Engine) -> None:
    worker_sub = Consumer(fail_first=2)
    producer, app = setup(engine, work=worker_sub)
    await producer.add_task_async(tq.Task(payload=pb.Greet(name="again")))
    async with dbqueue.Worker(engine, app=app) as w:
        await w.run_until_idle()
    assert [i.delivery_attempt for _, i in worker_sub.seen] == [1, 2, 3]
    (task,) = dbqueue.Admin(engine).list_tasks()
    assert (task.queue, task.state) == ("work", State.DONE)


async def test_a_message_nacked_max_attempts_times_is_parked_and_can_be_replayed(
    engine: sa.Engine,
) -> None:
    # Pub/Sub's dead-letter policy (max delivery attempts, then the dead-letter
    # topic) is the subscription queue's max_attempts here, then FAILED.
    consumer = Consumer(fail_first=3)
    producer, app = setup(engine, mailer=consumer)
    dbqueue.apply_subscriptions(
        engine,
        [Subscription("mailer", "orders", push_endpoint=f"{BASE}/pubsub/mailer/push",
                      queue=QueueConfig("mailer", max_attempts=3, min_backoff_s=0.0,
                                        max_backoff_s=0.0))],
    )  # fmt: skip
    await producer.add_task_async(tq.Task(payload=pb.Greet(name="undeliverable")))
    async with dbqueue.Worker(engine, app=app) as w:
        await w.run_until_idle()
    assert [i.delivery_attempt for _, i in consumer.seen] == [1, 2, 3]
    admin = dbqueue.Admin(engine)
    (parked,) = admin.list_tasks(queue="mailer", state=State.FAILED)
    assert (parked.attempts, parked.last_status) == (3, 500)
    assert admin.run_task("mailer", parked.name)  # the operator replays it
    async with dbqueue.Worker(engine, app=app) as w:
        await w.run_until_idle()
    assert [n for n, _ in consumer.seen] == ["undeliverable"] * 4
    assert admin.get_task("mailer", parked.name).state == State.DONE  # type: ignore[union-attr]


async def test_unknown_class_is_acked_and_a_topic_without_subscriptions_drops(
    engine: sa.Engine,
) -> None:
    stranger = Consumer()
    stranger.disp = tq.Dispatcher(cloud_project="proj")  # knows no class
    producer, app = setup(engine, stranger=stranger)
    await producer.add_task_async(tq.Task(payload=pb.Greet(name="not yours")))
    async with dbqueue.Worker(engine, app=app) as w:
        await w.run_until_idle()
    (task,) = dbqueue.Admin(engine).list_tasks()
    assert (task.state, task.last_status) == (State.DONE, 204)
    dbqueue.delete_subscription(engine, "stranger")
    before = _metrics.value("tq_dbqueue_messages_unrouted", topic="orders")
    await producer.add_task_async(tq.Task(payload=pb.Greet(name="nobody")))
    assert len(dbqueue.Admin(engine).list_tasks()) == 1
    assert _metrics.value("tq_dbqueue_messages_unrouted", topic="orders") == before + 1


def test_subscription_names_are_queue_ids() -> None:
    with pytest.raises(tq.ConfigError, match="queue IDs"):
        Subscription("has.dots", "orders")
    assert [s.name for s in [Subscription("pull-one", "orders")]] == ["pull-one"]
    assert Subscription("pull-one", "orders").queue_config().pull


def test_a_version_2_schema_migrates_by_adding_the_subscriptions_table(engine: sa.Engine) -> None:
    from tq.dbqueue._schema import meta

    dbqueue.create_schema(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE tq_subscriptions"))
        conn.execute(sa.update(meta).values(value="2"))
    assert dbqueue.schema_version(engine) == 2
    dbqueue.create_schema(engine)
    assert dbqueue.schema_version(engine) == dbqueue.SCHEMA_VERSION
    dbqueue.apply_subscriptions(engine, [Subscription("sub-a", "orders")])
    assert [s.name for s in dbqueue.list_subscriptions(engine, "orders")] == ["sub-a"]


async def test_pull_subscription_messages_are_leased_and_run_through_the_push_path(
    engine: sa.Engine,
) -> None:
    import dataclasses

    consumer = Consumer(fail_first=1)
    producer, _ = setup(engine)
    dbqueue.apply_subscriptions(engine, [Subscription("puller", "orders")])  # no push_endpoint
    await producer.add_task_async(tq.Task(payload=pb.Greet(name="pulled")))
    async with dbqueue.Worker(engine) as w:
        assert await w.run_until_idle() == 0  # a pull queue: never pushed
    q = dbqueue.PullQueue(engine, "puller")
    for attempt in (1, 2):
        (task,) = q.lease(1)
        msg = tq.pubsub.parse_push_body(task.body)
        msg = dataclasses.replace(msg, delivery_attempt=task.retry_count + 1)
        handled = await tq.pubsub.handle(consumer.disp, msg)
        assert handled.ack == (attempt == 2)  # the first run raised Transient
        if handled.ack:
            q.complete(task)
        else:
            q.release(task)
    assert [(n, i.delivery_attempt, i.subscription) for n, i in consumer.seen] == [
        ("pulled", 1, "puller"), ("pulled", 2, "puller"),
    ]  # fmt: skip
    assert q.lease(1) == []
