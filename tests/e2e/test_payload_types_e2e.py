"""Every registrable payload type round-trips through Cloud Tasks (the emulator).

add_task -> CloudTasksSubmitter -> the Cloud Tasks API emulator -> an HTTP
push to `tq.asgi.app` under uvicorn -> the handler, for each well-known
type, whose envelope `body` is a string, a number, a boolean, a list, null
or an object. The in-memory and database-queue runs are in
tests/unit/test_payload_types.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tq
import tq.asgi
from tests._payload_types import SAMPLES, Received, class_of, register_all
from tests._services.cloudtasks import CloudTasksEmulator
from tests._services.push_app import push_app, wait_until
from tests._services.uvicorn_server import ServedApp


@pytest.fixture(scope="module")
def through_the_emulator(
    cloudtasks_emulator: CloudTasksEmulator,
) -> Iterator[tuple[tq.Dispatcher, Received]]:
    """One queue, one dispatcher with a class per type, one app under uvicorn."""
    queue = cloudtasks_emulator.create_queue("wkt")
    with tq.CloudTasksSubmitter(endpoint=cloudtasks_emulator.endpoint) as submitter:
        disp = tq.Dispatcher(target_scheme="http", submitter=submitter)
        received = register_all(disp, queue)
        with ServedApp(push_app(disp, auth=tq.asgi.INSECURE_NO_AUTH)) as served:
            disp.configure(default_target_host=served.netloc)
            yield disp, received
    cloudtasks_emulator.retire_queue(queue)


@pytest.mark.parametrize("sample", SAMPLES)
def test_payload_type_round_trips_through_the_cloud_tasks_emulator(
    through_the_emulator: tuple[tq.Dispatcher, Received], sample: str
) -> None:
    disp, received = through_the_emulator
    class_id = class_of(sample)
    before = len(received.of(class_id))
    disp.add_task(tq.Task(payload=SAMPLES[sample], title=sample))
    wait_until(lambda: len(received.of(class_id)) > before, f"the {class_id} handler")
    assert received.of(class_id)[before:] == [SAMPLES[sample]]
