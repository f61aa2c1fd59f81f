"""Pub/Sub topics in the in-memory scheduler: who receives each message, and delivering it.

A message published to a topic becomes one task record per subscription of
the topic (fan-out), each delivered through the same path as a Pub/Sub push
(`tq.pubsub.handle`: the handler of its `tq_class`, ack or nack) to the
dispatcher of that subscription, and retried while nacked. A topic with no
subscription declared gets one, named like the topic, delivering to the
scheduler's dispatcher: publish-and-handle in one app needs no setup.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence

import tq
from tq import _push
from tq.pubsub._message import handle
from tqtesting._delivery import Delivery


class Topics:
    """The subscriptions of each topic, by topic ID (or full name) and subscription ID."""

    def __init__(
        self, dispatcher: tq.Dispatcher, subscriptions: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self._default = dispatcher
        self._lock = threading.Lock()
        self._subs: dict[str, dict[str, tq.Dispatcher]] = {}
        for topic, names in (subscriptions or {}).items():
            for name in names:
                self.subscribe(topic, name)

    def subscribe(
        self, topic: str, subscription: str, dispatcher: tq.Dispatcher | None = None
    ) -> None:
        """Adds a subscription (ID or full name) to a topic (ID or full name)."""
        with self._lock:
            self._subs.setdefault(topic, {})[subscription] = dispatcher or self._default

    def of(self, topic: str) -> list[tuple[str, tq.Dispatcher]]:
        """(full subscription name, dispatcher) of each subscription of `topic` (a full name)."""
        project = topic.split("/")[1] if topic.startswith("projects/") else ""
        short = topic.rsplit("/", 1)[-1]
        with self._lock:
            subs = {**self._subs.get(short, {}), **self._subs.get(topic, {})}
        if not subs:
            subs = {short: self._default}
        return [(_full(project, name), d) for name, d in subs.items()]


def _full(project: str, subscription: str) -> str:
    if subscription.startswith("projects/"):
        return subscription
    return f"projects/{project}/subscriptions/{subscription}"


async def deliver(attempts: int, push: Delivery) -> _push.PushResult:
    """One delivery of a message (its `attempts`-th redelivery) to its subscription's dispatcher."""
    assert push.message is not None
    assert push.dispatcher is not None
    msg = dataclasses.replace(push.message, delivery_attempt=attempts + 1)
    handled = await handle(push.dispatcher, msg)
    r = handled.result
    if handled.status != r.status:  # acked although not a 2xx (an unknown class)
        r = _push.PushResult(handled.status, r.outcome, r.class_id, r.error)
    return r
