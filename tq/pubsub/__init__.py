"""tq.pubsub: task classes on Cloud Pub/Sub topics, published and received.

A task class with a `topic` (instead of a `queue`) publishes its tasks to
that Pub/Sub topic, through the same outbox as Cloud Tasks tasks: inside a
transaction a reminder is written, published after the commit, swept after a
crash, parked on a permanent failure. This package holds the parts that
speak to Pub/Sub:

* `Publisher`: the `tq.Submitter` for topics (`google-cloud-pubsub`, with
  its batching); route with `tq.Router(queues=..., topics=Publisher())`.
* `app(dispatcher)` / `routes(dispatcher)`: the push-subscription endpoint
  (Pub/Sub's wrapped push format, OIDC tokens checked by tq's verifier).
* `Subscriber`: a pull worker (streaming pull, flow control, graceful stop);
  `python -m tq.pubsub subscribe` runs one as a process.

Every way of receiving runs the message through the same path: the handler
of its `tq_class` attribute, with `tq.execution_info()` telling the
delivery attempt where Pub/Sub says it. See docs/pubsub.md. `Publisher` and
`Subscriber` need `pip install tq[pubsub]`; importing this package does not.
"""

from __future__ import annotations

from tq._topic import (
    ATTRIBUTES,
    CLASS_ATTRIBUTE,
    EXPECTED_ETA_ATTRIBUTE,
    MAX_MESSAGE_SIZE,
    TASK_ID_ATTRIBUTE,
    TITLE_ATTRIBUTE,
    TYPE_ATTRIBUTE,
)
from tq.pubsub._endpoint import DEFAULT_MAX_BODY_BYTES, app, routes
from tq.pubsub._message import (
    ACK_STATUSES,
    BadPushBody,
    Handled,
    Received,
    handle,
    parse_push_body,
    push_body,
)
from tq.pubsub._publisher import Publisher
from tq.pubsub._subscriber import Subscriber

__all__ = [
    "ACK_STATUSES",
    "ATTRIBUTES",
    "CLASS_ATTRIBUTE",
    "DEFAULT_MAX_BODY_BYTES",
    "EXPECTED_ETA_ATTRIBUTE",
    "MAX_MESSAGE_SIZE",
    "TASK_ID_ATTRIBUTE",
    "TITLE_ATTRIBUTE",
    "TYPE_ATTRIBUTE",
    "BadPushBody",
    "Handled",
    "Publisher",
    "Received",
    "Subscriber",
    "app",
    "handle",
    "parse_push_body",
    "push_body",
    "routes",
]
