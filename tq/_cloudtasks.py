"""CloudTasksSubmitter: creates tasks in Google Cloud Tasks (or its emulator)."""

from __future__ import annotations

import asyncio
import random as _random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.api_core import exceptions as gexc

from tq import _metrics
from tq._errors import ConfigError, SubmitError
from tq._submitter import Submission, time_left

# An emulator runs next to the tests or the dev server: never send its
# traffic through a proxy named in the environment.
_EMULATOR_CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]

T = TypeVar("T")


def code_of(err: BaseException) -> grpc.StatusCode:
    """The gRPC status code of an error raised by a Cloud Tasks client call."""
    if isinstance(err, gexc.GoogleAPICallError):
        code = err.grpc_status_code
        if code is not None:
            return code
    if isinstance(err, grpc.RpcError):
        code = err.code()
        if isinstance(code, grpc.StatusCode):
            return code
    return grpc.StatusCode.UNKNOWN


class CloudTasksSubmitter:
    """Creates tasks through google-cloud-tasks, from sync and async code.

    Args:
      endpoint: "host:port" of a Cloud Tasks API spoken over plain gRPC with
        no credentials: an emulator (`gcloud-tasks-emulator`). None (the
        default) talks to the real service with Application Default
        Credentials.
      client, async_client: ready `CloudTasksClient` / `CloudTasksAsyncClient`
        (or objects with the same `create_task`) to use instead; they win
        over `endpoint`, and `close()` leaves them open (their owner closes
        them).
      attempts: tries per task, at least 1 (default 3). Only transient gRPC
        codes (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...; see
        `tq.SubmitError.transient`) are tried again; permanent ones
        (NOT_FOUND for a missing queue, INVALID_ARGUMENT, PERMISSION_DENIED,
        ...) and ALREADY_EXISTS are raised at once.
      timeout_s: deadline of one CreateTask call (default 20 s, the client's).
      backoff_s, max_backoff_s: the pause before the second try, doubled
        before each next one up to `max_backoff_s` (defaults 0.1 s and 2 s),
        each scaled by a random factor in [0.5, 1).
      random: the source of that jitter (default `random.random`).
      sleep, sleep_async: how pauses are taken (defaults `time.sleep`,
        `asyncio.sleep`); tests pass recorders.

    Inside `tq._submitter.submit_deadline(...)` (the outbox's happy path sets
    one) call timeouts and retries stop at that deadline.

    `submit` / `submit_async` return the task's full name (the one Cloud
    Tasks picked, from its CreateTask response, for a task added without a
    name) and raise `tq.SubmitError` carrying the gRPC code; a task whose
    name exists already raises it with ALREADY_EXISTS, which `add_task` and
    the outbox count as success.

    The sync client is made on first use and shared by all threads. The async
    client is made on first use in each event loop (gRPC's asyncio channels
    belong to the loop that made them). Call `close()` (and `await aclose()`
    from the loop that used the async client) when done, or use the
    submitter as a (async) context manager.
    """

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        client: Any = None,
        async_client: Any = None,
        attempts: int = 3,
        timeout_s: float = 20.0,
        backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
        random: Callable[[], float] = _random.random,
        sleep: Callable[[float], None] = time.sleep,
        sleep_async: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if attempts < 1:
            raise ConfigError(f"attempts must be at least 1, not {attempts}")
        if timeout_s <= 0 or backoff_s < 0 or max_backoff_s < backoff_s:
            raise ConfigError(
                "timeout_s must be positive and 0 <= backoff_s <= max_backoff_s; got "
                f"timeout_s={timeout_s}, backoff_s={backoff_s}, max_backoff_s={max_backoff_s}"
            )
        self.endpoint = endpoint
        self.attempts = attempts
        self.timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._random = random
        self._sleep = sleep
        self._sleep_async = sleep_async
        self._lock = threading.Lock()
        self._client = client
        self._owns_client = client is None
        self._given_async_client = async_client
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        where = self.endpoint or "cloudtasks.googleapis.com"
        return f"CloudTasksSubmitter({where}, attempts={self.attempts})"

    @property
    def client(self) -> Any:
        """The sync `CloudTasksClient` (made on first use)."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    @property
    def async_client(self) -> Any:
        """The `CloudTasksAsyncClient` of the running event loop (made on first use)."""
        if self._given_async_client is not None:
            return self._given_async_client
        loop = asyncio.get_running_loop()
        with self._lock:
            c = self._async_clients.get(loop)
            if c is None:
                c = self._async_clients[loop] = self._make_async_client()
            return c

    def _make_client(self) -> Any:
        from google.cloud import tasks_v2
        from google.cloud.tasks_v2.services.cloud_tasks.transports import (
            CloudTasksGrpcTransport,
        )

        if self.endpoint:
            channel = grpc.insecure_channel(self.endpoint, options=_EMULATOR_CHANNEL_OPTIONS)
            return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))
        return _with_credentials(tasks_v2.CloudTasksClient)

    def _make_async_client(self) -> Any:
        from google.cloud import tasks_v2
        from google.cloud.tasks_v2.services.cloud_tasks.transports import (
            CloudTasksGrpcAsyncIOTransport,
        )

        if self.endpoint:
            channel = grpc.aio.insecure_channel(self.endpoint, options=_EMULATOR_CHANNEL_OPTIONS)
            return tasks_v2.CloudTasksAsyncClient(
                transport=CloudTasksGrpcAsyncIOTransport(channel=channel)
            )
        return _with_credentials(tasks_v2.CloudTasksAsyncClient)

    def pause_before(self, attempt: int) -> float:
        """Seconds to wait after failed try number `attempt` (0-based)."""
        base = min(self._max_backoff_s, self._backoff_s * (1 << min(attempt, 32)))
        return base * (0.5 + self._random() / 2)

    def _timeout(self) -> float:
        """The deadline of the next call: timeout_s, cut by a submit deadline."""
        left = time_left()
        if left is None:
            return self.timeout_s
        if left <= 0:
            raise SubmitError(grpc.StatusCode.DEADLINE_EXCEEDED, "submit deadline passed")
        return min(self.timeout_s, left)

    def _final(
        self, err: BaseException, task_class: str | None, attempt: int
    ) -> SubmitError | None:
        """The SubmitError to raise for `err`, or None to try again.

        `task_class`: of the submission whose retry is counted; None for a deletion.
        """
        e = SubmitError(code_of(err), getattr(err, "message", None) or str(err))
        left = time_left()
        out_of_time = left is not None and left <= self.pause_before(attempt)
        if e.transient and attempt < self.attempts - 1 and not out_of_time:
            if task_class is not None:
                _metrics.add("tq_submit_retries", task_class=task_class, code=e.code.name)
            return None
        return e

    def submit(self, submission: Submission) -> str | None:
        """Creates the task, blocking; returns its name. Raises `tq.SubmitError`."""
        client = self.client

        def create(rpc_timeout: float) -> str | None:
            created = client.create_task(request=submission.request, timeout=rpc_timeout)
            return _created_name(submission, created)

        return self._with_retries(create, submission.task_class)

    async def submit_async(self, submission: Submission) -> str | None:
        """Creates the task without blocking the event loop; returns its name.

        Raises `tq.SubmitError`.
        """
        client = self.async_client

        async def create(rpc_timeout: float) -> str | None:
            created = await client.create_task(request=submission.request, timeout=rpc_timeout)
            return _created_name(submission, created)

        return await self._with_retries_async(create, submission.task_class)

    def delete_task(self, name: str) -> bool:
        """Deletes the task `name` (Cloud Tasks' DeleteTask), blocking.

        True when it was deleted; False on NOT_FOUND: no such task waits or
        runs (never created, run to its end, failed for good, deleted
        already; or no such queue). Transient codes are tried again as in
        `submit`; after a lost reply, a retry may find the task gone and
        answer False. Other codes raise `tq.SubmitError`.
        """
        client = self.client

        def delete(rpc_timeout: float) -> bool:
            try:
                client.delete_task(name=name, timeout=rpc_timeout)
            except (gexc.GoogleAPICallError, grpc.RpcError) as err:
                if code_of(err) == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
            return True

        return self._with_retries(delete, None)

    async def delete_task_async(self, name: str) -> bool:
        """`delete_task` without blocking the event loop."""
        client = self.async_client

        async def delete(rpc_timeout: float) -> bool:
            try:
                await client.delete_task(name=name, timeout=rpc_timeout)
            except (gexc.GoogleAPICallError, grpc.RpcError) as err:
                if code_of(err) == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
            return True

        return await self._with_retries_async(delete, None)

    def _with_retries(self, call: Callable[[float], T], task_class: str | None) -> T:
        """`call(rpc_timeout)`, tried again after transient failures (see `_final`).

        `task_class`: of the submission whose retries are counted; None for a deletion.
        """
        attempt = 0
        while True:  # the last attempt returns or raises
            try:
                return call(self._timeout())
            except (gexc.GoogleAPICallError, grpc.RpcError) as err:
                final = self._final(err, task_class, attempt)
                if final is not None:
                    raise final from err
            self._sleep(self.pause_before(attempt))
            attempt += 1

    async def _with_retries_async(
        self, call: Callable[[float], Awaitable[T]], task_class: str | None
    ) -> T:
        """`_with_retries` for a coroutine function, sleeping without blocking the loop."""
        attempt = 0
        while True:  # the last attempt returns or raises
            try:
                return await call(self._timeout())
            except (gexc.GoogleAPICallError, grpc.RpcError) as err:
                final = self._final(err, task_class, attempt)
                if final is not None:
                    raise final from err
            await self._sleep_async(self.pause_before(attempt))
            attempt += 1

    def close(self) -> None:
        """Closes the sync client's channel, if this submitter made it.

        Async clients are dropped here without closing (their channels can
        only be closed from their own loop): call `aclose()` for those.
        """
        with self._lock:
            self._async_clients.clear()
            if not self._owns_client:
                return
            client, self._client = self._client, None
        if client is not None:
            client.transport.close()

    async def aclose(self) -> None:
        """Closes the async client of the running loop (if made here) and the sync one."""
        with self._lock:
            client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.transport.close()
        self.close()

    def __enter__(self) -> CloudTasksSubmitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> CloudTasksSubmitter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _created_name(submission: Submission, created: Any) -> str | None:
    """The name of a created task: the request's, else the one Cloud Tasks gave it."""
    name = submission.request.task.name  # type: ignore[attr-defined]
    if name:
        return str(name)
    name = getattr(created, "name", None)
    return name if isinstance(name, str) and name else None


def _with_credentials(make: Callable[[], Any]) -> Any:
    from google.auth import exceptions as auth_exceptions

    try:
        return make()
    except auth_exceptions.DefaultCredentialsError as e:
        raise ConfigError(
            "CloudTasksSubmitter: no Google credentials found (set up Application Default "
            "Credentials), or pass endpoint='host:port' to use a Cloud Tasks emulator"
        ) from e
