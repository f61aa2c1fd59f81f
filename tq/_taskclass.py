"""Task classes: what a task of one protobuf type is and where it goes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

from google.protobuf.message import Message

from tq._errors import ConfigError
from tq.cron import Cron

Handler: TypeAlias = Callable[[Any], None] | Callable[[Any], Awaitable[None]]
SchedulePayload: TypeAlias = Message | Callable[[dt.datetime], Message]
"""The payload of a scheduled task: a message, or a function of the tick (local time)."""

# \Z, not $: "$" also matches before a trailing newline, which would let
# "send-email\n" through as a class ID or queue name.
CLASS_ID_RE = re.compile(r"^[a-zA-Z0-9_\-.]{1,100}\Z")
SHORT_QUEUE_RE = re.compile(r"^[a-zA-Z0-9-]{1,100}\Z")
FULL_QUEUE_RE = re.compile(
    r"^projects/[a-z0-9\-:.]{1,100}/locations/[a-z0-9\-]{1,100}/queues/[a-zA-Z0-9-]{1,100}\Z"
)
DEFAULT_ROUTING_PREFIX = "/internal/tasks/t/"
TOPIC_ID_RE = re.compile(r"^(?!goog)[a-zA-Z][a-zA-Z0-9\-_.~+%]{2,254}\Z")
FULL_TOPIC_RE = re.compile(
    r"^projects/[a-z0-9\-:.]{1,100}/topics/(?!goog)[a-zA-Z][a-zA-Z0-9\-_.~+%]{2,254}\Z"
)


class Kind(enum.Enum):
    """How a task class relates to database transactions.

    * `NON_TRANSACTIONAL`: submitted at once; refused inside a transaction.
    * `TRANSACTIONAL`: written as a reminder in the current transaction and
      submitted if and only if it commits; refused outside a transaction.
    * `FOLLOWS_CONTEXT`: transactional inside a transaction, submitted at
      once outside one.
    """

    NON_TRANSACTIONAL = "non-transactional"
    TRANSACTIONAL = "transactional"
    FOLLOWS_CONTEXT = "follows-context"


@dataclasses.dataclass(frozen=True, slots=True)
class CustomPayload:
    """A request of a task class's own making, in place of tq's envelope.

    Returned by a task class's `custom` hook. Such a task is pushed to
    `relative_uri` (on the class's target host) with `body` and `meta` as
    headers, and is not handled by tq's push endpoint unless the URI points
    there. `relative_uri` must start with "/".
    """

    body: bytes
    relative_uri: str
    method: str = "POST"
    meta: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(eq=False, slots=True)
class TaskClass:
    """One kind of task: a protobuf payload type bound to an ID and a queue or topic.

    Args:
      id: unique ID, `[a-zA-Z0-9_\\-.]{1,100}`; it appears in URLs and logs.
      prototype: the protobuf message class of the payload; unique per
        dispatcher.
      kind: see `Kind`. Required.
      queue: a Cloud Tasks queue, short (`emails`, resolved with the
        dispatcher's project and region) or full
        (`projects/P/locations/L/queues/Q`). Give a queue or a `topic`.
      topic: a Pub/Sub topic to publish the tasks to instead, short
        (`orders`, resolved with the dispatcher's project) or full
        (`projects/P/topics/T`); see docs/pubsub.md. Tasks of a topic class
        take no delay, ETA or deduplication key (Pub/Sub has neither), and
        the class takes no `dispatch_deadline_s` or `schedule`;
        `routing_prefix` and `target_host` do not apply. A `custom` hook's
        body becomes the message data and its `meta` message attributes.
      handler: called with the payload when the task is pushed back. `def` or
        `async def`. May be attached later (once) with
        `Dispatcher.attach_handler`; a class without one is only submitted.
      routing_prefix: URL path prefix of the push, default
        `/internal/tasks/t/`. Must start and end with "/".
      target_host: host the pushes go to; default: the dispatcher's
        `default_target_host`.
      custom: optional hook returning a `CustomPayload` to push instead of
        the envelope (or None to use the envelope).
      quiet: do not log payload bodies of this class.
      quiet_on_error: log handler errors of this class as warnings, not errors.
      dispatch_deadline_s: how long Cloud Tasks waits for the handler
        (15 s to 1,800 s); None leaves the queue's default (10 min).
      schedule: a `tq.cron.Cron`: add a task of this class at each tick
        (see `Dispatcher.schedules`); the class must not be TRANSACTIONAL.
        The database queue's workers fire it; on Cloud Tasks, Cloud
        Scheduler calls `<mount>/c/cron/<class ID>` (`tq schedules`).
      schedule_payload: the payload of a scheduled task: a message of the
        prototype, or a function of the tick (an aware datetime on the
        schedule's wall clock) returning one; default an empty message.
      raise_if_exists: when a task of this class with a deduplication key
        is added (outside a transaction) and a task of that name exists
        already, `add_task` raises `tq.TaskAlreadyAdded` instead of
        absorbing it (the default, False). `add_task(raise_if_exists=...)`
        overrides it per call; scheduled ticks always absorb. Refused on
        TRANSACTIONAL and topic classes, whose tasks never share a name.
    """

    id: str
    prototype: type[Message]
    kind: Kind
    queue: str = ""
    handler: Handler | None = None
    routing_prefix: str = DEFAULT_ROUTING_PREFIX
    target_host: str | None = None
    custom: Callable[[Message], CustomPayload | None] | None = None
    quiet: bool = False
    quiet_on_error: bool = False
    dispatch_deadline_s: float | None = None
    schedule: Cron | None = None
    schedule_payload: SchedulePayload | None = None
    topic: str = ""
    raise_if_exists: bool = False

    def validate(self) -> None:
        """Raises ConfigError saying what to fix if the class is misconfigured."""
        if not isinstance(self.id, str) or not CLASS_ID_RE.match(self.id):
            raise ConfigError(
                f"task class ID {self.id!r} is invalid: use 1 to 100 characters "
                "from [a-zA-Z0-9_-.], e.g. 'send-email'"
            )
        if not (isinstance(self.prototype, type) and issubclass(self.prototype, Message)):
            raise ConfigError(
                f"task class {self.id!r}: prototype must be a protobuf message class "
                f"(a *_pb2 class), got {self.prototype!r}"
            )
        if not isinstance(self.kind, Kind):
            raise ConfigError(
                f"task class {self.id!r}: kind is required: one of tq.Kind.NON_TRANSACTIONAL, "
                "tq.Kind.TRANSACTIONAL, tq.Kind.FOLLOWS_CONTEXT"
            )
        if not isinstance(self.topic, str) or not isinstance(self.queue, str):
            raise ConfigError(f"task class {self.id!r}: queue and topic must be strings")
        self._validate_raise_if_exists()
        if self.topic:
            self._validate_topic()
            return
        if not (SHORT_QUEUE_RE.match(self.queue) or FULL_QUEUE_RE.match(self.queue)):
            raise ConfigError(
                f"task class {self.id!r}: queue {self.queue!r} is invalid: give a queue ID "
                "([a-zA-Z0-9-]{1,100}, e.g. 'emails') or a full name "
                "'projects/P/locations/L/queues/Q'"
            )
        prefix = self.routing_prefix
        if not (prefix.startswith("/") and prefix.endswith("/")) or " " in prefix:
            raise ConfigError(
                f"task class {self.id!r}: routing_prefix {prefix!r} must start and end "
                "with '/' and have no spaces, e.g. '/internal/tasks/t/'"
            )
        if self.target_host is not None and (
            not self.target_host or "/" in self.target_host or " " in self.target_host
        ):
            raise ConfigError(
                f"task class {self.id!r}: target_host {self.target_host!r} must be a bare "
                "host name such as 'app.example.com' (no scheme, no path)"
            )
        if self.dispatch_deadline_s is not None and not 15 <= self.dispatch_deadline_s <= 1800:
            raise ConfigError(
                f"task class {self.id!r}: dispatch_deadline_s must be within 15 to 1800 seconds"
            )
        self._validate_schedule()

    def _validate_raise_if_exists(self) -> None:
        if not isinstance(self.raise_if_exists, bool):
            raise ConfigError(f"task class {self.id!r}: raise_if_exists must be True or False")
        if not self.raise_if_exists:
            return
        if self.kind is Kind.TRANSACTIONAL:
            raise ConfigError(
                f"task class {self.id!r}: raise_if_exists has no effect on a TRANSACTIONAL "
                "class: its tasks are named by fresh random reminder IDs (and take no "
                "deduplication key), so none ever exists already"
            )
        if self.topic:
            raise ConfigError(
                f"task class {self.id!r}: raise_if_exists has no effect on a topic class: "
                "Pub/Sub messages have no names to find taken"
            )

    def _validate_topic(self) -> None:
        if self.queue:
            raise ConfigError(
                f"task class {self.id!r}: give a queue or a topic, not both "
                f"(queue {self.queue!r}, topic {self.topic!r})"
            )
        if not (TOPIC_ID_RE.match(self.topic) or FULL_TOPIC_RE.match(self.topic)):
            raise ConfigError(
                f"task class {self.id!r}: topic {self.topic!r} is invalid: give a topic ID "
                "(a letter, then 2 to 254 of [a-zA-Z0-9-_.~+%], not starting with 'goog') "
                "or a full name 'projects/P/topics/T'"
            )
        if self.dispatch_deadline_s is not None:
            raise ConfigError(
                f"task class {self.id!r}: dispatch_deadline_s is a Cloud Tasks setting; a "
                "topic's push deadline is its subscription's ack deadline"
            )
        if self.schedule is not None or self.schedule_payload is not None:
            raise ConfigError(
                f"task class {self.id!r}: a topic class takes no schedule (scheduled tasks "
                "are named per tick, and Pub/Sub has no names to deduplicate by)"
            )

    def _validate_schedule(self) -> None:
        if self.schedule is None:
            if self.schedule_payload is not None:
                raise ConfigError(f"task class {self.id!r}: schedule_payload needs a schedule")
            return
        if not isinstance(self.schedule, Cron):
            raise ConfigError(
                f"task class {self.id!r}: schedule must be a tq.Cron, got {self.schedule!r}"
            )
        if self.kind is Kind.TRANSACTIONAL:
            raise ConfigError(
                f"task class {self.id!r}: a scheduled class is added outside transactions; "
                "make it NON_TRANSACTIONAL or FOLLOWS_CONTEXT"
            )
        p = self.schedule_payload
        if isinstance(p, Message) and not isinstance(p, self.prototype):
            raise ConfigError(
                f"task class {self.id!r}: schedule_payload must be a {self.type_name} "
                f"(or a function of the tick returning one), got {type(p).__name__}"
            )
        if p is not None and not isinstance(p, Message) and not callable(p):
            raise ConfigError(
                f"task class {self.id!r}: schedule_payload must be a message or a callable"
            )

    @property
    def type_name(self) -> str:
        """The full protobuf name of the payload type."""
        return str(self.prototype.DESCRIPTOR.full_name)
