"""tqtesting's Scheduler standing for Pub/Sub: topics fanned out to subscriptions, in memory."""

from __future__ import annotations

import pytest

import tq
import tqtesting
from tests.testpb import payloads_pb2 as pb
from tqtesting import MemoryStore, TaskStatus


class Seen:
    def __init__(self, name: str, fail_first: int = 0) -> None:
        self.name = name
        self.fail_first = fail_first
        self.calls: list[tuple[str, tq.ExecutionInfo]] = []

    def __call__(self, p: pb.Greet) -> None:
        self.calls.append((p.name, tq.execution_info()))
        if len(self.calls) <= self.fail_first:
            raise tq.Transient("not yet")


def consumer(handler: Seen, kind: tq.Kind = tq.Kind.FOLLOWS_CONTEXT) -> tq.Dispatcher:
    d = tq.Dispatcher(cloud_project="proj")
    d.task_class(id="greet", prototype=pb.Greet, kind=kind, topic="events")(handler)
    return d


def test_topic_without_declared_subscriptions_is_handled_by_the_scheduler_dispatcher() -> None:
    seen = Seen("app")
    d = consumer(seen)
    with tqtesting.testing_context(d) as sched:
        d.add_task(tq.Task(payload=pb.Greet(name="ada")))
        sched.run()
    (rec,) = sched.tasks()
    assert (rec.status, rec.queue, rec.payload) == (
        TaskStatus.FINISHED,
        "events",
        pb.Greet(name="ada"),
    )
    ((name, info),) = seen.calls
    assert name == "ada"
    assert (info.subscription, info.delivery_attempt) == ("events", 1)


def test_each_subscription_gets_a_committed_message_once_and_a_rolled_back_one_never() -> None:
    billing, mailer = Seen("billing"), Seen("mailer")
    producer = consumer(Seen("unused"), kind=tq.Kind.TRANSACTIONAL)
    store = MemoryStore()
    with tqtesting.testing_context(producer) as sched:
        sched.subscribe("events", "billing", consumer(billing))
        sched.subscribe("projects/proj/topics/events", "mailer", consumer(mailer))
        with store.transaction():
            producer.add_task(tq.Task(payload=pb.Greet(name="kept")))
        with pytest.raises(RuntimeError, match="abort"):
            _add_then_fail(store, producer)
        sched.run()
    assert [n for n, _ in billing.calls] == ["kept"]
    assert [n for n, _ in mailer.calls] == ["kept"]
    assert sorted(r.queue for r in sched.tasks()) == ["billing", "mailer"]
    assert {r.reminder_id for r in sched.tasks()} == {billing.calls[0][1].task_id}


def test_failing_handler_gets_the_message_again_with_the_next_delivery_attempt() -> None:
    seen = Seen("app", fail_first=2)
    d = consumer(seen)
    with tqtesting.testing_context(d, subscriptions={"events": ["worker"]}) as sched:
        d.add_task(tq.Task(payload=pb.Greet(name="retry me")))
        sched.run()
    assert [i.delivery_attempt for _, i in seen.calls] == [1, 2, 3]
    assert len({i.task_id for _, i in seen.calls}) == 1
    (rec,) = sched.tasks()
    assert (rec.status, rec.attempts, rec.queue) == (TaskStatus.FINISHED, 3, "worker")


def test_subscription_of_another_service_acks_classes_it_does_not_know() -> None:
    seen = Seen("app")
    d = consumer(seen)
    with tqtesting.testing_context(d) as sched:
        sched.subscribe("events", "app")
        sched.subscribe("events", "stranger", tq.Dispatcher(cloud_project="proj"))
        d.add_task(tq.Task(payload=pb.Greet(name="x")))
        sched.run()
    outcomes = {r.queue: (r.status, r.outcome, r.attempts) for r in sched.tasks()}
    assert outcomes == {
        "app": (TaskStatus.FINISHED, "ok", 1),
        "stranger": (TaskStatus.FINISHED, "unknown_class", 1),
    }


def test_a_message_published_twice_keys_one_done_marker() -> None:
    seen = Seen("app")
    d = consumer(seen, kind=tq.Kind.TRANSACTIONAL)
    store = MemoryStore()
    with tqtesting.testing_context(d) as sched:
        with store.transaction():
            d.add_task(tq.Task(payload=pb.Greet(name="dup")))
        (rec,) = sched.tasks()
        # The sweeper publishing the same reminder again (Pub/Sub has no dedup).
        sched.submit(tq.Submission(rec.request, "greet", rec.created, None, rec.reminder_id))
        sched.run()
    (_, first), (_, second) = seen.calls
    assert first.message_id != second.message_id
    assert tq.txn.marker_key(first) == tq.txn.marker_key(second)


def _add_then_fail(store: MemoryStore, d: tq.Dispatcher) -> None:
    with store.transaction():
        d.add_task(tq.Task(payload=pb.Greet(name="rolled back")))
        raise RuntimeError("abort")
