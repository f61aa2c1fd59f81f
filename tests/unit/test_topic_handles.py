"""What add_task returns for a topic class: the message's name, with the ID its
subscribers see, on the database queue and tqtesting (Pub/Sub's own: the emulator test)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import tq
import tq.pubsub
import tq.txn.sql
import tqtesting
from tests._dbqueue import engine_fixture  # noqa: F401
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tq.dbqueue import Subscription

TOPIC = "projects/proj/topics/orders"


def dispatcher(submitter: tq.Submitter | None = None) -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project="proj", cloud_region="r", default_target_host="h", submitter=submitter
    )
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, topic="orders")
    )
    d.register_task_class(
        tq.TaskClass(id="count", prototype=pb.Count, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q")
    )
    return d


def test_tqtesting_names_a_message_by_the_id_every_subscription_sees() -> None:
    d = dispatcher()
    seen: list[str] = []
    d.attach_handler("greet", lambda p: seen.append(tq.execution_info().message_id))
    with tqtesting.testing_context(d, subscriptions={"orders": ["billing", "mailer"]}) as sched:
        (first,) = d.add_task(tq.Task(payload=pb.Greet(name="a")))
        (second,) = d.add_task(tq.Task(payload=pb.Greet(name="b")))
        sched.run(tqtesting.stop_when_drained())
    assert first.name == f"{TOPIC}/messages/{first.task_id}"
    assert (first.existed, first.reminder_id, first.task_class) == (False, None, "greet")
    assert first.task_id != second.task_id
    assert sorted(seen) == sorted([first.task_id, first.task_id, second.task_id, second.task_id])


def test_a_published_message_cannot_be_deleted_by_its_handle() -> None:
    d = dispatcher()
    with tqtesting.testing_context(d):
        (added,) = d.add_task(tq.Task(payload=pb.Greet(name="a")))
        with pytest.raises(tq.ValidationError, match="a published message cannot be deleted"):
            d.delete_task(added)
        with pytest.raises(tq.ValidationError, match="names a Pub/Sub message"):
            d.delete_task(added.name)


def _subscribed(engine: sa.Engine) -> tq.Dispatcher:
    dbqueue.create_schema(engine)
    dbqueue.apply_subscriptions(
        engine, [Subscription("billing", "orders"), Subscription("mailer", "orders")]
    )
    return dispatcher(dbqueue.DbQueueSubmitter(engine))


def _message_ids(engine: sa.Engine) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t in dbqueue.Admin(engine).list_tasks():
        if t.queue not in ("billing", "mailer"):
            continue
        body = tq.pubsub.parse_push_body(t.body)
        out.setdefault(body.message_id, []).append(t.queue)
    return out


def test_database_queue_names_a_message_by_its_id_on_every_subscription(
    engine: sa.Engine,
) -> None:
    d = _subscribed(engine)
    (one,) = d.add_task(tq.Task(payload=pb.Greet(name="one")))
    # Several tasks in one call go through submit_batch.
    two, task, three = d.add_task(
        tq.Task(payload=pb.Greet(name="two")),
        tq.Task(payload=pb.Count(n=1)),
        tq.Task(payload=pb.Greet(name="three")),
    )
    assert task.name is not None
    assert "/queues/q/tasks/" in task.name
    messages = [one, two, three]
    for m in messages:
        assert m.name == f"{TOPIC}/messages/{m.task_id}"
        assert (m.existed, m.reminder_id) == (False, None)
    ids = _message_ids(engine)
    assert {m.task_id for m in messages} == set(ids)
    assert all(sorted(queues) == ["billing", "mailer"] for queues in ids.values())


async def test_database_queue_async_add_names_the_message(engine: sa.Engine) -> None:
    d = _subscribed(engine)
    (m,) = await d.add_task_async(tq.Task(payload=pb.Greet(name="async")))
    assert m.name == f"{TOPIC}/messages/{m.task_id}"
    assert set(_message_ids(engine)) == {m.task_id}


def test_database_queue_transactional_message_is_known_by_its_task_id_attribute(
    engine: sa.Engine,
) -> None:
    d = _subscribed(engine)
    store = tq.txn.sql.SQLStore(engine, name="handles", register=False)
    store.create_schema()
    try:
        with tq.txn.sql.transaction(engine, store=store):
            (m,) = d.add_task(tq.Task(payload=pb.Greet(name="in txn")))
    finally:
        store.close()
    assert (m.name, m.existed) == (None, None)
    with pytest.raises(tq.ValidationError, match="Pub/Sub message added in a transaction"):
        d.delete_task(m)
    (t, _) = dbqueue.Admin(engine).list_tasks()
    assert tq.pubsub.parse_push_body(t.body).attributes["tq_task_id"] == m.reminder_id
