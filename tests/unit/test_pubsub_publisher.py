"""tq.pubsub.Publisher without a server: what a publish that cannot get through does."""

from __future__ import annotations

import socket

import grpc
import pytest

import tq
import tq.pubsub
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import FakeStore, in_txn
from tq import _outbox
from tq._pb.publish_pb2 import PublishRequest

pytest.importorskip("google.cloud.pubsub_v1", reason="google-cloud-pubsub not installed")


@pytest.fixture
def dead_endpoint() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_unreachable_pubsub_keeps_the_reminder_for_the_sweeper(
    dead_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_outbox, "_PAUSES_S", (0.0, 0.0))
    store = FakeStore()
    with tq.pubsub.Publisher(endpoint=dead_endpoint, timeout_s=0.5) as publisher:
        d = tq.Dispatcher(cloud_project="proj", submitter=publisher)
        d.register_task_class(
            tq.TaskClass(id="g", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, topic="events")
        )
        with in_txn(store) as txn:
            d.add_task(tq.Task(payload=pb.Greet(name="later")))
        _outbox.after_commit(store, txn.commit())
    assert store.count_reminders() == (1, 0)  # kept (transient), not parked


def test_publisher_refuses_a_cloud_tasks_request_and_an_ordering_key_when_ordering_is_off(
    dead_endpoint: str,
) -> None:
    import datetime as dt

    from tq._request import CreateTaskRequest

    now = dt.datetime.now(dt.UTC)
    with tq.pubsub.Publisher(endpoint=dead_endpoint) as publisher:
        assert publisher.takes_topics
        assert not publisher.takes_queues
        with pytest.raises(tq.SubmitError) as e:
            publisher.submit(tq.Submission(CreateTaskRequest(), "c", now))
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        keyed = PublishRequest(topic="projects/p/topics/abc", data=b"x", ordering_key="k")
        with pytest.raises(tq.SubmitError) as e:
            publisher.submit(tq.Submission(keyed, "c", now))
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT  # permanent: parked
