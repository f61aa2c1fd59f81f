"""Subscriber: a pull worker running the handlers of a Pub/Sub subscription's messages."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any

import grpc

from tq._dispatcher import Dispatcher
from tq._errors import ConfigError
from tq.pubsub._message import Handled, Received, handle
from tq.pubsub._publisher import _EMULATOR_CHANNEL_OPTIONS, import_pubsub

log = logging.getLogger("tq.pubsub")


class Subscriber:
    """Receives a subscription's messages by streaming pull and runs their handlers.

    For consumers without an HTTP endpoint. Each message goes through the
    same path as a push (`tq.pubsub._message`): the handler of its
    `tq_class` runs with `tq.execution_info()` set; the message is acked
    when the handler returns (or raises `Fatal` / `Ignore`, or the class is
    unknown here) and nacked otherwise, so Pub/Sub delivers it again.

    Args:
      dispatcher: whose task classes' handlers run.
      subscription: the full subscription name
        (`projects/P/subscriptions/S`), or a short ID resolved with the
        dispatcher's `cloud_project`.
      endpoint: "host:port" of a Pub/Sub emulator (plain gRPC, no
        credentials); None: Pub/Sub with Application Default Credentials,
        or `$PUBSUB_EMULATOR_HOST`.
      client: a ready `SubscriberClient` to use instead (the caller closes it).
      max_messages, max_bytes: flow control: the most messages (default
        100) and bytes (default 100 MiB) received and not yet acked or
        nacked; the stream pauses beyond them.
      concurrency: the most handlers running at once (default 10); async
        handlers run on the event loop that runs the subscriber, sync ones
        in its default thread pool.

    Use `await run()` in the foreground (until `request_stop()` or
    cancellation), or `await start()` / `await stop()` (e.g. in an app's
    lifespan). Stopping is graceful: the stream closes, and the handlers
    running finish and their messages are acked or nacked before `stop()`
    returns; messages received and not yet started are nacked by the client
    and delivered again. Needs `pip install tq[pubsub]`.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        subscription: str,
        *,
        endpoint: str | None = None,
        client: Any = None,
        max_messages: int = 100,
        max_bytes: int = 100 * 1024 * 1024,
        concurrency: int = 10,
    ) -> None:
        if max_messages < 1 or max_bytes < 1 or concurrency < 1:
            raise ConfigError("Subscriber: max_messages, max_bytes and concurrency must be >= 1")
        if "/" not in subscription:
            if not dispatcher.cloud_project:
                raise ConfigError(
                    f"subscription {subscription!r} is a short name: set the dispatcher's "
                    "cloud_project or give 'projects/P/subscriptions/S'"
                )
            subscription = f"projects/{dispatcher.cloud_project}/subscriptions/{subscription}"
        self.dispatcher = dispatcher
        self.subscription = subscription
        self.endpoint = endpoint
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.concurrency = concurrency
        self._client = client
        self._owns_client = client is None
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.handled = 0  # messages handled (acked or nacked), for stats and tests
        self._count_lock = threading.Lock()

    def _make_client(self) -> Any:
        pubsub_v1 = import_pubsub()
        if self.endpoint:
            from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

            channel = grpc.insecure_channel(self.endpoint, options=_EMULATOR_CHANNEL_OPTIONS)
            return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
        return pubsub_v1.SubscriberClient()

    async def run(self) -> None:
        """Receives and handles messages until `request_stop()`, `stop()` or cancellation."""
        pubsub_v1 = import_pubsub()
        loop = asyncio.get_running_loop()
        client = self._client if self._client is not None else self._make_client()
        executor = concurrent.futures.ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="tq-pubsub-subscriber"
        )
        scheduler = pubsub_v1.subscriber.scheduler.ThreadScheduler(executor)
        flow = pubsub_v1.types.FlowControl(max_messages=self.max_messages, max_bytes=self.max_bytes)
        self._stop.clear()
        pull = client.subscribe(
            self.subscription,
            lambda m: self._on_message(loop, m),
            flow_control=flow,
            scheduler=scheduler,
            await_callbacks_on_shutdown=True,
        )
        log.info("tq.pubsub: receiving %s", self.subscription)
        done = asyncio.ensure_future(asyncio.wrap_future(pull))
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((done, stop), return_when=asyncio.FIRST_COMPLETED)
            if done.done():
                done.result()  # the stream failed for good: raise it
        finally:
            stop.cancel()
            pull.cancel()
            done.cancel()
            # Waits (off the loop, which the running handlers need) for the
            # stream to close and the callbacks to finish.
            await asyncio.to_thread(_settle, pull)
            await asyncio.to_thread(executor.shutdown, True)
            if self._owns_client and self._client is None:
                await asyncio.to_thread(client.close)
            log.info("tq.pubsub: stopped receiving %s", self.subscription)

    def _on_message(self, loop: asyncio.AbstractEventLoop, message: Any) -> None:
        """The client's callback (in its thread pool): run the handler on the loop, ack or nack."""
        msg = Received(
            data=bytes(message.data),
            attributes=dict(message.attributes),
            message_id=str(message.message_id),
            publish_time=message.publish_time,
            delivery_attempt=message.delivery_attempt,
            subscription=self.subscription,
            ordering_key=str(message.ordering_key or ""),
        )
        try:
            handled: Handled = asyncio.run_coroutine_threadsafe(
                handle(self.dispatcher, msg), loop
            ).result()
        except BaseException:
            message.nack()
            raise
        if handled.ack:
            message.ack()
        else:
            message.nack()
        with self._count_lock:
            self.handled += 1

    async def start(self) -> None:
        """Runs the subscriber in a background asyncio task (see `stop`)."""
        if self._runner is None or self._runner.done():
            self._stop.clear()
            self._runner = asyncio.create_task(self.run(), name=f"tq.pubsub {self.subscription}")

    def request_stop(self) -> None:
        """Asks `run()` to stop (e.g. from a signal handler); returns at once."""
        self._stop.set()

    async def stop(self) -> None:
        """Stops receiving; returns once the running handlers are done (see the class)."""
        self._stop.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner


def _settle(pull: Any) -> None:
    try:
        pull.result()
    except concurrent.futures.CancelledError:
        pass
    except Exception:
        log.exception("tq.pubsub: the streaming pull ended with an error")
