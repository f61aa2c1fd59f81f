"""CloudTasksSubmitter against the real Cloud Tasks API emulator (over gRPC).

The queues here are paused before tasks are added, so the tasks stay in the
emulator and can be listed back exactly as the submitter created them.
Delivery to the push endpoint is covered by tests/e2e/test_push_e2e.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

import tq
from tests._services.cloudtasks import CloudTasksEmulator, free_port
from tests.testpb import payloads_pb2 as pb
from tq._request import EXPECTED_ETA_HEADER

TARGET = "127.0.0.1:8080"  # never dialled: the queues here are paused


@pytest.fixture
def paused_queue(cloudtasks_emulator: CloudTasksEmulator, cloudtasks_queue: str) -> str:
    with cloudtasks_emulator.client() as c:
        c.pause_queue(name=cloudtasks_queue, timeout=10)
    return cloudtasks_queue


@pytest.fixture
def submitter(cloudtasks_emulator: CloudTasksEmulator) -> Iterator[tq.CloudTasksSubmitter]:
    with tq.CloudTasksSubmitter(endpoint=cloudtasks_emulator.endpoint) as s:
        yield s


@pytest.fixture
async def async_submitter(
    cloudtasks_emulator: CloudTasksEmulator,
) -> AsyncIterator[tq.CloudTasksSubmitter]:
    async with tq.CloudTasksSubmitter(endpoint=cloudtasks_emulator.endpoint) as s:
        yield s


def _dispatcher(queue: str, submitter: tq.Submitter, namespace: str = "") -> tq.Dispatcher:
    disp = tq.Dispatcher(
        default_target_host=TARGET, target_scheme="http", submitter=submitter, namespace=namespace
    )
    disp.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue=queue)
    )
    return disp


def _listed(emu: CloudTasksEmulator, queue: str) -> list[Any]:
    with emu.client() as c:
        return list(c.list_tasks(parent=queue, timeout=10))


def _assert_greet_task(task: Any, queue: str, url_path: str, name: str) -> None:
    assert task.name.startswith(f"{queue}/tasks/")
    req = task.http_request
    assert req.url == f"http://{TARGET}{url_path}"
    assert req.http_method.name == "POST"
    assert req.headers["Content-Type"] == "application/json"
    assert EXPECTED_ETA_HEADER in req.headers
    envelope = json.loads(req.body)
    assert envelope["class"] == "greet"
    assert envelope["type"] == pb.Greet.DESCRIPTOR.full_name
    assert envelope["body"] == {"name": name}


def test_add_task_creates_the_request_in_the_emulator(
    cloudtasks_emulator: CloudTasksEmulator,
    paused_queue: str,
    submitter: tq.CloudTasksSubmitter,
) -> None:
    disp = _dispatcher(paused_queue, submitter)
    disp.add_task(tq.Task(payload=pb.Greet(name="ada"), title="user-42/welcome"))
    [task] = _listed(cloudtasks_emulator, paused_queue)
    _assert_greet_task(task, paused_queue, "/internal/tasks/t/greet/user-42/welcome", "ada")


async def test_add_task_async_creates_the_request_in_the_emulator(
    cloudtasks_emulator: CloudTasksEmulator,
    paused_queue: str,
    async_submitter: tq.CloudTasksSubmitter,
) -> None:
    disp = _dispatcher(paused_queue, async_submitter)
    await disp.add_task_async(
        tq.Task(payload=pb.Greet(name="a"), title="one"),
        tq.Task(payload=pb.Greet(name="b"), title="two"),
    )
    tasks = sorted(_listed(cloudtasks_emulator, paused_queue), key=lambda t: t.http_request.url)
    assert len(tasks) == 2
    _assert_greet_task(tasks[0], paused_queue, "/internal/tasks/t/greet/one", "a")
    _assert_greet_task(tasks[1], paused_queue, "/internal/tasks/t/greet/two", "b")


@pytest.mark.parametrize("namespace", ["", "staging"])
def test_dedup_key_names_the_task_by_its_sha256(
    cloudtasks_emulator: CloudTasksEmulator,
    paused_queue: str,
    submitter: tq.CloudTasksSubmitter,
    namespace: str,
) -> None:
    disp = _dispatcher(paused_queue, submitter, namespace=namespace)
    disp.add_task(tq.Task(payload=pb.Greet(name="ada"), deduplication_key="order-17"))
    [task] = _listed(cloudtasks_emulator, paused_queue)
    digest = hashlib.sha256(f"{namespace}\0greet\0order-17".encode()).hexdigest()
    assert task.name == f"{paused_queue}/tasks/{digest}"


async def test_dedup_key_names_the_task_by_its_sha256_async(
    cloudtasks_emulator: CloudTasksEmulator,
    paused_queue: str,
    async_submitter: tq.CloudTasksSubmitter,
) -> None:
    disp = _dispatcher(paused_queue, async_submitter)
    await disp.add_task_async(tq.Task(payload=pb.Greet(name="ada"), deduplication_key="k"))
    [task] = _listed(cloudtasks_emulator, paused_queue)
    assert task.name == f"{paused_queue}/tasks/" + hashlib.sha256(b"\0greet\0k").hexdigest()


def test_eta_becomes_the_schedule_time(
    cloudtasks_emulator: CloudTasksEmulator,
    paused_queue: str,
    submitter: tq.CloudTasksSubmitter,
) -> None:
    eta = dt.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    disp = _dispatcher(paused_queue, submitter)
    with tq.clock.use_clock(_FixedClock(eta - dt.timedelta(hours=1))):
        disp.add_task(tq.Task(payload=pb.Greet(name="later"), eta=eta))
    [task] = _listed(cloudtasks_emulator, paused_queue)
    assert task.schedule_time == eta
    assert float(task.http_request.headers[EXPECTED_ETA_HEADER]) == pytest.approx(eta.timestamp())


class _FixedClock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def now(self) -> dt.datetime:
        return self.at

    def monotonic(self) -> float:
        return 0.0


def test_missing_queue_is_a_permanent_submit_error(
    cloudtasks_emulator: CloudTasksEmulator, submitter: tq.CloudTasksSubmitter
) -> None:
    disp = _dispatcher(cloudtasks_emulator.queue_path("no-such-queue"), submitter)
    with pytest.raises(tq.SubmitError) as info:
        disp.add_task(tq.Task(payload=pb.Greet(name="lost")))
    # The emulator answers FAILED_PRECONDITION (the real service: NOT_FOUND);
    # both are permanent, so the outbox parks such a reminder.
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert not info.value.transient


async def test_missing_queue_is_a_permanent_submit_error_async(
    cloudtasks_emulator: CloudTasksEmulator, async_submitter: tq.CloudTasksSubmitter
) -> None:
    disp = _dispatcher(cloudtasks_emulator.queue_path("no-such-queue"), async_submitter)
    with pytest.raises(tq.SubmitError) as info:
        await disp.add_task_async(tq.Task(payload=pb.Greet(name="lost")))
    assert not info.value.transient


class _Pauses:
    def __init__(self) -> None:
        self.taken: list[float] = []

    def sleep(self, s: float) -> None:
        self.taken.append(s)

    async def sleep_async(self, s: float) -> None:
        self.taken.append(s)


def test_unreachable_api_is_transient_and_retried(cloudtasks_emulator: CloudTasksEmulator) -> None:
    pauses = _Pauses()
    with tq.CloudTasksSubmitter(
        endpoint=f"127.0.0.1:{free_port()}", attempts=3, timeout_s=5, sleep=pauses.sleep
    ) as sub:
        disp = _dispatcher(cloudtasks_emulator.queue_path("default"), sub)
        with pytest.raises(tq.SubmitError) as info:
            disp.add_task(tq.Task(payload=pb.Greet(name="nobody home")))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.transient
    assert len(pauses.taken) == 2


async def test_unreachable_api_is_transient_and_retried_async(
    cloudtasks_emulator: CloudTasksEmulator,
) -> None:
    pauses = _Pauses()
    async with tq.CloudTasksSubmitter(
        endpoint=f"127.0.0.1:{free_port()}", attempts=2, timeout_s=5, sleep_async=pauses.sleep_async
    ) as sub:
        disp = _dispatcher(cloudtasks_emulator.queue_path("default"), sub)
        with pytest.raises(tq.SubmitError) as info:
            await disp.add_task_async(tq.Task(payload=pb.Greet(name="nobody home")))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(pauses.taken) == 1


def test_default_queues_exist(cloudtasks_emulator: CloudTasksEmulator) -> None:
    with cloudtasks_emulator.client() as c:
        names = {q.name for q in c.list_queues(parent=cloudtasks_emulator.parent, timeout=10)}
    assert cloudtasks_emulator.queue_path("default") in names
    assert cloudtasks_emulator.queue_path("tq-sweep") in names


def test_handles_carry_the_names_the_emulator_gave(
    cloudtasks_emulator: CloudTasksEmulator,
    paused_queue: str,
    submitter: tq.CloudTasksSubmitter,
) -> None:
    disp = _dispatcher(paused_queue, submitter)
    picked, named = disp.add_task(
        tq.Task(payload=pb.Greet(name="a")),
        tq.Task(payload=pb.Greet(name="b"), deduplication_key="k"),
    )
    listed = {t.name for t in _listed(cloudtasks_emulator, paused_queue)}
    assert listed == {picked.name, named.name}
    assert named.task_id == hashlib.sha256(b"\0greet\0k").hexdigest()


def test_deleting_on_the_emulator_says_it_cannot(
    paused_queue: str, submitter: tq.CloudTasksSubmitter
) -> None:
    # The emulator does not implement DeleteTask (tests/_fake_cloudtasks.py covers it).
    disp = _dispatcher(paused_queue, submitter)
    (added,) = disp.add_task(tq.Task(payload=pb.Greet(name="a")))
    with pytest.raises(tq.SubmitError) as info:
        disp.delete_task(added)
    assert info.value.code is grpc.StatusCode.UNIMPLEMENTED
    assert not info.value.transient
