"""Turning a task of a topic class into a Pub/Sub message (a `PublishRequest`).

What `tq._request` is for a queue class, this is for a class with a
`topic`: the request is tq's own `tq.internal.PublishRequest` (topic, data,
attributes, ordering key), so the core builds and stores it without the
optional `google-cloud-pubsub`; `tq.pubsub.Publisher` publishes it.

The data is tq's JSON envelope (the same bytes a Cloud Tasks push carries),
or a `CustomPayload`'s body. The attributes (`ATTRIBUTES`) name the class
and payload type (for routing and subscription filters), the task ID (the
reminder ID for a task added in a transaction: the same on every publish of
that reminder, so subscribers can drop duplicates by it), the time it was
added (as the `X-Tq-Expected-Eta` header of a Cloud Tasks task: with the
task ID, what `tq.txn.marker_key` keys an effectively-once handler by), the
title, and the trace context.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from google.protobuf.message import Message

from tq import _envelope
from tq._errors import ConfigError, PayloadTooLarge, ValidationError
from tq._pb.publish_pb2 import PublishRequest
from tq._request import eta_header
from tq._task import Task
from tq._taskclass import FULL_TOPIC_RE, TaskClass

# Pub/Sub's limits on one message.
MAX_MESSAGE_SIZE = 10_000_000
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY_BYTES = 256
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_ORDERING_KEY_BYTES = 1024

CLASS_ATTRIBUTE = "tq_class"
TYPE_ATTRIBUTE = "tq_type"
TASK_ID_ATTRIBUTE = "tq_task_id"
TITLE_ATTRIBUTE = "tq_title"
EXPECTED_ETA_ATTRIBUTE = "tq_expected_eta"
ATTRIBUTES = (
    CLASS_ATTRIBUTE, TYPE_ATTRIBUTE, TASK_ID_ATTRIBUTE, EXPECTED_ETA_ATTRIBUTE, TITLE_ATTRIBUTE
)  # fmt: skip
"""The attributes tq sets on every message (the title only when the task has one)."""


def topic_path(topic: str, cloud_project: str | None) -> str:
    """The full name of a topic given short or full."""
    if FULL_TOPIC_RE.match(topic):
        return topic
    if not cloud_project:
        raise ConfigError(
            f"topic {topic!r} is a short name: set the dispatcher's cloud_project, or "
            "register the class with a full topic name 'projects/P/topics/T'"
        )
    return f"projects/{cloud_project}/topics/{topic}"


def message_name(topic: str, message_id: object) -> str:
    """The name of a published message: `<full topic name>/messages/<message ID>`.

    What `add_task` returns as a topic task's `tq.AddedTask.name` (its
    `task_id` is then the message ID, the one `tq.execution_info().message_id`
    gives its handlers). Pub/Sub's message IDs are unique within a topic.
    """
    return f"{topic}/messages/{message_id}"


def is_publish(request: Message) -> bool:
    """Whether a submission's request is a message to publish (not a Cloud Tasks task)."""
    return type(request) is PublishRequest


class Template:
    """What every message of one topic class has in common, worked out once.

    The same interface as `tq._request.Template`: `build()` makes the
    request of one task, `fits()` says whether the template is still good.
    """

    __slots__ = ("_base", "cls", "key", "project")

    def __init__(self, cls: TaskClass, cloud_project: str | None) -> None:
        self.cls = cls
        self.project = cloud_project
        self.key = template_key(cls)
        base = PublishRequest(topic=topic_path(cls.topic, cloud_project))
        base.attributes[CLASS_ATTRIBUTE] = cls.id
        base.attributes[TYPE_ATTRIBUTE] = cls.type_name
        self._base = base

    def task_name(self, task: Task, task_id: str | None) -> str | None:
        """None: Pub/Sub names a message (its ID, see `message_name`) when it publishes it."""
        return None

    def fits(self, cls: TaskClass, cloud_project: str | None) -> bool:
        return self.cls is cls and self.project == cloud_project and self.key == template_key(cls)

    def build(
        self,
        task: Task,
        *,
        now: dt.datetime,
        task_id: str | None,
        extra_headers: dict[str, str] | None = None,
    ) -> Message:
        """The PublishRequest of `task` (validated already); ValidationError if it cannot be one."""
        cls = self.cls
        if task.delay is not None or task.eta is not None:
            raise ValidationError(
                f"task of class {cls.id!r}: Pub/Sub delivers at once; a topic class takes "
                "no delay or eta"
            )
        req = PublishRequest()
        req.CopyFrom(self._base)
        custom = cls.custom(task.payload) if cls.custom is not None else None
        attrs = req.attributes
        if custom is None:
            req.data = _envelope.encode(cls.id, task.payload)
        else:
            req.data = custom.body
            for k, v in custom.meta.items():
                if k not in attrs:
                    attrs[k] = v
        if task_id:
            attrs[TASK_ID_ATTRIBUTE] = task_id
        attrs[EXPECTED_ETA_ATTRIBUTE] = eta_header(now)
        if task.title:
            attrs[TITLE_ATTRIBUTE] = task.title
        if extra_headers:
            for k, v in extra_headers.items():
                attrs[k] = v
        if task.ordering_key:
            if len(task.ordering_key.encode()) > MAX_ORDERING_KEY_BYTES:
                raise ValidationError(
                    f"task of class {cls.id!r}: ordering_key is over {MAX_ORDERING_KEY_BYTES} bytes"
                )
            req.ordering_key = task.ordering_key
        _check_attributes(cls, attrs)
        size = req.ByteSize()
        if size > MAX_MESSAGE_SIZE:
            raise PayloadTooLarge(
                f"task of class {cls.id!r} is {size} bytes as a Pub/Sub message, over "
                f"Pub/Sub's limit of {MAX_MESSAGE_SIZE} bytes; store the data elsewhere and "
                "pass a reference"
            )
        return req


def template_key(cls: TaskClass) -> tuple[object, ...]:
    return (cls.id, cls.topic)


def _check_attributes(cls: TaskClass, attrs: Mapping[str, str]) -> None:
    if len(attrs) > MAX_ATTRIBUTES:
        raise ValidationError(
            f"task of class {cls.id!r}: {len(attrs)} message attributes, over Pub/Sub's "
            f"{MAX_ATTRIBUTES}"
        )
    for k, v in attrs.items():
        if not k or len(k.encode()) > MAX_ATTRIBUTE_KEY_BYTES or k.startswith("goog"):
            raise ValidationError(
                f"task of class {cls.id!r}: message attribute {k!r} is invalid (1 to "
                f"{MAX_ATTRIBUTE_KEY_BYTES} bytes, not starting with 'goog')"
            )
        if len(v.encode()) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise ValidationError(
                f"task of class {cls.id!r}: message attribute {k!r} is over "
                f"{MAX_ATTRIBUTE_VALUE_BYTES} bytes"
            )
