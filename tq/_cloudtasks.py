"""CloudTasksSubmitter: creates tasks in Google Cloud Tasks."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import grpc
from google.api_core import exceptions as gexc

from tq._errors import SubmitError
from tq._submitter import Submission

_PAUSE_S = 0.1
_MAX_PAUSE_S = 2.0


def _code_of(err: BaseException) -> grpc.StatusCode:
    if isinstance(err, gexc.GoogleAPICallError):
        code = err.grpc_status_code
        if code is not None:
            return code
    if isinstance(err, grpc.RpcError):
        return err.code()
    return grpc.StatusCode.UNKNOWN


class CloudTasksSubmitter:
    """Creates tasks through google-cloud-tasks (sync and async clients).

    Args:
      endpoint: "host:port" of a Cloud Tasks API to use over plain gRPC (an
        emulator); None talks to the real service with default credentials.
      client, async_client: ready clients to use instead (they win over
        `endpoint`).
      attempts: tries per task on transient gRPC codes (UNAVAILABLE,
        DEADLINE_EXCEEDED, ...), with jittered backoff; at least 1.
      timeout_s: deadline of one CreateTask call.

    Raises `tq.SubmitError` carrying the gRPC code (ALREADY_EXISTS included:
    callers count it as success).
    """

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        client: Any = None,
        async_client: Any = None,
        attempts: int = 3,
        timeout_s: float = 20.0,
    ) -> None:
        self._endpoint = endpoint
        self._client = client
        self._async_client = async_client
        self._attempts = max(1, attempts)
        self._timeout_s = timeout_s

    @property
    def client(self) -> Any:
        """The sync CloudTasksClient (made on first use)."""
        if self._client is None:
            from google.cloud import tasks_v2
            from google.cloud.tasks_v2.services.cloud_tasks.transports import (
                CloudTasksGrpcTransport,
            )

            if self._endpoint:
                channel = grpc.insecure_channel(self._endpoint)
                self._client = tasks_v2.CloudTasksClient(
                    transport=CloudTasksGrpcTransport(channel=channel)
                )
            else:
                self._client = tasks_v2.CloudTasksClient()
        return self._client

    @property
    def async_client(self) -> Any:
        """The CloudTasksAsyncClient (made on first use, in the running loop)."""
        if self._async_client is None:
            from google.cloud import tasks_v2
            from google.cloud.tasks_v2.services.cloud_tasks.transports import (
                CloudTasksGrpcAsyncIOTransport,
            )

            if self._endpoint:
                channel = grpc.aio.insecure_channel(self._endpoint)
                self._async_client = tasks_v2.CloudTasksAsyncClient(
                    transport=CloudTasksGrpcAsyncIOTransport(channel=channel)
                )
            else:
                self._async_client = tasks_v2.CloudTasksAsyncClient()
        return self._async_client

    def _pause(self, attempt: int) -> float:
        return float(min(_MAX_PAUSE_S, _PAUSE_S * 2**attempt) * (0.5 + random.random() / 2))

    def submit(self, submission: Submission) -> None:
        for attempt in range(self._attempts):
            try:
                self.client.create_task(request=submission.request, timeout=self._timeout_s)
                return
            except (gexc.GoogleAPICallError, grpc.RpcError) as e:
                err = SubmitError(_code_of(e), str(e))
                if not err.transient or attempt == self._attempts - 1:
                    raise err from e
            time.sleep(self._pause(attempt))

    async def submit_async(self, submission: Submission) -> None:
        for attempt in range(self._attempts):
            try:
                await self.async_client.create_task(
                    request=submission.request, timeout=self._timeout_s
                )
                return
            except (gexc.GoogleAPICallError, grpc.RpcError) as e:
                err = SubmitError(_code_of(e), str(e))
                if not err.transient or attempt == self._attempts - 1:
                    raise err from e
            await asyncio.sleep(self._pause(attempt))
