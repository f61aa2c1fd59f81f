"""The push and sweep endpoints (tq.asgi) through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.routing import Mount

import tq
import tq.asgi
from tests.testpb import payloads_pb2 as pb
from tq import _envelope, _metrics, _request
from tq._execution import ExecutionInfo
from tqtesting.oidc import LocalIssuer, SigningKey

HOST = "app.test"
PUSHER = "tq-push@p.iam.gserviceaccount.com"
LAUNCHER = "scheduler@p.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as iss:
        yield iss


@pytest.fixture(autouse=True)
def _zero_metrics() -> None:
    _metrics.reset()


@dataclasses.dataclass
class Calls:
    payloads: list[Message] = dataclasses.field(default_factory=list)
    infos: list[ExecutionInfo] = dataclasses.field(default_factory=list)


class _Capture:
    """A submitter keeping what add_task built, to push it by hand."""

    def __init__(self) -> None:
        self.subs: list[tq.Submission] = []

    def submit(self, submission: tq.Submission) -> None:
        self.subs.append(submission)

    async def submit_async(self, submission: tq.Submission) -> None:
        self.subs.append(submission)


class _CountingSweeper:
    def __init__(self) -> None:
        self.sweeps = 0

    def sweep(self, dispatcher: tq.Dispatcher) -> None:
        self.sweeps += 1

    async def sweep_async(self, dispatcher: tq.Dispatcher) -> None:
        self.sweeps += 1


def make_dispatcher(**options: Any) -> tq.Dispatcher:
    opts: dict[str, Any] = {
        "cloud_project": "p",
        "cloud_region": "us-central1",
        "default_target_host": HOST,
        "push_as": PUSHER,
    }
    return tq.Dispatcher(**(opts | options))


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def disp(calls: Calls) -> tq.Dispatcher:
    """greet: async handler; count: sync handler; fail: raises what `how` says; blob: none."""
    d = make_dispatcher()

    @d.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    async def greet(payload: pb.Greet) -> None:
        calls.payloads.append(payload)
        calls.infos.append(tq.execution_info())

    @d.task_class(id="count", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    def count(payload: pb.Count) -> None:
        calls.payloads.append(payload)
        calls.infos.append(tq.execution_info())

    @d.task_class(id="fail", prototype=pb.Fail, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    async def fail(payload: pb.Fail) -> None:
        calls.payloads.append(payload)
        raise {
            "fatal": tq.Fatal("bad input"),
            "ignore": tq.Ignore("stale"),
            "retry": tq.Retry("later"),
            "transient": tq.Transient("db down"),
        }.get(payload.how, ValueError("boom"))

    d.register_task_class(
        tq.TaskClass(id="blob", prototype=pb.Blob, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    )
    return d


@dataclasses.dataclass
class Push:
    url: str
    headers: dict[str, str]
    body: bytes
    audience: str


def built_push(d: tq.Dispatcher, payload: Message, title: str = "") -> Push:
    """The push Cloud Tasks would make for a task added through `d`."""
    cap = _Capture()
    with tq.use_submitter(cap):
        d.add_task(tq.Task(payload=payload, title=title))
    req = cap.subs[0].request
    url, _, headers, body = _request.http_parts(req)
    audience = req.task.http_request.oidc_token.audience  # type: ignore[attr-defined]
    return Push(url, headers, body, audience)


def client(
    d: tq.Dispatcher, issuer: LocalIssuer, mount: str = "/internal/tasks", **kw: Any
) -> httpx.AsyncClient:
    if kw.get("auth") is None:
        kw.setdefault("certs_url", issuer.certs_url)
    outer = Starlette(routes=[Mount(mount, app=tq.asgi.app(d, **kw))])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=outer), base_url=f"https://{HOST}")


async def send(
    c: httpx.AsyncClient,
    issuer: LocalIssuer,
    push: Push,
    *,
    email: str = PUSHER,
    extra: dict[str, str] | None = None,
    **mint: Any,
) -> httpx.Response:
    headers = dict(push.headers)
    headers["Authorization"] = issuer.bearer(email=email, audience=push.audience, **mint)
    headers.update(extra or {})
    return await c.post(push.url, headers=headers, content=push.body)


def rejected(reason: str) -> int:
    return _metrics.value("tq_pushes_rejected", reason=reason)


# Outcomes.


async def test_async_handler_runs_and_answers_200(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer
) -> None:
    push = built_push(disp, pb.Greet(name="ada"))
    assert push.url == f"https://{HOST}/internal/tasks/t/greet"
    assert push.audience == f"https://{HOST}"  # the sender's half of the audience rule
    async with client(disp, issuer) as c:
        r = await send(c, issuer, push)
    assert (r.status_code, r.text) == (200, "ok\n")
    assert calls.payloads == [pb.Greet(name="ada")]
    assert _metrics.value("tq_pushes_handled", task_class="greet", result="ok") == 1


async def test_sync_handler_runs_and_answers_200(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer
) -> None:
    async with client(disp, issuer) as c:
        r = await send(c, issuer, built_push(disp, pb.Count(n=3, tag="x")))
    assert r.status_code == 200
    assert calls.payloads == [pb.Count(n=3, tag="x")]


async def test_push_with_title_in_path_is_served(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer
) -> None:
    push = built_push(disp, pb.Greet(name="ada"), title="welcome/ada")
    assert push.url.endswith("/internal/tasks/t/greet/welcome/ada")
    async with client(disp, issuer) as c:
        assert (await send(c, issuer, push)).status_code == 200
    assert calls.payloads == [pb.Greet(name="ada")]


async def test_sync_handler_does_not_block_the_event_loop(issuer: LocalIssuer) -> None:
    d = make_dispatcher()
    sync_started, gate = threading.Event(), threading.Event()

    @d.task_class(id="sync", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    def blocking(payload: pb.Count) -> None:
        sync_started.set()
        # Opened only by the async handler below, which can run only if this
        # handler left the event loop free.
        if not gate.wait(timeout=30):
            raise RuntimeError("the async handler never ran: the event loop was blocked")

    @d.task_class(id="async", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    async def opener(payload: pb.Greet) -> None:
        if not await asyncio.to_thread(sync_started.wait, 30):
            raise RuntimeError("the sync handler never started")
        gate.set()

    async with client(d, issuer) as c:
        r_sync, r_async = await asyncio.gather(
            send(c, issuer, built_push(d, pb.Count(n=1))),
            send(c, issuer, built_push(d, pb.Greet(name="x"))),
        )
    assert (r_sync.status_code, r_async.status_code) == (200, 200)


@pytest.mark.parametrize(
    ("how", "status", "outcome"),
    [
        ("fatal", 202, "fatal"),
        ("ignore", 204, "ignore"),
        ("retry", 429, "retry"),
        ("transient", 500, "transient"),
        ("other", 500, "error"),
    ],
)
async def test_handler_outcome_sets_the_status(
    disp: tq.Dispatcher,
    calls: Calls,
    issuer: LocalIssuer,
    how: str,
    status: int,
    outcome: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with client(disp, issuer) as c:
        r = await send(c, issuer, built_push(disp, pb.Fail(how=how)))
    assert r.status_code == status
    assert r.text == ("" if status == 204 else outcome + "\n")
    assert calls.payloads == [pb.Fail(how=how)]
    assert _metrics.value("tq_pushes_handled", task_class="fail", result=outcome) == 1


# Refusals before the handler.


def _raw_push(d: tq.Dispatcher, path: str, body: bytes) -> Push:
    ref = built_push(d, pb.Greet(name="ref"))
    return Push(f"https://{HOST}{path}", ref.headers, body, ref.audience)


@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [
        ("/internal/tasks/t/nope", _envelope.encode("nope", pb.Greet()), 404, "unknown_class"),
        ("/internal/tasks/t/blob", _envelope.encode("blob", pb.Blob()), 404, "no_handler"),
        ("/internal/tasks/x/greet", _envelope.encode("greet", pb.Greet()), 404, "no_route"),
        ("/internal/tasks/t/greet", b"not json", 400, "bad_envelope"),
        ("/internal/tasks/t/greet", b'{"class": "greet"}', 400, "bad_envelope"),
        ("/internal/tasks/t/greet", _envelope.encode("greet", pb.Count()), 400, "wrong_type"),
        ("/internal/tasks/t/greet", _envelope.encode("count", pb.Count()), 400, "class_mismatch"),
        (
            "/internal/tasks/t/count",
            b'{"class":"count","type":"tq.tests.Count","body":{"n":"many"}}',
            400,
            "bad_body",
        ),
    ],
)
async def test_bad_pushes_are_refused_and_counted(
    disp: tq.Dispatcher,
    calls: Calls,
    issuer: LocalIssuer,
    path: str,
    body: bytes,
    status: int,
    reason: str,
) -> None:
    async with client(disp, issuer) as c:
        r = await send(c, issuer, _raw_push(disp, path, body))
    assert (r.status_code, r.text) == (status, reason + "\n")
    assert rejected(reason) == 1
    assert calls.payloads == []


async def test_push_endpoint_takes_post_only(disp: tq.Dispatcher, issuer: LocalIssuer) -> None:
    async with client(disp, issuer) as c:
        r = await c.get("/internal/tasks/t/greet")
    assert r.status_code == 405


async def test_class_with_own_routing_prefix_is_served_where_mounted(
    calls: Calls, issuer: LocalIssuer
) -> None:
    d = make_dispatcher()

    @d.task_class(
        id="job", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="q",
        routing_prefix="/jobs/run/",
    )  # fmt: skip
    async def job(payload: pb.Count) -> None:
        calls.payloads.append(payload)

    push = built_push(d, pb.Count(n=7))
    assert push.url == f"https://{HOST}/jobs/run/job"
    async with client(d, issuer, mount="/jobs") as c:
        assert (await send(c, issuer, push)).status_code == 200
    assert calls.payloads == [pb.Count(n=7)]


# Execution info.


async def test_execution_info_comes_from_cloud_tasks_headers(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer
) -> None:
    eta = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
    headers = {
        "X-CloudTasks-QueueName": "projects/p/locations/us-central1/queues/emails",
        "X-CloudTasks-TaskName": "4f2a9b",
        "X-CloudTasks-TaskExecutionCount": "2",
        "X-CloudTasks-TaskRetryCount": "3",
        "X-CloudTasks-TaskETA": f"{eta.timestamp():.6f}",
        "X-CloudTasks-TaskRetryReason": "instance unavailable",
        "X-CloudTasks-TaskPreviousResponse": "500",
        "X-Tq-Expected-Eta": "1772366340.000001",  # a minute before, to the microsecond
    }
    async with client(disp, issuer) as c:
        r = await send(c, issuer, built_push(disp, pb.Greet(name="a")), extra=headers)
    assert r.status_code == 200
    assert calls.infos == [
        ExecutionInfo(
            task_class="greet",
            execution_count=2,
            retry_count=3,
            task_id="4f2a9b",
            queue="emails",
            eta=eta,
            retry_reason="instance unavailable",
            previous_response=500,
            expected_eta=eta - dt.timedelta(seconds=60) + dt.timedelta(microseconds=1),
        )
    ]


APP_ENGINE_HEADERS = {
    "X-AppEngine-QueueName": "emails",
    "X-AppEngine-TaskName": "ae-task",
    "X-AppEngine-TaskExecutionCount": "4",
    "X-AppEngine-TaskRetryCount": "5",
}


async def test_app_engine_headers_mean_nothing_off_app_engine(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer
) -> None:
    async with client(disp, issuer) as c:
        r = await send(c, issuer, built_push(disp, pb.Greet(name="a")), extra=APP_ENGINE_HEADERS)
    assert r.status_code == 200
    assert [dataclasses.replace(i, expected_eta=None) for i in calls.infos] == [
        ExecutionInfo(task_class="greet")
    ]


async def test_app_engine_headers_grant_no_access_off_app_engine(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer
) -> None:
    push = built_push(disp, pb.Greet(name="a"))
    async with client(disp, issuer) as c:
        r = await c.post(push.url, headers=push.headers | APP_ENGINE_HEADERS, content=push.body)
    assert r.status_code == 403
    assert rejected("auth_no_token") == 1
    assert calls.payloads == []


async def test_app_engine_push_is_trusted_and_informs_execution_info(
    calls: Calls, issuer: LocalIssuer
) -> None:
    d = make_dispatcher(app_engine=True, push_as=None)

    @d.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    async def greet(payload: pb.Greet) -> None:
        calls.infos.append(tq.execution_info())

    async with client(d, issuer) as c:
        r = await c.post(
            "/internal/tasks/t/greet",
            headers=APP_ENGINE_HEADERS,
            content=_envelope.encode("greet", pb.Greet(name="a")),
        )
        no_header = await c.post(
            "/internal/tasks/t/greet", content=_envelope.encode("greet", pb.Greet(name="a"))
        )
    assert r.status_code == 200
    assert calls.infos == [
        ExecutionInfo(
            task_class="greet", execution_count=4, retry_count=5, task_id="ae-task", queue="emails"
        )
    ]
    assert no_header.status_code == 403


# Authentication.


def _wrong_key(issuer: LocalIssuer) -> dict[str, Any]:
    return {"key": SigningKey.generate()}


AUTH_CASES: list[tuple[str, Any]] = [
    ("bad_signature", _wrong_key),
    ("expired", lambda _: {"expired": True}),
    (
        "not_yet_valid",
        lambda _: {"issued_at": dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)},
    ),
    ("wrong_issuer", lambda _: {"iss": "https://issuer.example.com"}),
    ("wrong_audience", lambda _: {"aud": "https://elsewhere.example.com"}),
    ("email_not_allowed", lambda _: {"email": "mallory@p.iam.gserviceaccount.com"}),
    ("unverified_email", lambda _: {"email_verified": False}),
]


@pytest.mark.parametrize(("reason", "mint_args"), AUTH_CASES, ids=[c[0] for c in AUTH_CASES])
async def test_bad_tokens_are_refused_with_403_and_counted(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer, reason: str, mint_args: Any
) -> None:
    async with client(disp, issuer) as c:
        r = await send(c, issuer, built_push(disp, pb.Greet(name="a")), **mint_args(issuer))
    assert (r.status_code, r.text) == (403, f"auth_{reason}\n")
    assert rejected(f"auth_{reason}") == 1
    assert calls.payloads == []


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [(None, "no_token"), ("Bearer x.y", "malformed"), ("Bearer a.b.c", "malformed")],
)
async def test_missing_or_malformed_token_is_refused(
    disp: tq.Dispatcher,
    calls: Calls,
    issuer: LocalIssuer,
    authorization: str | None,
    reason: str,
) -> None:
    push = built_push(disp, pb.Greet(name="a"))
    headers = push.headers | ({"Authorization": authorization} if authorization else {})
    async with client(disp, issuer) as c:
        r = await c.post(push.url, headers=headers, content=push.body)
    assert r.status_code == 403
    assert rejected(f"auth_{reason}") == 1
    assert calls.payloads == []


async def test_refusal_log_names_class_task_and_queue(
    disp: tq.Dispatcher, issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"X-CloudTasks-TaskName": "t-123", "X-CloudTasks-QueueName": "emails"}
    async with client(disp, issuer) as c:
        await send(c, issuer, built_push(disp, pb.Greet()), email="x@y.com", extra=headers)
    [record] = [r for r in caplog.records if "auth_email_not_allowed" in r.getMessage()]
    assert "class greet, task t-123, queue emails" in record.getMessage()


async def test_authorized_pushers_are_accepted(calls: Calls, issuer: LocalIssuer) -> None:
    d = make_dispatcher(authorized_pushers=["other@p.iam.gserviceaccount.com"])
    d.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")(
        calls.payloads.append
    )
    async with client(d, issuer) as c:
        r1 = await send(c, issuer, built_push(d, pb.Greet(name="1")))
        r2 = await send(
            c, issuer, built_push(d, pb.Greet(name="2")), email="other@p.iam.gserviceaccount.com"
        )
    assert (r1.status_code, r2.status_code) == (200, 200)


async def test_full_url_audience_is_accepted(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer
) -> None:
    # Cloud Tasks' audience when a task names a service account but no audience.
    push = built_push(disp, pb.Greet(name="a"))
    async with client(disp, issuer) as c:
        r = await send(c, issuer, push, aud=push.url)
    assert r.status_code == 200


async def test_push_audience_is_the_only_audience_when_set(
    calls: Calls, issuer: LocalIssuer
) -> None:
    d = make_dispatcher(push_audience="https://tasks.example.com")
    d.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")(
        calls.payloads.append
    )
    push = built_push(d, pb.Greet(name="a"))
    assert push.audience == "https://tasks.example.com"
    async with client(d, issuer) as c:
        ok = await send(c, issuer, push)
        host_aud = await send(c, issuer, push, aud=f"https://{HOST}")
    assert (ok.status_code, host_aud.status_code) == (200, 403)
    assert rejected("auth_wrong_audience") == 1


async def test_unreachable_certs_answer_500_so_cloud_tasks_retries(
    disp: tq.Dispatcher, calls: Calls
) -> None:
    with LocalIssuer() as down:
        down.unavailable = True
        async with client(disp, down) as c:
            r = await send(c, down, built_push(disp, pb.Greet(name="a")))
    assert r.status_code == 500
    assert rejected("auth_certs_unavailable") == 1
    assert calls.payloads == []


async def test_many_pushes_fetch_certs_once(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer
) -> None:
    before = issuer.fetches
    async with client(disp, issuer) as c:
        first = await asyncio.gather(
            *(send(c, issuer, built_push(disp, pb.Greet(name=str(i)))) for i in range(10))
        )
        then = [await send(c, issuer, built_push(disp, pb.Greet(name="x"))) for _ in range(10)]
    assert {r.status_code for r in first + then} == {200}
    assert issuer.fetches - before == 1


async def test_auth_is_on_by_default(disp: tq.Dispatcher, calls: Calls) -> None:
    push = built_push(disp, pb.Greet(name="a"))
    outer = Starlette(routes=[Mount("/internal/tasks", app=tq.asgi.app(disp))])
    transport = httpx.ASGITransport(app=outer)
    async with httpx.AsyncClient(transport=transport, base_url=f"https://{HOST}") as c:
        r = await c.post(push.url, headers=push.headers, content=push.body)
    assert r.status_code == 403
    assert calls.payloads == []


async def test_insecure_no_auth_accepts_pushes_and_warns_once_where_it_serves(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    push = built_push(disp, pb.Greet(name="a"))
    async with client(disp, issuer, auth=tq.asgi.INSECURE_NO_AUTH) as c:
        banners_at_creation = [r for r in caplog.records if "WITHOUT AUTHENTICATION" in r.message]
        r1 = await c.post(push.url, headers=push.headers, content=push.body)
        r2 = await c.post(push.url, headers=push.headers, content=push.body)
    banners = [r for r in caplog.records if "WITHOUT AUTHENTICATION" in r.message]
    assert (r1.status_code, r2.status_code) == (200, 200)
    assert banners_at_creation == []  # an app built but never served says nothing
    assert len(banners) == 1  # on the first push only
    assert banners[0].levelno == logging.WARNING


def test_an_insecure_app_that_is_only_built_does_not_warn(
    disp: tq.Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    tq.asgi.app(disp, auth=tq.asgi.INSECURE_NO_AUTH)
    assert caplog.records == []


async def test_dispatcher_without_pushers_warns_once_at_the_first_push(
    issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    disp = make_dispatcher(push_as=None)
    disp.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    )
    push = built_push(disp, pb.Greet(name="a"))
    async with client(disp, issuer) as c:
        assert not any("refuses every push" in r.message for r in caplog.records)
        for _ in range(2):
            r = await c.post(push.url, headers=push.headers, content=push.body)
            assert r.status_code == 403
    assert sum("refuses every push" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"auth": "off"},
        {"max_body_bytes": 0},
        {"max_body_bytes": 1.5},
        {"authorized_launchers": "a@b.c"},
        {"certs_url": "ftp://127.0.0.1/certs"},
        {"auth": tq.asgi.OIDCVerifier("http://127.0.0.1:1/certs"), "certs_url": "http://x/"},
    ],
)
def test_bad_options_fail_at_creation(disp: tq.Dispatcher, kwargs: dict[str, Any]) -> None:
    with pytest.raises(tq.ConfigError):
        tq.asgi.app(disp, **kwargs)


# Body limit.


async def test_body_up_to_the_limit_is_accepted(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer
) -> None:
    push = built_push(disp, pb.Greet(name="a" * 500))
    async with client(disp, issuer, max_body_bytes=len(push.body)) as c:
        assert (await send(c, issuer, push)).status_code == 200


async def test_declared_oversized_body_is_refused_unread(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer
) -> None:
    push = built_push(disp, pb.Greet(name="a" * 500))
    async with client(disp, issuer, max_body_bytes=len(push.body) - 1) as c:
        r = await send(c, issuer, push)
    assert (r.status_code, r.text) == (400, "body_too_large\n")
    assert rejected("body_too_large") == 1
    assert calls.payloads == []


async def test_streamed_oversized_body_is_cut_off_at_the_limit(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer
) -> None:
    push = built_push(disp, pb.Greet(name="a"))
    chunks_sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        for _ in range(1000):
            chunks_sent += 1
            yield b"x" * 400

    headers = push.headers | {"Authorization": issuer.bearer(email=PUSHER, audience=push.audience)}
    async with client(disp, issuer, max_body_bytes=1000) as c:
        r = await c.post(push.url, headers=headers, content=endless())
    assert (r.status_code, r.text) == (400, "body_too_large\n")
    assert chunks_sent <= 4  # read no further than the chunk that crossed the limit
    assert calls.payloads == []


# The sweep endpoint.


def sweeping_dispatcher(**options: Any) -> tuple[tq.Dispatcher, _CountingSweeper]:
    sweeper = _CountingSweeper()
    return make_dispatcher(sweeper=sweeper, **options), sweeper


async def test_sweep_runs_for_an_authorized_launcher(issuer: LocalIssuer) -> None:
    d, sweeper = sweeping_dispatcher()
    async with client(d, issuer, authorized_launchers=[LAUNCHER]) as c:
        r = await c.get(
            "/internal/tasks/c/sweep",
            headers={"Authorization": issuer.bearer(email=LAUNCHER, audience=f"https://{HOST}")},
        )
    assert (r.status_code, sweeper.sweeps) == (200, 1)


@pytest.mark.parametrize(
    ("email", "headers", "reason"),
    [
        (PUSHER, {}, "email_not_allowed"),
        (None, {}, "no_token"),
        (None, {"X-Appengine-Cron": "true"}, "no_token"),
    ],
    ids=["pusher", "no_token", "cron_header_off_app_engine"],
)
async def test_sweep_refuses_other_callers(
    issuer: LocalIssuer, email: str | None, headers: dict[str, str], reason: str
) -> None:
    d, sweeper = sweeping_dispatcher()
    if email:
        headers = headers | {
            "Authorization": issuer.bearer(email=email, audience=f"https://{HOST}")
        }
    async with client(d, issuer, authorized_launchers=[LAUNCHER]) as c:
        r = await c.get("/internal/tasks/c/sweep", headers=headers)
    assert (r.status_code, sweeper.sweeps) == (403, 0)
    assert _metrics.value("tq_sweeps_rejected", reason=f"auth_{reason}") == 1


async def test_sweep_trusts_app_engine_cron_on_app_engine(issuer: LocalIssuer) -> None:
    d, sweeper = sweeping_dispatcher(app_engine=True)
    async with client(d, issuer) as c:
        r = await c.get("/internal/tasks/c/sweep", headers={"X-Appengine-Cron": "true"})
    assert (r.status_code, sweeper.sweeps) == (200, 1)


async def test_sweep_without_sweeper_is_500_saying_why(issuer: LocalIssuer) -> None:
    d = make_dispatcher()
    async with client(d, issuer, auth=tq.asgi.INSECURE_NO_AUTH) as c:
        r = await c.get("/internal/tasks/c/sweep")
    assert r.status_code == 500
    assert "no sweeper configured" in r.text
