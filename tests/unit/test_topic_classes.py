"""Task classes with a Pub/Sub topic: registration, the message add_task builds, routing."""

from __future__ import annotations

import datetime as dt
import json

import grpc
import pytest

import tq
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import FakeStore, RecordingSubmitter, in_txn
from tq import _outbox
from tq._pb.publish_pb2 import PublishRequest
from tq._reminder import Reminder


class TopicRecorder(RecordingSubmitter):
    takes_topics = True


def dispatcher(submitter: tq.Submitter, **kw: object) -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project="proj", cloud_region="r", default_target_host="h", submitter=submitter
    )
    d.register_task_class(
        tq.TaskClass(id="greeted", prototype=pb.Greet, topic="events", **kw)  # type: ignore[arg-type]
    )
    d.register_task_class(
        tq.TaskClass(id="count", prototype=pb.Count, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q")
    )
    return d


def test_topic_class_message_carries_envelope_and_attributes() -> None:
    rec = TopicRecorder()
    d = dispatcher(rec, kind=tq.Kind.FOLLOWS_CONTEXT)
    d.add_task(tq.Task(payload=pb.Greet(name="ada"), title="t-1", ordering_key="user-7"))
    (sub,) = rec.submitted
    req = sub.request
    assert isinstance(req, PublishRequest)
    assert sub.topic == req.topic == "projects/proj/topics/events"
    assert sub.task_name == ""
    assert json.loads(req.data) == {"class": "greeted", "type": "tq.tests.Greet",
                                    "body": {"name": "ada"}}  # fmt: skip
    attrs = dict(req.attributes)
    assert attrs["tq_class"] == "greeted"
    assert attrs["tq_type"] == "tq.tests.Greet"
    assert attrs["tq_title"] == "t-1"
    assert len(attrs["tq_task_id"]) == 32
    assert attrs["tq_expected_eta"].replace(".", "").isdigit()
    assert req.ordering_key == "user-7"


def test_full_topic_name_needs_no_project() -> None:
    rec = TopicRecorder()
    d = tq.Dispatcher(submitter=rec)
    full = "projects/other/topics/t-1"
    d.register_task_class(
        tq.TaskClass(id="g", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, topic=full)
    )
    d.add_task(tq.Task(payload=pb.Greet()))
    assert rec.submitted[0].topic == "projects/other/topics/t-1"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"queue": "q", "topic": "events"}, "not both"),
        ({"topic": "ab"}, "is invalid"),
        ({"topic": "goog-x"}, "is invalid"),
        ({"topic": "events", "dispatch_deadline_s": 30.0}, "ack deadline"),
        ({"topic": "events", "schedule": tq.Cron("* * * * *")}, "no schedule"),
        ({}, "queue"),
    ],
)
def test_topic_class_misconfiguration_is_refused(fields: dict[str, object], says: str) -> None:
    cls = tq.TaskClass(id="g", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, **fields)  # type: ignore[arg-type]
    with pytest.raises(tq.ConfigError, match=says):
        cls.validate()


@pytest.mark.parametrize(
    ("task", "says"),
    [
        (tq.Task(payload=pb.Greet(), delay=dt.timedelta(seconds=1)), "no delay or eta"),
        (tq.Task(payload=pb.Greet(), deduplication_key="k"), "does not deduplicate"),
        (tq.Task(payload=pb.Greet(), ordering_key="x" * 1025), "ordering_key"),
        (tq.Task(payload=pb.Count(), ordering_key="k"), "ordering_key is for topic"),
        (tq.Task(payload=pb.Greet(), queue="emails"), "queue is for queue classes"),
    ],
)
def test_topic_task_options_pubsub_lacks_are_refused(task: tq.Task, says: str) -> None:
    rec = TopicRecorder()
    d = dispatcher(rec, kind=tq.Kind.FOLLOWS_CONTEXT)
    with pytest.raises(tq.ValidationError, match=says):
        d.add_task(task)
    assert rec.submitted == []


def test_message_over_pubsub_limit_is_refused_before_anything_is_written() -> None:
    rec = TopicRecorder()
    d = tq.Dispatcher(cloud_project="p", submitter=rec)
    d.register_task_class(
        tq.TaskClass(id="b", prototype=pb.Blob, kind=tq.Kind.NON_TRANSACTIONAL, topic="big")
    )
    with pytest.raises(tq.PayloadTooLarge, match="Pub/Sub's limit"):
        d.add_task(tq.Task(payload=pb.Blob(data=b"x" * 8_000_000)))
    assert rec.submitted == []


def test_submitter_without_topics_is_refused_at_add_task() -> None:
    rec = RecordingSubmitter()  # a Cloud Tasks-like submitter: no takes_topics
    d = dispatcher(rec, kind=tq.Kind.FOLLOWS_CONTEXT)
    with pytest.raises(tq.ConfigError, match="takes no topics"):
        d.add_task(tq.Task(payload=pb.Greet()))
    d.add_task(tq.Task(payload=pb.Count()))  # its queue classes still go
    assert len(rec.submitted) == 1


def test_router_sends_queues_and_topics_to_their_submitters() -> None:
    queues, topics = RecordingSubmitter(), TopicRecorder()
    d = dispatcher(tq.Router(queues=queues, topics=topics), kind=tq.Kind.FOLLOWS_CONTEXT)
    d.add_task(tq.Task(payload=pb.Greet()), tq.Task(payload=pb.Count()))
    assert [s.task_class for s in topics.submitted] == ["greeted"]
    assert [s.task_class for s in queues.submitted] == ["count"]


def test_router_without_a_topic_submitter_refuses_a_message() -> None:
    router = tq.Router(queues=RecordingSubmitter())
    assert not router.takes_topics
    sub = tq.Submission(PublishRequest(topic="projects/p/topics/abc"), "c", dt.datetime.now(dt.UTC))
    with pytest.raises(tq.SubmitError) as e:
        router.submit(sub)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_transactional_message_is_a_reminder_named_by_its_task_id_attribute() -> None:
    store, rec = FakeStore(), TopicRecorder()
    d = dispatcher(rec, kind=tq.Kind.TRANSACTIONAL)
    with in_txn(store) as txn:
        d.add_task(tq.Task(payload=pb.Greet(name="bo")))
    assert rec.submitted == []  # nothing before the commit
    pending = txn.commit()
    ((rid, row),) = store.rows.items()
    back = Reminder(rid, row.fresh_until, row.payload).submission()
    assert isinstance(back.request, PublishRequest)
    assert back.request.attributes["tq_task_id"] == rid
    assert back.task_class == "greeted"
    _outbox.after_commit(store, pending)  # the happy path publishes, deletes
    (sub,) = rec.submitted
    assert sub.request.attributes["tq_task_id"] == rid
    assert store.rows == {}
