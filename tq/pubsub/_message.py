"""One received Pub/Sub message: decoding it, running its handler, ack or nack.

Shared by the push endpoint (`tq.pubsub.app`), the pull worker
(`tq.pubsub.Subscriber`), the database queue's subscriptions and
`tqtesting`, so every way of receiving runs the same code: the message's
data is tq's envelope, its `tq_class` attribute names the class, and
`tq._push.handle_push` runs the handler with an `ExecutionInfo` made from
what Pub/Sub says (delivery attempt, message ID, subscription).

What becomes of a message (`Handled.ack`):

* handler done, `Fatal` (dropped, logged as an error), `Ignore`: acked;
* `Retry`, `Transient` or any other exception, no handler attached, a bad
  envelope or body: nacked, so Pub/Sub delivers it again (after the
  subscription's retry backoff) until its dead-letter policy moves it to
  the dead-letter topic;
* a class this dispatcher does not know: acked and counted
  (`tq_pushes_rejected{reason="unknown_class"}`): on a topic carrying
  several classes, a subscriber takes only those it handles (a subscription
  filter on `attributes.tq_class` keeps the others away).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tq import _push, _topic
from tq._execution import ExecutionInfo, _expected_eta
from tq._request import EXPECTED_ETA_HEADER

if TYPE_CHECKING:
    from tq._dispatcher import Dispatcher

# Statuses Pub/Sub push takes as an acknowledgement.
ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
_EXPECTED_ETA = EXPECTED_ETA_HEADER.lower()


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    """A message as a subscription delivered it.

    `delivery_attempt` is None where Pub/Sub does not say (subscriptions
    without a dead-letter policy); `subscription` is the full name when
    known.
    """

    data: bytes
    attributes: Mapping[str, str]
    message_id: str = ""
    publish_time: dt.datetime | None = None
    delivery_attempt: int | None = None
    subscription: str = ""
    ordering_key: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Handled:
    """What became of a message: the push path's result, and whether to ack it."""

    result: _push.PushResult
    ack: bool

    @property
    def status(self) -> int:
        """The HTTP status a push endpoint answers (a 2xx acks, anything else nacks)."""
        if self.ack and self.result.status not in ACK_STATUSES:
            return 204
        return self.result.status


def execution_info(msg: Received) -> ExecutionInfo:
    """The ExecutionInfo of a delivery of `msg` (its task_class is filled in later)."""
    attempt = msg.delivery_attempt
    previous = attempt - 1 if attempt is not None and attempt > 0 else 0
    sub = msg.subscription.rsplit("/", 1)[-1]
    expected = msg.attributes.get(_topic.EXPECTED_ETA_ATTRIBUTE, "")
    return ExecutionInfo(
        execution_count=previous,
        retry_count=previous,
        task_id=msg.attributes.get(_topic.TASK_ID_ATTRIBUTE, "") or msg.message_id,
        queue=sub,
        eta=msg.publish_time,
        delivery_attempt=attempt,
        message_id=msg.message_id,
        subscription=sub,
        expected_eta=_expected_eta(expected) if expected else None,
    )


def _headers(msg: Received) -> dict[str, str]:
    # The push path reads the trace context (and the expected ETA) from headers.
    headers = {k: v for k, v in msg.attributes.items() if k in ("traceparent", "tracestate")}
    expected = msg.attributes.get(_topic.EXPECTED_ETA_ATTRIBUTE)
    if expected:
        headers[_EXPECTED_ETA] = expected
    elif msg.publish_time is not None:
        headers[_EXPECTED_ETA] = f"{msg.publish_time.timestamp():.6f}"
    return headers


async def handle(dispatcher: Dispatcher, msg: Received) -> Handled:
    """Runs the handler of `msg`'s class; says whether to ack it (see the module docstring)."""
    class_id = msg.attributes.get(_topic.CLASS_ATTRIBUTE) or None
    result = await _push.handle_push(
        dispatcher, class_id, _headers(msg), msg.data, info=execution_info(msg)
    )
    ack = result.status in ACK_STATUSES or result.outcome == "unknown_class"
    return Handled(result, ack)


class BadPushBody(ValueError):
    """A push request body that is not Pub/Sub's wrapped format."""


def parse_push_body(raw: bytes) -> Received:
    """Reads a push request in Pub/Sub's wrapped format; BadPushBody if it is not one."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise BadPushBody(f"push body is not JSON: {e}") from None
    message = doc.get("message") if isinstance(doc, dict) else None
    if not isinstance(message, dict):
        raise BadPushBody('push body has no "message" object (is the subscription unwrapped?)')
    try:
        data = base64.b64decode(message.get("data") or "", validate=True)
    except (binascii.Error, ValueError, TypeError) as e:
        raise BadPushBody(f"message data is not base64: {e}") from None
    attrs = message.get("attributes") or {}
    if not isinstance(attrs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()
    ):
        raise BadPushBody("message attributes must be an object of strings")
    attempt = doc.get("deliveryAttempt", message.get("deliveryAttempt"))
    return Received(
        data=data,
        attributes=attrs,
        message_id=_str(message.get("messageId") or message.get("message_id")),
        publish_time=_time(message.get("publishTime") or message.get("publish_time")),
        delivery_attempt=attempt if isinstance(attempt, int) and attempt > 0 else None,
        subscription=_str(doc.get("subscription")),
        ordering_key=_str(message.get("orderingKey")),
    )


def push_body(
    msg: Received,
) -> bytes:
    """`msg` in Pub/Sub's wrapped push format (what a push subscription POSTs)."""
    message: dict[str, Any] = {
        "data": base64.b64encode(msg.data).decode(),
        "attributes": dict(msg.attributes),
        "messageId": msg.message_id,
        "message_id": msg.message_id,
    }
    if msg.publish_time is not None:
        stamp = msg.publish_time.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        message["publishTime"] = message["publish_time"] = stamp
    if msg.ordering_key:
        message["orderingKey"] = msg.ordering_key
    doc: dict[str, Any] = {"message": message, "subscription": msg.subscription}
    if msg.delivery_attempt is not None:
        doc["deliveryAttempt"] = msg.delivery_attempt
    return json.dumps(doc, separators=(",", ":")).encode()


def _str(v: object) -> str:
    return v if isinstance(v, str) else ""


def _time(v: object) -> dt.datetime | None:
    if not isinstance(v, str) or not v:
        return None
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)
