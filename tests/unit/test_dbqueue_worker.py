"""Workers on SQLite: pushes with Cloud Tasks' headers, status handling, retries with
backoff on a fake clock, retry limits, deadlines, rate and concurrency limits, pausing."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from typing import Any

import pytest
import sqlalchemy as sa

from tests._dbqueue import (
    RecordingApp,
    clock_fixture,  # noqa: F401
    fidelity_engine_fixture,  # noqa: F401
    submission,
    submitter_fixture,  # noqa: F401
    task_state,
)
from tq import dbqueue
from tq.dbqueue import State
from tqtesting import FakeClock

Sub = dbqueue.DbQueueSubmitter


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


def make_worker(engine: sa.Engine, app: Any, **kwargs: Any) -> dbqueue.Worker:
    return dbqueue.Worker(engine, app=app, **kwargs)


def configure(engine: sa.Engine, **kwargs: Any) -> None:
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("q", **kwargs)])


async def test_push_carries_the_request_and_cloud_tasks_headers(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    eta = clock.now() - dt.timedelta(seconds=3)
    headers = {"Content-Type": "application/json", "X-Mine": "1", "X-CloudTasks-QueueName": "fake"}
    submitter.submit(submission(name="t1", body=b'{"x":1}', headers=headers, eta=eta))
    async with make_worker(engine, app) as w:
        assert await w.run_once() == 1
    (push,) = app.pushes
    assert (push.method, push.path, push.body) == ("POST", "/internal/tasks/t/greet", b'{"x":1}')
    h = push.headers
    assert h["content-type"] == "application/json"
    assert h["x-mine"] == "1"
    assert h["x-cloudtasks-queuename"] == "q"  # the short queue ID; the task's copy is dropped
    assert h["x-cloudtasks-taskname"] == "t1"
    assert (h["x-cloudtasks-taskretrycount"], h["x-cloudtasks-taskexecutioncount"]) == ("0", "0")
    assert float(h["x-cloudtasks-tasketa"]) == eta.timestamp()
    assert h["user-agent"] == "Google-Cloud-Tasks"
    assert "x-cloudtasks-taskpreviousresponse" not in h
    assert "x-cloudtasks-taskretryreason" not in h
    assert "authorization" not in h


async def test_a_2xx_response_finishes_the_task(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    submitter.submit(submission(name="t1"))
    app.statuses["t1"] = [204]
    async with make_worker(engine, app) as w:
        await w.run_once()
        assert await w.run_once() == 0
    info = task_state(engine, "t1")
    assert (info.state, info.last_status, info.attempts, info.executions) == (
        State.DONE,
        204,
        1,
        1,
    )
    assert info.finished == clock.now()


async def test_failures_are_retried_after_the_queues_backoff(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    configure(engine, min_backoff_s=10, max_backoff_s=300, max_doublings=3)
    submitter.submit(submission(name="t1"))
    app.statuses["t1"] = [500]
    start = clock.now()
    times: list[float] = []
    async with make_worker(engine, app) as w:
        for _ in range(8):
            assert await w.run_once() == 1
            times.append((clock.now() - start).total_seconds())
            eta = task_state(engine, "t1").eta
            clock.set(eta - dt.timedelta(microseconds=1))
            assert await w.run_once() == 0  # not due a microsecond early
            clock.set(eta)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([10, 20, 40, 80, 160, 240, 300], abs=1e-5)


async def test_retries_carry_previous_response_and_counts(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    configure(engine, min_backoff_s=1, max_backoff_s=1)
    submitter.submit(submission(name="t1"))
    app.statuses["t1"] = [429, 500, 404, 200]
    async with make_worker(engine, app) as w:
        for _ in range(4):
            assert await w.run_once() == 1
            clock.advance(1)
    seen = [
        (
            p.retry_count,
            p.execution_count,
            p.headers.get("x-cloudtasks-taskpreviousresponse"),
            p.headers.get("x-cloudtasks-taskretryreason"),
        )
        for p in app.pushes
    ]
    # The execution count counts responses, except 5xx ones (as Cloud Tasks documents).
    assert seen == [
        (0, 0, None, None),
        (1, 1, "429", "HTTP 429"),
        (2, 1, "500", "HTTP 500"),
        (3, 2, "404", "HTTP 404"),
    ]
    assert task_state(engine, "t1").state is State.DONE


async def test_a_task_fails_for_good_after_max_attempts(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    configure(engine, max_attempts=3, min_backoff_s=1, max_backoff_s=1)
    submitter.submit(submission(name="t1"))
    app.default = 503
    async with make_worker(engine, app) as w:
        for _ in range(5):
            await w.run_once()
            clock.advance(60)
    assert len(app.pushes) == 3
    info = task_state(engine, "t1")
    assert (info.state, info.attempts, info.last_status) == (State.FAILED, 3, 503)
    assert info.finished is not None


async def test_retry_stops_only_when_attempts_and_duration_are_both_reached(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    configure(engine, max_attempts=2, max_retry_duration_s=60, min_backoff_s=10, max_backoff_s=10)
    submitter.submit(submission(name="t1"))
    app.default = 500
    async with make_worker(engine, app) as w:
        for _ in range(12):
            await w.run_once()
            clock.advance(10)
    # Attempts at 0, 10, ..., 60 s: the 7th is the first with 2+ attempts and 60 s gone.
    assert len(app.pushes) == 7
    assert task_state(engine, "t1").state is State.FAILED


async def test_a_response_past_the_dispatch_deadline_is_a_retry(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    configure(engine, min_backoff_s=5, max_backoff_s=5)
    submitter.submit(submission(name="slow"))
    app.hold = asyncio.Event()  # never set: the handler hangs
    async with make_worker(engine, app, default_dispatch_deadline=dt.timedelta(seconds=0.2)) as w:
        assert await w.run_once() == 1
    info = task_state(engine, "slow")
    assert (info.state, info.last_status, info.executions) == (State.PENDING, None, 0)
    assert str(info.last_error).startswith("DEADLINE_EXCEEDED")
    assert info.eta == clock.now() + dt.timedelta(seconds=5)


async def test_retry_after_sets_the_least_wait(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    submitter.submit(submission(name="t1"))
    app.default = 503
    app.extra_headers = [(b"retry-after", b"120")]
    async with make_worker(engine, app) as w:
        await w.run_once()
    assert task_state(engine, "t1").eta == clock.now() + dt.timedelta(seconds=120)


async def test_the_rate_limit_is_a_token_bucket(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    configure(engine, rate_per_s=2, bucket_size=2)
    for i in range(10):
        submitter.submit(submission(name=f"t{i}"))
    async with make_worker(engine, app) as w:
        assert await w.run_once() == 2  # a full bucket: a burst of 2
        assert await w.run_once() == 0
        clock.advance(0.5)
        assert await w.run_once() == 1
        clock.advance(0.25)
        assert await w.run_once() == 0  # half a token
        clock.advance(10)
        assert await w.run_once() == 2  # the bucket holds no more than 2
    assert app.names() == [f"t{i}" for i in range(5)]  # in ETA (here: creation) order


async def test_max_concurrent_holds_over_every_worker(
    engine: sa.Engine, submitter: Sub, clock: FakeClock
) -> None:
    configure(engine, max_concurrent=1)
    submitter.submit(submission(name="a"))
    submitter.submit(submission(name="b"))
    held, free = RecordingApp(), RecordingApp()
    held.hold = asyncio.Event()
    async with make_worker(engine, held) as w1, make_worker(engine, free) as w2:
        first = asyncio.create_task(w1.run_once())
        await held.arrived.wait()
        assert await w2.run_once() == 0  # one in flight already
        held.hold.set()
        assert await first == 1
        assert await w2.run_once() == 1
    assert held.names() + free.names() == ["a", "b"]


async def test_a_paused_queue_keeps_its_tasks_until_resumed(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    submitter.submit(submission(name="t1"))
    admin = dbqueue.Admin(engine)
    assert admin.pause_queue("q")
    async with make_worker(engine, app) as w:
        assert await w.run_once() == 0
        configure(engine)  # re-applying the configuration keeps the pause
        assert await w.run_once() == 0
        assert admin.resume_queue("q")
        assert await w.run_once() == 1
    assert not admin.pause_queue("missing")


async def test_a_worker_serves_only_its_queues(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    submitter.submit(submission(queue="a", name="in-a"))
    submitter.submit(submission(queue="b", name="in-b"))
    async with make_worker(engine, app, queues=["b"]) as w:
        await w.run_until_idle()
    assert app.names() == ["in-b"]


async def test_app_engine_requests_go_to_the_base_url_with_app_engine_headers(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    sub = submission(name="ae")
    req = sub.request
    req.task.ClearField("http_request")  # type: ignore[attr-defined]
    ae = req.task.app_engine_http_request  # type: ignore[attr-defined]
    ae.relative_uri, ae.http_method, ae.body = "/internal/tasks/t/greet", 1, b"{}"
    submitter.submit(sub)
    async with make_worker(engine, app, base_url="http://app.local") as w:
        await w.run_once()
    (push,) = app.pushes
    assert push.path == "/internal/tasks/t/greet"
    assert push.headers["host"] == "app.local"
    assert push.headers["x-appengine-queuename"] == "q"
    assert push.headers["x-appengine-taskname"] == "ae"


async def test_pushes_go_over_http_to_the_task_url(
    engine: sa.Engine, submitter: Sub, clock: FakeClock, serve_app: Any
) -> None:
    app = RecordingApp()
    server = serve_app(app)
    submitter.submit(submission(name="net", url=f"{server.url}/internal/tasks/t/greet"))
    async with dbqueue.Worker(engine) as w:
        assert await w.run_once() == 1
    (push,) = app.pushes
    assert push.path == "/internal/tasks/t/greet"
    assert task_state(engine, "net").state is State.DONE


async def test_an_unreachable_target_is_retried_without_a_response(
    engine: sa.Engine, submitter: Sub, clock: FakeClock
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    submitter.submit(submission(name="down", url=f"http://127.0.0.1:{port}/x"))
    async with dbqueue.Worker(engine) as w:
        assert await w.run_once() == 1
    info = task_state(engine, "down")
    assert (info.state, info.last_status, info.executions) == (State.PENDING, None, 0)
    assert str(info.last_error).startswith("UNAVAILABLE")


async def test_the_url_path_and_query_reach_the_app(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    submitter.submit(submission(name="t1", url="https://h.example/a/b%2Fc?x=1&y=2"))
    async with make_worker(engine, app) as w:
        await w.run_once()
    (push,) = app.pushes
    assert (push.path, push.query, push.headers["host"]) == ("/a/b/c", b"x=1&y=2", "h.example")
    assert push.headers["content-length"] == "2"


async def test_an_app_that_raises_answers_500(
    engine: sa.Engine, submitter: Sub, clock: FakeClock
) -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("bug in the app")

    submitter.submit(submission(name="t1"))
    async with make_worker(engine, broken) as w:
        assert await w.run_once() == 1
    info = task_state(engine, "t1")
    assert (info.state, info.last_status, info.executions) == (State.PENDING, 500, 0)


async def test_a_busy_queue_does_not_starve_the_others(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    for i in range(20):
        submitter.submit(submission(queue="busy", name=f"b{i}"))
    submitter.submit(submission(queue="quiet", name="q0"))
    async with make_worker(engine, app, concurrency=2, batch_size=2) as w:
        await w.run_once()
        await w.run_once()
    assert "q0" in app.names()


@pytest.mark.parametrize("app_engine", [False, True])
@pytest.mark.parametrize("attempts", [1, 3])
def test_an_in_process_push_carries_the_headers_of_a_network_push(
    app_engine: bool, attempts: int
) -> None:
    from tq.dbqueue._delivery import push_headers, push_raw_headers
    from tq.dbqueue._lease import Leased

    own = {
        "Content-Type": "application/json", "X-Mine": "é", "Host": "evil", "user-agent": "x",
        "X-CloudTasks-TaskName": "fake", "x-appengine-queuename": "fake", "Content-Length": "9",
    }  # fmt: skip
    t = Leased(
        id=1, queue="q", name="t1", task_class="c", url="http://app/x", method="POST",
        headers=own, body=b"{}", oidc_email=None, oidc_audience=None, app_engine=app_engine,
        dispatch_deadline_s=None, eta_us=1_700_000_000_123_456, attempts=attempts,
        executions=attempts - 1, last_status=503, last_error="HTTP 503", first_attempt_us=1,
        lease_owner="w", lease_expires_us=2, priority=0, rank_us=None, tag=None,
        config=dbqueue.QueueConfig("q"),
    )  # fmt: skip
    for token in (None, "tok"):
        network = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in push_headers(t, token).items()
        ]
        assert push_raw_headers(t, token) == network
        assert push_raw_headers(t, token) == network  # the task's own part, remembered


def _leased(name: str, deadline_s: float | None) -> Any:
    from tq.dbqueue._lease import Leased

    return Leased(
        id=1, queue="q", name=name, task_class="c", url="http://app/x", method="POST",
        headers={}, body=b"{}", oidc_email=None, oidc_audience=None, app_engine=False,
        dispatch_deadline_s=deadline_s, eta_us=1, attempts=1, executions=0, last_status=None,
        last_error=None, first_attempt_us=1, lease_owner="w", lease_expires_us=2, priority=0,
        rank_us=None, tag=None, config=dbqueue.QueueConfig("q"),
    )  # fmt: skip


async def test_each_push_ends_at_its_own_deadline_while_others_go_on() -> None:
    from tq.dbqueue._delivery import Pusher

    release = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        name = dict(scope["headers"])[b"x-cloudtasks-taskname"]
        if name != b"quick":
            await release.wait()  # hangs until released
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    pusher = Pusher(app=app)
    ended: list[str] = []

    async def push(name: str, deadline_s: float) -> Any:
        attempt = await pusher.push(_leased(name, deadline_s), deadline_s)
        ended.append(name)
        return attempt

    # The longest deadline first: the shorter one started after it must still end first.
    long = asyncio.create_task(push("long", 0.4))
    await asyncio.sleep(0)
    short = asyncio.create_task(push("short", 0.1))
    quick = asyncio.create_task(push("quick", 0.1))
    kept = asyncio.create_task(push("kept", 60))  # answers once released, well before 60 s
    got_long, got_short, got_quick = await asyncio.gather(long, short, quick)
    assert ended == ["quick", "short", "long"]
    assert got_quick.status == 200
    for got, s in ((got_short, "0.1"), (got_long, "0.4")):
        assert (got.status, got.error) == (None, f"DEADLINE_EXCEEDED: no response within {s} s")
    release.set()
    assert (await kept).status == 200
    # A push cancelled from outside (a worker stopping) is cancelled, not timed out.
    hung = asyncio.create_task(push("hung", 60))
    release.clear()
    await asyncio.sleep(0.01)
    hung.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hung
    assert (pusher._deadlines._due, pusher._deadlines._expired) == ({}, set())  # nothing kept


async def test_attempts_are_counted_by_queue_class_and_result(
    engine: sa.Engine, submitter: Sub, app: RecordingApp, clock: FakeClock
) -> None:
    from tq import _metrics

    def counted(result: str) -> int:
        return _metrics.value("tq_dbqueue_attempts", queue="q", result=result)

    before = {r: counted(r) for r in ("done", "retry")}
    submitter.submit(submission(name="t1"))
    app.default = 503
    async with make_worker(engine, app) as w:
        await w.run_once()
        app.default = 200
        clock.advance(3600)
        await w.run_once()
    assert {r: counted(r) - n for r, n in before.items()} == {"done": 1, "retry": 1}
