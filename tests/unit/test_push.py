"""handle_push: one pushed task in, the handler run, an HTTP status out."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

import tq
from tests.testpb import payloads_pb2 as pb
from tq import _envelope, _metrics
from tq._push import handle_push

HEADERS = {"x-cloudtasks-taskexecutioncount": "2", "x-cloudtasks-queuename": "q"}


@pytest.fixture
def disp() -> tq.Dispatcher:
    return tq.Dispatcher()


def register(disp: tq.Dispatcher, handler: object, prototype: type = pb.Greet) -> None:
    disp.register_task_class(
        tq.TaskClass(
            id="c",
            prototype=prototype,
            kind=tq.Kind.NON_TRANSACTIONAL,
            queue="q",
            handler=handler,  # type: ignore[arg-type]
        )
    )


def body(payload: object = None, class_id: str = "c") -> bytes:
    return _envelope.encode(class_id, payload or pb.Greet(name="x"))  # type: ignore[arg-type]


async def test_sync_handler_gets_the_payload_and_execution_info_in_a_thread(
    disp: tq.Dispatcher,
) -> None:
    seen: list[tuple[pb.Greet, int, str, bool]] = []
    main = threading.get_ident()

    def handler(p: pb.Greet) -> None:
        info = tq.execution_info()
        seen.append((p, info.execution_count, info.queue, threading.get_ident() != main))

    register(disp, handler)
    result = await handle_push(disp, "c", HEADERS, body())
    assert (result.status, result.outcome, result.class_id, result.done) == (200, "ok", "c", True)
    assert seen == [(pb.Greet(name="x"), 2, "q", True)]


async def test_a_sync_handler_runs_inside_the_dispatchers_scope_in_its_own_thread() -> None:
    events: list[tuple[str, int]] = []

    @contextlib.contextmanager
    def scope() -> Iterator[None]:
        events.append(("enter", threading.get_ident()))
        try:
            yield
        finally:
            events.append(("exit", threading.get_ident()))

    disp = tq.Dispatcher(sync_handler_scope=scope)

    def handler(p: pb.Greet) -> None:
        events.append(("run", threading.get_ident()))
        raise tq.Retry("later")

    register(disp, handler)
    result = await handle_push(disp, "c", HEADERS, body())
    assert result.status == 429  # the handler's outcome passes through the scope
    assert [e for e, _ in events] == ["enter", "run", "exit"]
    assert len({t for _, t in events}) == 1  # all in the handler's worker thread
    assert events[0][1] != threading.get_ident()


async def test_async_handler_is_awaited(disp: tq.Dispatcher) -> None:
    seen: list[pb.Greet] = []

    async def handler(p: pb.Greet) -> None:
        seen.append(p)

    register(disp, handler)
    assert (await handle_push(disp, None, {}, body())).status == 200
    assert seen == [pb.Greet(name="x")]


@pytest.mark.parametrize(
    ("exc", "status", "outcome"),
    [
        (tq.Fatal("f"), 202, "fatal"),
        (tq.Ignore("i"), 204, "ignore"),
        (tq.Retry("r"), 429, "retry"),
        (tq.Transient("t"), 500, "transient"),
        (KeyError("bug"), 500, "error"),
    ],
)
async def test_handler_outcomes_map_to_statuses(
    disp: tq.Dispatcher, exc: Exception, status: int, outcome: str
) -> None:
    def handler(p: pb.Greet) -> None:
        raise exc

    register(disp, handler)
    before = _metrics.value("tq_pushes_handled", task_class="c", result=outcome)
    result = await handle_push(disp, "c", {}, body())
    assert (result.status, result.outcome) == (status, outcome)
    assert result.error is exc
    assert result.done == (status < 300)
    assert _metrics.value("tq_pushes_handled", task_class="c", result=outcome) == before + 1


async def test_unknown_class_and_missing_handler_are_404(disp: tq.Dispatcher) -> None:
    result = await handle_push(disp, "c", {}, body())
    assert (result.status, result.outcome) == (404, "unknown_class")
    register(disp, None)
    result = await handle_push(disp, "c", {}, body())
    assert (result.status, result.outcome) == (404, "no_handler")


@pytest.mark.parametrize(
    ("path_class", "raw", "reason"),
    [
        ("c", b"{not json", "bad_envelope"),
        ("other", None, "class_mismatch"),
        ("c", _envelope.encode("c", pb.Count(n=1)), "wrong_type"),
        ("c", b'{"class": "c", "type": "tq.tests.Greet", "body": {"name": 7}}', "bad_body"),
    ],
)
async def test_bad_pushes_are_400_and_counted(
    disp: tq.Dispatcher, path_class: str, raw: bytes | None, reason: str
) -> None:
    called: list[object] = []
    register(disp, called.append)
    before = _metrics.value("tq_pushes_rejected", reason=reason)
    result = await handle_push(disp, path_class, {}, raw if raw is not None else body())
    assert (result.status, result.outcome) == (400, reason)
    assert called == []
    assert _metrics.value("tq_pushes_rejected", reason=reason) == before + 1
