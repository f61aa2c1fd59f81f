"""CloudTasksSubmitter against fake clients raising google.api_core errors."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import google.auth
import grpc
import pytest
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exceptions

import tq
from tq import _metrics
from tq._request import CreateTaskRequest
from tq._submitter import Submission

QUEUE = "projects/p/locations/l/queues/q"

TRANSIENT = [
    (gexc.ServiceUnavailable, grpc.StatusCode.UNAVAILABLE),
    (gexc.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (gexc.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (gexc.Aborted, grpc.StatusCode.ABORTED),
    (gexc.InternalServerError, grpc.StatusCode.INTERNAL),
    (gexc.Unknown, grpc.StatusCode.UNKNOWN),
    (gexc.Cancelled, grpc.StatusCode.CANCELLED),
]
PERMANENT = [
    (gexc.NotFound, grpc.StatusCode.NOT_FOUND),
    (gexc.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (gexc.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (gexc.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (gexc.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (gexc.MethodNotImplemented, grpc.StatusCode.UNIMPLEMENTED),
]


def _submission(name: str = "") -> Submission:
    req = CreateTaskRequest(parent=QUEUE)
    req.task.http_request.url = "https://app.example.com/internal/tasks/t/c"
    if name:
        req.task.name = f"{QUEUE}/tasks/{name}"
    return Submission(request=req, task_class="c", created=dt.datetime.now(dt.UTC))


class FakeClient:
    """Answers create_task with the next scripted outcome (an exception or None)."""

    def __init__(self, *outcomes: BaseException | None) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[dict[str, Any]] = []
        self.closed = False
        self.transport = self

    def _next(self, **kwargs: Any) -> object:
        self.calls.append(kwargs)
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        return kwargs["request"].task

    def create_task(self, **kwargs: Any) -> object:
        return self._next(**kwargs)

    def close(self) -> None:
        self.closed = True


class FakeAsyncClient(FakeClient):
    async def create_task(self, **kwargs: Any) -> object:
        await asyncio.sleep(0)
        return self._next(**kwargs)


class Pauses:
    def __init__(self) -> None:
        self.taken: list[float] = []

    def sleep(self, s: float) -> None:
        self.taken.append(s)

    async def sleep_async(self, s: float) -> None:
        self.taken.append(s)


def _submitter(
    client: FakeClient, pauses: Pauses, *, attempts: int = 3, jitter: float = 0.5
) -> tq.CloudTasksSubmitter:
    return tq.CloudTasksSubmitter(
        client=client,
        async_client=client,
        attempts=attempts,
        timeout_s=7.0,
        backoff_s=0.1,
        max_backoff_s=0.3,
        random=lambda: jitter,
        sleep=pauses.sleep,
        sleep_async=pauses.sleep_async,
    )


def test_submit_hands_the_raw_request_and_deadline_to_the_client() -> None:
    client = FakeClient()
    sub = _submission("abc")
    _submitter(client, Pauses()).submit(sub)
    assert client.calls == [{"request": sub.request, "timeout": 7.0}]


async def test_submit_async_hands_the_raw_request_and_deadline_to_the_client() -> None:
    client = FakeAsyncClient()
    sub = _submission("abc")
    await _submitter(client, Pauses()).submit_async(sub)
    assert client.calls == [{"request": sub.request, "timeout": 7.0}]


@pytest.mark.parametrize(("exc", "code"), TRANSIENT)
def test_transient_codes_are_retried_until_success(
    exc: type[gexc.GoogleAPICallError], code: grpc.StatusCode
) -> None:
    client, pauses = FakeClient(exc("busy"), exc("busy")), Pauses()
    _metrics.reset()
    _submitter(client, pauses).submit(_submission())
    assert len(client.calls) == 3
    assert len(pauses.taken) == 2
    assert _metrics.value("tq_submit_retries", code=code.name) == 2


@pytest.mark.parametrize(("exc", "code"), TRANSIENT)
async def test_transient_codes_are_retried_until_success_async(
    exc: type[gexc.GoogleAPICallError], code: grpc.StatusCode
) -> None:
    client, pauses = FakeAsyncClient(exc("busy"), exc("busy")), Pauses()
    await _submitter(client, pauses).submit_async(_submission())
    assert len(client.calls) == 3
    assert len(pauses.taken) == 2


def test_transient_failure_raises_after_the_last_attempt() -> None:
    client = FakeClient(*[gexc.ServiceUnavailable("down")] * 10)
    pauses = Pauses()
    with pytest.raises(tq.SubmitError) as info:
        _submitter(client, pauses, attempts=4).submit(_submission())
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.transient
    assert "down" in info.value.message
    assert isinstance(info.value.__cause__, gexc.ServiceUnavailable)
    assert len(client.calls) == 4
    assert len(pauses.taken) == 3


async def test_transient_failure_raises_after_the_last_attempt_async() -> None:
    client = FakeAsyncClient(*[gexc.DeadlineExceeded("slow")] * 10)
    pauses = Pauses()
    with pytest.raises(tq.SubmitError) as info:
        await _submitter(client, pauses, attempts=2).submit_async(_submission())
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(client.calls) == 2
    assert len(pauses.taken) == 1


def test_one_attempt_means_no_retry() -> None:
    client, pauses = FakeClient(gexc.ServiceUnavailable("down")), Pauses()
    with pytest.raises(tq.SubmitError):
        _submitter(client, pauses, attempts=1).submit(_submission())
    assert len(client.calls) == 1
    assert pauses.taken == []


@pytest.mark.parametrize(("exc", "code"), PERMANENT)
def test_permanent_codes_are_raised_at_once(
    exc: type[gexc.GoogleAPICallError], code: grpc.StatusCode
) -> None:
    client, pauses = FakeClient(exc("no")), Pauses()
    with pytest.raises(tq.SubmitError) as info:
        _submitter(client, pauses).submit(_submission())
    assert info.value.code == code
    assert not info.value.transient
    assert len(client.calls) == 1
    assert pauses.taken == []


@pytest.mark.parametrize(("exc", "code"), PERMANENT)
async def test_permanent_codes_are_raised_at_once_async(
    exc: type[gexc.GoogleAPICallError], code: grpc.StatusCode
) -> None:
    client, pauses = FakeAsyncClient(exc("no")), Pauses()
    with pytest.raises(tq.SubmitError) as info:
        await _submitter(client, pauses).submit_async(_submission())
    assert info.value.code == code
    assert len(client.calls) == 1
    assert pauses.taken == []


def test_already_exists_is_raised_with_its_code_and_not_retried() -> None:
    client, pauses = FakeClient(gexc.AlreadyExists("taken")), Pauses()
    with pytest.raises(tq.SubmitError) as info:
        _submitter(client, pauses).submit(_submission("abc"))
    assert info.value.already_exists
    assert info.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert len(client.calls) == 1
    assert pauses.taken == []


async def test_already_exists_is_raised_with_its_code_and_not_retried_async() -> None:
    client, pauses = FakeAsyncClient(gexc.AlreadyExists("taken")), Pauses()
    with pytest.raises(tq.SubmitError) as info:
        await _submitter(client, pauses).submit_async(_submission("abc"))
    assert info.value.already_exists
    assert len(client.calls) == 1


def test_already_exists_after_a_lost_reply_ends_the_retries() -> None:
    # The first try created the task but its reply was lost; the named retry
    # then finds it.
    client = FakeClient(gexc.DeadlineExceeded("lost"), gexc.AlreadyExists("taken"))
    pauses = Pauses()
    with pytest.raises(tq.SubmitError) as info:
        _submitter(client, pauses, attempts=5).submit(_submission("abc"))
    assert info.value.already_exists
    assert len(client.calls) == 2


class RawRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code


def test_raw_grpc_errors_are_classified_by_their_code() -> None:
    client = FakeClient(
        RawRpcError(grpc.StatusCode.UNAVAILABLE), RawRpcError(grpc.StatusCode.NOT_FOUND)
    )
    pauses = Pauses()
    with pytest.raises(tq.SubmitError) as info:
        _submitter(client, pauses).submit(_submission())
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert len(client.calls) == 2


def test_other_exceptions_pass_through_untouched() -> None:
    client = FakeClient(KeyError("bug"))
    with pytest.raises(KeyError):
        _submitter(client, Pauses()).submit(_submission())
    assert len(client.calls) == 1


def test_pauses_double_and_stay_within_the_cap() -> None:
    client = FakeClient(*[gexc.ServiceUnavailable("down")] * 5)
    low, high = Pauses(), Pauses()
    with pytest.raises(tq.SubmitError):
        _submitter(client, low, attempts=5, jitter=0.0).submit(_submission())
    client.outcomes = [gexc.ServiceUnavailable("down")] * 5
    with pytest.raises(tq.SubmitError):
        _submitter(client, high, attempts=5, jitter=0.999).submit(_submission())
    # base 0.1 doubling, capped at 0.3; jitter scales each by [0.5, 1).
    assert low.taken == pytest.approx([0.05, 0.1, 0.15, 0.15])
    assert high.taken == pytest.approx([0.1, 0.2, 0.3, 0.3], rel=1e-3)


def test_dispatcher_counts_already_exists_as_submitted() -> None:
    disp = tq.Dispatcher(
        cloud_project="p",
        cloud_region="l",
        default_target_host="app.example.com",
        submitter=_submitter(FakeClient(gexc.AlreadyExists("taken")), Pauses()),
    )
    from tests.testpb import payloads_pb2 as pb

    disp.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    )
    submits = {"task_class": "greet", "path": "direct"}
    before = _metrics.snapshot()
    disp.add_task(tq.Task(payload=pb.Greet(), deduplication_key="k"))  # does not raise
    # Counted once, among the submits, as done: the task exists (added earlier
    # under that key). Nothing else was counted: no failure, no retry.
    after = _metrics.snapshot()
    counted = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert counted == {
        (
            "tq_submits",
            tuple(sorted({**submits, "queue": "q", "code": "ALREADY_EXISTS"}.items())),
        ): 1
    }


def test_dispatcher_raises_permanent_submit_errors() -> None:
    from tests.testpb import payloads_pb2 as pb

    disp = tq.Dispatcher(
        cloud_project="p",
        cloud_region="l",
        default_target_host="app.example.com",
        submitter=_submitter(FakeClient(gexc.NotFound("no queue")), Pauses()),
    )
    disp.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    )
    with pytest.raises(tq.SubmitError) as info:
        disp.add_task(tq.Task(payload=pb.Greet()))
    assert info.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "kwargs",
    [{"attempts": 0}, {"timeout_s": 0}, {"backoff_s": -1}, {"backoff_s": 3, "max_backoff_s": 2}],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(tq.ConfigError):
        tq.CloudTasksSubmitter(**kwargs)


def test_close_closes_the_channel_it_made() -> None:
    sub = tq.CloudTasksSubmitter(endpoint="127.0.0.1:9")  # never dialled: channels are lazy
    client = sub.client
    assert sub.client is client
    sub.close()
    with pytest.raises(ValueError, match="closed channel"):
        client.create_task(request=_submission().request, timeout=1)
    assert sub.client is not client  # a new one on next use
    sub.close()


def test_close_leaves_given_clients_open() -> None:
    client = FakeClient()
    with _submitter(client, Pauses()) as sub:
        pass
    assert not client.closed
    assert sub.client is client


def test_async_clients_belong_to_their_event_loop() -> None:
    sub = tq.CloudTasksSubmitter(endpoint="127.0.0.1:9")

    async def client_of_this_loop() -> tuple[Any, Any]:
        first = sub.async_client
        second = sub.async_client
        await sub.aclose()
        return first, second

    a1, a2 = asyncio.run(client_of_this_loop())
    b1, _ = asyncio.run(client_of_this_loop())
    assert a1 is a2
    assert b1 is not a1


async def test_aclose_closes_the_async_channel() -> None:
    async with tq.CloudTasksSubmitter(endpoint="127.0.0.1:9") as sub:
        client = sub.async_client
    with pytest.raises(Exception, match=r"[Cc]losed"):
        await client.create_task(request=_submission().request, timeout=1)


def test_missing_credentials_are_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_credentials(*args: Any, **kwargs: Any) -> Any:
        raise auth_exceptions.DefaultCredentialsError("none here")

    monkeypatch.setattr(google.auth, "default", no_credentials)
    with pytest.raises(tq.ConfigError, match="endpoint="):
        tq.CloudTasksSubmitter().submit(_submission())
