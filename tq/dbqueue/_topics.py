"""Topics and subscriptions: the database queue standing for Pub/Sub, fan-out included.

A message published to a topic (a task of a class with a `topic`) becomes
one task row per subscription of that topic, in the queue named like the
subscription, written in the same transaction as the publish (the caller's,
for a transactional `add_task`). A push subscription's rows are POSTed by
the workers to its `push_endpoint` in Pub/Sub's wrapped push format (with
an OIDC token for `oidc_email` when the worker has a signer), so the same
`tq.pubsub.app` endpoint serves Pub/Sub in production and this queue
locally; retries follow the queue's configuration, and a row that fails
for good ends FAILED (where Pub/Sub would move it to a dead-letter topic).
A pull subscription's queue is a pull queue: consumers lease its rows with
`PullQueue`, read each body with `tq.pubsub.parse_push_body` and run it
with `tq.pubsub.handle`.

As on Pub/Sub, a message published to a topic with no subscription is
dropped (counted in `tq_dbqueue_messages_unrouted`), and messages are not
deduplicated: each publish makes new rows.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from tq import _metrics, clock
from tq._errors import ConfigError
from tq.dbqueue import _db
from tq.dbqueue._queuedb import config_values, ensure_queue
from tq.dbqueue._queues import QueueConfig
from tq.dbqueue._schema import from_us, queues, subscriptions, to_us
from tq.pubsub._message import Received, push_body

_SUBSCRIPTION_RE = re.compile(r"^[a-zA-Z0-9-]{1,100}\Z")
_TOPIC_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9\-_.~+%]{2,254}\Z")


@dataclasses.dataclass(frozen=True, slots=True)
class Subscription:
    """One subscription to a topic of the database queue.

    Args:
      name: the subscription ID, `[a-zA-Z0-9-]{1,100}`; its messages wait in
        the queue of the same name (so it must not be a queue of tasks).
      topic: the topic ID (the last part of `projects/P/topics/T`).
      push_endpoint: the URL the workers POST each message to (e.g.
        `http://localhost:8000/internal/pubsub/<name>`); None makes a pull
        subscription.
      oidc_email, oidc_audience: the token the push carries (minted by the
        worker's signer), as a Pub/Sub push subscription's `oidc_token`;
        the audience defaults to the endpoint URL.
      queue: the retry and rate settings of its queue (default
        `QueueConfig(name)`, a pull queue for a pull subscription).
    """

    name: str
    topic: str
    push_endpoint: str | None = None
    oidc_email: str | None = None
    oidc_audience: str | None = None
    queue: QueueConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SUBSCRIPTION_RE.match(self.name):
            raise ConfigError(
                f"subscription {self.name!r}: the database queue's subscription IDs are queue "
                "IDs, 1 to 100 of [a-zA-Z0-9-]"
            )
        if not isinstance(self.topic, str) or not _TOPIC_RE.match(self.topic):
            raise ConfigError(f"subscription {self.name!r}: topic {self.topic!r} is not a topic ID")
        if self.queue is not None and self.queue.name != self.name:
            raise ConfigError(f"subscription {self.name!r}: its queue config must be named so")

    def queue_config(self) -> QueueConfig:
        if self.queue is not None:
            return dataclasses.replace(self.queue, pull=self.push_endpoint is None)
        return QueueConfig(self.name, pull=self.push_endpoint is None)


def apply_subscriptions(engine: sa.Engine, subs: Iterable[Subscription]) -> None:
    """Creates or updates subscriptions and their queues (pause states are kept)."""
    now_us = to_us(clock.now())
    with _db.write_txn(engine) as conn:
        for s in subs:
            row = {
                "name": s.name, "topic": s.topic, "push_endpoint": s.push_endpoint,
                "oidc_email": s.oidc_email, "oidc_audience": s.oidc_audience,
                "updated_us": now_us,
            }  # fmt: skip
            _db.upsert(conn, subscriptions, {**row, "created_us": now_us}, ["name"], row)
            cfg = s.queue_config()
            ensure_queue(conn, s.name)
            conn.execute(
                sa.update(queues)
                .where(queues.c.name == s.name)
                .values(**config_values(cfg), updated_us=now_us)
            )


def list_subscriptions(engine: sa.Engine, topic: str | None = None) -> list[Subscription]:
    """The subscriptions (of `topic`, or all), by name."""
    with engine.connect() as conn:
        return [_of(r) for r in _rows(conn, topic)]


def delete_subscription(engine: sa.Engine, name: str) -> bool:
    """Deletes a subscription (its queue and the messages in it stay); False if absent."""
    with _db.write_txn(engine) as conn:
        n = conn.execute(sa.delete(subscriptions).where(subscriptions.c.name == name)).rowcount
    return bool(n)


def _rows(conn: sa.Connection, topic: str | None) -> list[Any]:
    q = sa.select(subscriptions).order_by(subscriptions.c.name)
    if topic is not None:
        q = q.where(subscriptions.c.topic == topic)
    return list(conn.execute(q))


def _of(r: Any) -> Subscription:
    return Subscription(r.name, r.topic, r.push_endpoint, r.oidc_email, r.oidc_audience)


def message_rows(
    conn: sa.Connection,
    request: Any,
    task_class: str,
    *,
    now_us: int,
    message_id: str,
) -> list[dict[str, Any]]:
    """The `tq_tasks` rows of a published message: one per subscription of its topic.

    Every row is named `message_id` (the message ID its push carries), as
    Pub/Sub gives a message one ID on every subscription.
    """
    topic: str = request.topic
    project = topic.split("/")[1] if topic.startswith("projects/") else "local"
    topic_id = topic.rsplit("/", 1)[-1]
    subs = _rows(conn, topic_id)
    if not subs:
        _metrics.add("tq_dbqueue_messages_unrouted", topic=topic_id)
        return []
    attributes = dict(request.attributes)
    rows = []
    name = message_id
    for s in subs:
        msg = Received(
            data=request.data, attributes=attributes, message_id=name,
            publish_time=from_us(now_us), subscription=f"projects/{project}/subscriptions/{s.name}",
            ordering_key=request.ordering_key,
        )  # fmt: skip
        rows.append({
            "queue": s.name, "name": name, "task_class": task_class,
            "url": s.push_endpoint or "", "method": "POST",
            "headers": '{"Content-Type":"application/json"}', "body": push_body(msg),
            "oidc_email": s.oidc_email, "oidc_audience": s.oidc_audience or s.push_endpoint,
            "app_engine": False, "dispatch_deadline_s": None, "eta_us": now_us,
            "created_us": now_us, "reserve_us": None,
        })  # fmt: skip
    return rows
