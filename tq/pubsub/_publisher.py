"""Publisher: the Submitter that publishes the messages of topic classes to Pub/Sub."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
from google.api_core import exceptions as gexc

from tq._cloudtasks import code_of
from tq._errors import ConfigError, SubmitError
from tq._pb.publish_pb2 import PublishRequest
from tq._submitter import Submission, time_left
from tq._topic import message_name

_EMULATOR_CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


class Publisher:
    """Publishes the messages of topic classes through `google-cloud-pubsub`.

    A `tq.Submitter` that takes topics only: pair it with a Cloud Tasks
    submitter in a `tq.Router` (`tq.Router(queues=tq.CloudTasksSubmitter(),
    topics=tq.pubsub.Publisher())`). Needs `pip install tq[pubsub]`.

    Args:
      endpoint: "host:port" of a Pub/Sub emulator, spoken to over plain gRPC
        with no credentials. None (default) talks to Pub/Sub with
        Application Default Credentials, or to `$PUBSUB_EMULATOR_HOST`
        when that is set (the client library's own rule).
      client: a ready `google.cloud.pubsub_v1.PublisherClient` to use
        instead (it wins over the settings here; `close()` leaves it open).
      max_messages, max_bytes, max_latency_s: the client's batch settings
        (defaults 100 messages, 1 MB, 1 ms): messages published at about
        the same time, from any thread or event loop, share one Publish
        call. Every `add_task` and happy path waits for its message, so the
        latency is added to each: tq's default is 1 ms, not the client's
        10 ms (which publishes 3 times slower serially; bench/pubsub.py).
      enable_message_ordering: deliver tasks with the same `ordering_key`
        in order (default off; tasks with a key are refused by the client
        while off).
      timeout_s: how long one publish may take, the client's own retries of
        transient errors included (default 60 s); inside the outbox's
        happy path, its submit deadline cuts it shorter.

    `submit` waits for the message ID and returns the message's name,
    `<topic>/messages/<message ID>` (what `add_task`'s `tq.AddedTask` carries);
    `submit_async` awaits it without blocking the event loop (the client
    publishes from its own threads).
    Failures raise `tq.SubmitError` with the gRPC code: NOT_FOUND for a
    missing topic and PERMISSION_DENIED are permanent (the outbox parks the
    reminder); UNAVAILABLE, DEADLINE_EXCEEDED and the like are transient.
    A publish that timed out here may still be published by the client
    later: subscribers must expect duplicates (see docs/pubsub.md).
    """

    takes_topics = True
    takes_queues = False

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        client: Any = None,
        max_messages: int = 100,
        max_bytes: int = 1_000_000,
        max_latency_s: float = 0.001,
        enable_message_ordering: bool = False,
        timeout_s: float = 60.0,
    ) -> None:
        if max_messages < 1 or max_bytes < 1 or max_latency_s < 0 or timeout_s <= 0:
            raise ConfigError(
                "Publisher: max_messages and max_bytes must be positive, max_latency_s >= 0 "
                "and timeout_s > 0"
            )
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._batch = (max_bytes, max_latency_s, max_messages)
        self._ordering = enable_message_ordering
        self._client = client
        self._owns_client = client is None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"tq.pubsub.Publisher({self.endpoint or 'pubsub.googleapis.com'})"

    @property
    def client(self) -> Any:
        """The `PublisherClient` (made on first use, shared by every thread and loop)."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        pubsub_v1 = import_pubsub()
        from google.api_core.retry import Retry

        retry = Retry(
            predicate=_transient,
            initial=0.1,
            maximum=5.0,
            multiplier=2.0,
            timeout=self.timeout_s,
        )
        options = pubsub_v1.types.PublisherOptions(
            enable_message_ordering=self._ordering, retry=retry, timeout=self.timeout_s
        )
        batch = pubsub_v1.types.BatchSettings(*self._batch)
        if self.endpoint:
            from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

            channel = grpc.insecure_channel(self.endpoint, options=_EMULATOR_CHANNEL_OPTIONS)
            return pubsub_v1.PublisherClient(
                batch_settings=batch,
                publisher_options=options,
                transport=PublisherGrpcTransport(channel=channel),
            )
        from google.auth import exceptions as auth_exceptions

        try:
            return pubsub_v1.PublisherClient(batch_settings=batch, publisher_options=options)
        except auth_exceptions.DefaultCredentialsError as e:
            raise ConfigError(
                "tq.pubsub.Publisher: no Google credentials found (set up Application Default "
                "Credentials), or pass endpoint='host:port' to use the Pub/Sub emulator"
            ) from e

    def _publish(self, submission: Submission) -> Any:
        req = submission.request
        if type(req) is not PublishRequest:
            raise SubmitError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task of class {submission.task_class!r} is a Cloud Tasks task; "
                "tq.pubsub.Publisher publishes only topic classes' messages",
            )
        try:
            return self.client.publish(
                req.topic, req.data, ordering_key=req.ordering_key, **dict(req.attributes)
            )
        except (ValueError, TypeError) as e:  # e.g. an ordering key with ordering off
            raise SubmitError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
        except RuntimeError as e:  # published after stop()
            raise SubmitError(grpc.StatusCode.UNAVAILABLE, str(e)) from e

    def _wait_s(self) -> float:
        left = time_left()
        if left is None:
            return self.timeout_s
        if left <= 0:
            raise SubmitError(grpc.StatusCode.DEADLINE_EXCEEDED, "submit deadline passed")
        return min(self.timeout_s, left)

    def submit(self, submission: Submission) -> str:
        """Publishes the message and waits for Pub/Sub to take it; returns its name.

        The name is `<topic>/messages/<message ID>` (see `message_name`).
        Raises `tq.SubmitError`.
        """
        wait = self._wait_s()
        future = self._publish(submission)
        try:
            message_id = future.result(timeout=wait)
        except Exception as e:
            raise _submit_error(e, wait) from e
        return message_name(submission.topic, message_id)

    async def submit_async(self, submission: Submission) -> str:
        """`submit` without blocking the event loop."""
        wait = self._wait_s()
        future = self._publish(submission)
        try:
            message_id = await asyncio.wait_for(asyncio.wrap_future(future), wait)
        except Exception as e:
            raise _submit_error(e, wait) from e
        return message_name(submission.topic, message_id)

    def close(self) -> None:
        """Publishes what is batched, then stops the client (if this publisher made it)."""
        with self._lock:
            client, self._client = self._client, (None if self._owns_client else self._client)
        if client is not None and self._owns_client:
            client.stop()
            client.transport.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def import_pubsub() -> Any:
    """`google.cloud.pubsub_v1`, or a ConfigError saying how to install it."""
    try:
        from google.cloud import pubsub_v1  # type: ignore[attr-defined,unused-ignore]
    except ImportError as e:
        raise ConfigError("tq.pubsub needs google-cloud-pubsub: pip install 'tq[pubsub]'") from e
    return pubsub_v1


def _transient(err: BaseException) -> bool:
    return SubmitError(code_of(err), "").transient


def _submit_error(err: BaseException, waited: float) -> SubmitError:
    if isinstance(err, TimeoutError):  # concurrent.futures' and asyncio's too
        return SubmitError(grpc.StatusCode.DEADLINE_EXCEEDED, f"not published within {waited:g} s")
    if isinstance(err, SubmitError):
        return err
    if isinstance(err, gexc.GoogleAPICallError | grpc.RpcError):
        return SubmitError(code_of(err), getattr(err, "message", None) or str(err))
    return SubmitError(grpc.StatusCode.UNKNOWN, f"{type(err).__name__}: {err}")
