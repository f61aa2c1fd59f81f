"""End to end: add_task -> Cloud Tasks emulator -> HTTP push -> uvicorn -> handler.

The first part runs the production path against the real Cloud Tasks API
emulator: a `CloudTasksSubmitter` creates the task, the emulator pushes it
over HTTP to `tq.asgi.app` served by uvicorn, and the handler runs. The
emulator sends no OIDC token, so that app runs with authentication
explicitly off (`tq.asgi.INSECURE_NO_AUTH`).

The second part proves push authentication under uvicorn: real HTTP pushes
built by the dispatcher, with ID tokens minted by `tqtesting.oidc.LocalIssuer`
whose certificates the app fetches from a loopback URL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

import tq
import tq.asgi
from tests._services.cloudtasks import CloudTasksEmulator
from tests._services.push_app import Recorder, push_app, wait_until, wait_until_async
from tests._services.uvicorn_server import ServedApp
from tests.testpb import payloads_pb2 as pb
from tq._request import http_parts
from tqtesting.oidc import LocalIssuer, SigningKey

PREFIX = "/internal/tasks/t/"


@dataclasses.dataclass(frozen=True)
class Run:
    """One handler run: what it got and what `tq.execution_info()` said."""

    payload: Any
    info: tq.ExecutionInfo
    at: dt.datetime


class Handlers:
    """Task classes with handlers that record their runs.

    greet (Greet, sync handler): succeeds.
    count (Count, async handler): by `tag`: "retry" / "transient" raise
    `Retry` / `Transient` while the execution count is below `n`; "fatal" /
    "ignore" raise `Fatal` / `Ignore`; anything else succeeds.
    """

    def __init__(self, disp: tq.Dispatcher, queue: str) -> None:
        self.runs: list[Run] = []
        self._lock = threading.Lock()
        disp.register_task_class(
            tq.TaskClass(
                id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue=queue
            )
        )
        disp.register_task_class(
            tq.TaskClass(
                id="count", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue=queue
            )
        )
        disp.attach_handler("greet", self.greet)
        disp.attach_handler("count", self.count)

    def _record(self, payload: Any) -> tq.ExecutionInfo:
        info = tq.execution_info()
        with self._lock:
            self.runs.append(Run(payload, info, dt.datetime.now(dt.UTC)))
        return info

    def greet(self, payload: pb.Greet) -> None:
        self._record(payload)

    async def count(self, payload: pb.Count) -> None:
        info = self._record(payload)
        below = info.execution_count < payload.n
        if payload.tag == "retry" and below:
            raise tq.Retry("not yet")
        if payload.tag == "transient" and below:
            raise tq.Transient("flaky")
        if payload.tag == "fatal":
            raise tq.Fatal("never")
        if payload.tag == "ignore":
            raise tq.Ignore("not worth it")

    def of(self, cond: Callable[[Any], bool]) -> list[Run]:
        with self._lock:
            return [r for r in self.runs if cond(r.payload)]


@dataclasses.dataclass
class Stack:
    emu: CloudTasksEmulator
    queue: str
    disp: tq.Dispatcher
    submitter: tq.CloudTasksSubmitter
    handlers: Handlers
    recorder: Recorder
    served: ServedApp

    def pushes(self, path: str) -> list[int | None]:
        """Statuses of the answered pushes to `path`, in order."""
        return [s.status for s in self.recorder.answered() if s.path == path]

    def queued(self) -> list[Any]:
        """The tasks the emulator still holds in the queue."""
        with self.emu.client() as c:
            return list(c.list_tasks(parent=self.queue, timeout=10))


@pytest.fixture
async def stack(
    cloudtasks_emulator: CloudTasksEmulator,
    cloudtasks_queue: str,
    serve_app: Callable[[Any], ServedApp],
) -> AsyncIterator[Stack]:
    """The whole production path on loopback, with push auth off (the emulator has no OIDC)."""
    submitter = tq.CloudTasksSubmitter(endpoint=cloudtasks_emulator.endpoint)
    disp = tq.Dispatcher(target_scheme="http", submitter=submitter)
    handlers = Handlers(disp, cloudtasks_queue)
    recorder = push_app(disp, auth=tq.asgi.INSECURE_NO_AUTH)
    served = serve_app(recorder)
    disp.configure(default_target_host=served.netloc)
    yield Stack(cloudtasks_emulator, cloudtasks_queue, disp, submitter, handlers, recorder, served)
    await submitter.aclose()


def test_sync_handler_runs_with_title_in_the_url(stack: Stack) -> None:
    stack.disp.add_task(tq.Task(payload=pb.Greet(name="ada"), title="user-42/welcome"))
    wait_until(lambda: len(stack.handlers.runs) == 1, "the greet handler")
    [run] = stack.handlers.runs
    assert run.payload == pb.Greet(name="ada")
    # The answer goes out just after the handler returns.
    wait_until(lambda: bool(stack.pushes(PREFIX + "greet/user-42/welcome")), "the answer")
    assert stack.pushes(PREFIX + "greet/user-42/welcome") == [200]


def test_execution_info_comes_from_the_push_headers(stack: Stack) -> None:
    stack.disp.add_task(tq.Task(payload=pb.Greet(name="info")))
    wait_until(lambda: len(stack.handlers.runs) == 1, "the greet handler")
    [run] = stack.handlers.runs
    # The answer goes out just after the handler returns.
    wait_until(lambda: bool(stack.recorder.answered()), "the answer")
    [seen] = stack.recorder.answered()
    assert run.info.task_class == "greet"
    assert run.info.queue == stack.queue.rsplit("/", 1)[-1]  # the short ID
    assert run.info.task_id
    assert run.info.task_id == seen.headers["x-cloudtasks-taskname"]
    assert run.info.execution_count == 0
    assert run.info.retry_count == 0
    assert seen.path == PREFIX + "greet"
    assert seen.headers["content-type"] == "application/json"


async def test_add_task_async_reaches_an_async_handler(stack: Stack) -> None:
    await stack.disp.add_task_async(
        tq.Task(payload=pb.Count(n=1, tag="a"), title="first"),
        tq.Task(payload=pb.Count(n=2, tag="b"), title="second"),
    )
    await wait_until_async(lambda: len(stack.handlers.runs) == 2, "two count handlers")
    assert sorted(r.payload.n for r in stack.handlers.runs) == [1, 2]
    await wait_until_async(
        lambda: all(stack.pushes(PREFIX + f"count/{t}") for t in ("first", "second")),
        "the answers",
    )
    assert stack.pushes(PREFIX + "count/first") == [200]
    assert stack.pushes(PREFIX + "count/second") == [200]


@pytest.mark.parametrize(("tag", "status"), [("retry", 429), ("transient", 500)])
def test_retry_outcomes_are_redelivered_until_success(stack: Stack, tag: str, status: int) -> None:
    stack.disp.add_task(tq.Task(payload=pb.Count(n=2, tag=tag), title=tag))
    wait_until(lambda: not stack.queued() and len(stack.pushes(PREFIX + f"count/{tag}")) == 3,
               "the task to succeed on its third delivery")  # fmt: skip
    assert stack.pushes(PREFIX + f"count/{tag}") == [status, status, 200]
    runs = stack.handlers.runs
    assert [r.info.execution_count for r in runs] == [0, 1, 2]
    assert [r.info.retry_count for r in runs] == [0, 1, 2]
    assert len({r.info.task_id for r in runs}) == 1


@pytest.mark.parametrize(("tag", "status"), [("fatal", 202), ("ignore", 204)])
def test_dropping_outcomes_are_not_redelivered(stack: Stack, tag: str, status: int) -> None:
    stack.disp.add_task(tq.Task(payload=pb.Count(tag=tag), title=tag))
    wait_until(lambda: bool(stack.pushes(PREFIX + f"count/{tag}")), "the push")
    # A 2xx answer makes the emulator drop the task: it cannot come back.
    wait_until(lambda: not stack.queued(), "the emulator to drop the task")
    assert stack.pushes(PREFIX + f"count/{tag}") == [status]
    assert len(stack.handlers.runs) == 1


def test_dedup_key_task_is_named_by_its_sha256(stack: Stack) -> None:
    stack.disp.add_task(tq.Task(payload=pb.Greet(name="once"), deduplication_key="order-17"))
    wait_until(lambda: len(stack.handlers.runs) == 1, "the greet handler")
    # The emulator does not deduplicate; what tq controls is the name.
    assert stack.handlers.runs[0].info.task_id == hashlib.sha256(b"\0greet\0order-17").hexdigest()


def test_delayed_task_runs_at_its_eta(stack: Stack) -> None:
    added = dt.datetime.now(dt.UTC)
    stack.disp.add_task(tq.Task(payload=pb.Greet(name="later"), delay=dt.timedelta(seconds=1)))
    wait_until(lambda: len(stack.handlers.runs) == 1, "the delayed task")
    [run] = stack.handlers.runs
    assert run.info.eta is not None
    assert added + dt.timedelta(seconds=1) <= run.info.eta
    assert run.info.eta <= run.at


def test_pushes_without_token_are_refused_when_auth_is_on(
    cloudtasks_emulator: CloudTasksEmulator,
    cloudtasks_queue: str,
    serve_app: Callable[[Any], ServedApp],
) -> None:
    # The default app requires OIDC tokens; the emulator sends none.
    with tq.CloudTasksSubmitter(endpoint=cloudtasks_emulator.endpoint) as submitter:
        disp = tq.Dispatcher(
            target_scheme="http", submitter=submitter, push_as="tq@p.iam.gserviceaccount.com"
        )
        handlers = Handlers(disp, cloudtasks_queue)
        with LocalIssuer() as issuer:
            recorder = push_app(disp, certs_url=issuer.certs_url)
            served = serve_app(recorder)
            disp.configure(default_target_host=served.netloc)
            disp.add_task(tq.Task(payload=pb.Greet(name="intruder")))
            wait_until(lambda: len(recorder.answered()) >= 2, "two refused deliveries")
    assert {s.status for s in recorder.answered()} == {403}
    assert handlers.runs == []


# Push authentication under uvicorn, with tokens from a local issuer.

PUSHER = "tq-pusher@p.iam.gserviceaccount.com"


@dataclasses.dataclass
class AuthStack:
    disp: tq.Dispatcher
    handlers: Handlers
    issuer: LocalIssuer
    recorder: Recorder
    client: httpx.Client
    added: list[tq.Submission]

    def build(self, payload: Any, title: str = "") -> tuple[str, dict[str, str], bytes, Any]:
        """The push Cloud Tasks would send for this task: URL, headers, body, OIDC spec."""
        self.disp.add_task(tq.Task(payload=payload, title=title))
        req = self.added.pop().request
        url, _method, headers, body = http_parts(req)
        headers.update(
            {
                "X-CloudTasks-QueueName": "pushes",
                "X-CloudTasks-TaskName": "task-1",
                "X-CloudTasks-TaskExecutionCount": "0",
                "X-CloudTasks-TaskRetryCount": "0",
            }
        )
        return url, headers, body, req.task.http_request.oidc_token  # type: ignore[attr-defined]


class _Capture:
    def __init__(self, into: list[tq.Submission]) -> None:
        self.into = into

    def submit(self, submission: tq.Submission) -> None:
        self.into.append(submission)

    async def submit_async(self, submission: tq.Submission) -> None:
        self.into.append(submission)


@pytest.fixture
def auth_stack(serve_app: Callable[[Any], ServedApp]) -> Iterator[AuthStack]:
    added: list[tq.Submission] = []
    disp = tq.Dispatcher(
        cloud_project="p",
        cloud_region="us-central1",
        push_as=PUSHER,
        target_scheme="http",
        submitter=_Capture(added),
    )
    handlers = Handlers(disp, "pushes")
    with LocalIssuer() as issuer, httpx.Client(trust_env=False, timeout=30) as client:
        recorder = push_app(disp, certs_url=issuer.certs_url)
        served = serve_app(recorder)
        disp.configure(default_target_host=served.netloc)
        yield AuthStack(disp, handlers, issuer, recorder, client, added)


def test_push_with_a_good_token_is_handled(auth_stack: AuthStack) -> None:
    url, headers, body, oidc = auth_stack.build(pb.Greet(name="signed"), title="t1")
    assert oidc.service_account_email == PUSHER
    headers["Authorization"] = auth_stack.issuer.bearer(
        email=oidc.service_account_email, audience=oidc.audience
    )
    resp = auth_stack.client.post(url, headers=headers, content=body)
    assert resp.status_code == 200
    [run] = auth_stack.handlers.runs
    assert run.payload == pb.Greet(name="signed")
    assert run.info.queue == "pushes"
    assert run.info.task_id == "task-1"


def test_push_without_a_token_is_refused(auth_stack: AuthStack) -> None:
    url, headers, body, _ = auth_stack.build(pb.Greet(name="anonymous"))
    resp = auth_stack.client.post(url, headers=headers, content=body)
    assert resp.status_code == 403
    assert auth_stack.handlers.runs == []


def test_push_with_a_wrong_audience_is_refused(auth_stack: AuthStack) -> None:
    url, headers, body, oidc = auth_stack.build(pb.Count(n=1))
    headers["Authorization"] = auth_stack.issuer.bearer(
        email=oidc.service_account_email, audience="https://someone-else.example.com"
    )
    resp = auth_stack.client.post(url, headers=headers, content=body)
    assert resp.status_code == 403
    assert auth_stack.handlers.runs == []


def test_push_signed_by_an_unknown_key_is_refused(auth_stack: AuthStack) -> None:
    url, headers, body, oidc = auth_stack.build(pb.Greet(name="forged"))
    token = auth_stack.issuer.mint(
        email=oidc.service_account_email, audience=oidc.audience, key=SigningKey.generate()
    )
    headers["Authorization"] = f"Bearer {token}"
    resp = auth_stack.client.post(url, headers=headers, content=body)
    assert resp.status_code == 403
    assert auth_stack.handlers.runs == []


def test_push_from_another_service_account_is_refused(auth_stack: AuthStack) -> None:
    url, headers, body, oidc = auth_stack.build(pb.Greet(name="stranger"))
    headers["Authorization"] = auth_stack.issuer.bearer(
        email="someone@else.iam.gserviceaccount.com", audience=oidc.audience
    )
    resp = auth_stack.client.post(url, headers=headers, content=body)
    assert resp.status_code == 403
    assert auth_stack.handlers.runs == []
