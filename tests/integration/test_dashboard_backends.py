"""The dashboard on the backends beyond SQLite: a Spanner outbox and Cloud Tasks queues.

(PostgreSQL runs in the browser tests' long mode and the admin layer's tests.)
Requests go through the ASGI app in process; the data is made through tq's
own paths on the Spanner emulator and the Cloud Tasks emulator.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

import tq
import tq.dashboard
import tq.txn
from tests.testpb import payloads_pb2 as pb
from tq.admin import CloudTasksAdmin
from tq.txn.spanner import SpannerStore

TOKEN = "backend-operator-1"
ACCESS = tq.dashboard.Access(operator_tokens=[TOKEN])


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash.test",
                             headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip


async def act(c: httpx.AsyncClient, action: str, **fields: str) -> httpx.Response:
    page = await c.get(f"/confirm/{action}", params=fields)
    assert page.status_code == 200, page.text
    form = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text)
    return await c.post(f"/act/{action}", content=urllib.parse.urlencode(form),
                        headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip


class _Refusing:
    def submit(self, sub: tq.Submission) -> None:
        raise tq.SubmitError(grpc.StatusCode.NOT_FOUND, "no such queue (on purpose)")

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submit(sub)


@pytest.fixture
def spanner_store(spanner_database: Any) -> Iterator[SpannerStore]:
    s = SpannerStore(spanner_database, name="spanner", retry=0.01)
    try:
        yield s
    finally:
        tq.txn.unregister_store(s.name)


async def test_parked_reminders_of_a_spanner_outbox_are_shown_replayed_and_dropped(
    spanner_store: SpannerStore,
) -> None:
    d = tq.Dispatcher(cloud_project="p", cloud_region="r", default_target_host="app.test",
                      submitter=_Refusing())  # fmt: skip
    d.register_task_class(tq.TaskClass(id="greet", prototype=pb.Greet, queue="emails",
                                       kind=tq.Kind.TRANSACTIONAL))  # fmt: skip

    def add(transaction: Any) -> None:
        for name in ("a", "b"):
            d.add_task(tq.Task(payload=pb.Greet(name=name)))

    spanner_store.run_in_transaction(add)
    assert spanner_store.count_reminders() == (0, 2)
    app = tq.dashboard.app(d, stores=[spanner_store], access=ACCESS)
    async with client(app) as c:
        overview = await c.get("/")
        assert overview.status_code == 200
        assert ">spanner<" in overview.text
        parked = await c.get("/parked")
        ids = re.findall(r'name="ids" value="([0-9a-f]{32})"', parked.text)
        assert len(ids) == 2
        assert "no such queue (on purpose)" in parked.text
        one = await c.get(f"/reminders/spanner/{ids[0]}")
        assert "Payload: tq.tests.Greet" in one.text
        assert (await act(c, "replay", store="spanner", ids=ids[0])).status_code == 303
        assert spanner_store.count_reminders() == (1, 1)
        assert (await act(c, "drop", store="spanner", ids=ids[1])).status_code == 303
        assert spanner_store.count_reminders() == (1, 0)


async def test_cloud_tasks_queues_tasks_and_actions_through_the_api(
    cloudtasks_emulator: Any, cloudtasks_queue: str
) -> None:
    short = cloudtasks_queue.rsplit("/", 1)[1]
    submitter = tq.CloudTasksSubmitter(endpoint=cloudtasks_emulator.endpoint)
    d = tq.Dispatcher(cloud_project=cloudtasks_emulator.project,
                      cloud_region=cloudtasks_emulator.location, default_target_host="127.0.0.1:9",
                      target_scheme="http", submitter=submitter)  # fmt: skip
    d.register_task_class(tq.TaskClass(id="greet", prototype=pb.Greet, queue=short,
                                       kind=tq.Kind.NON_TRANSACTIONAL))  # fmt: skip
    try:  # far in the future: the emulator holds it
        d.add_task(tq.Task(payload=pb.Greet(name="held"), delay=dt.timedelta(days=1)))
    finally:
        submitter.close()
    queues = CloudTasksAdmin.connect(cloudtasks_emulator.project, cloudtasks_emulator.location,
                                     cloudtasks_emulator.endpoint)  # fmt: skip
    app = tq.dashboard.app(d, queues=queues, stores=[], access=ACCESS)
    try:
        async with client(app) as c:
            overview = await c.get("/")
            assert overview.status_code == 200
            assert f">{short}<" in overview.text
            page = await c.get(f"/queues/{short}")
            (name,) = re.findall(rf'/queues/{short}/tasks/([^"]+)"', page.text)
            task = await c.get(f"/queues/{short}/tasks/{name}")
            assert "&quot;name&quot;: &quot;held&quot;" in task.text
            assert (await act(c, "pause", queue=short)).status_code == 303
            states = {q["queue"]: q["state"] for q in queues.list_queues()}
            assert states[short] == "PAUSED"
            assert (await act(c, "resume", queue=short)).status_code == 303
    finally:
        queues.close()
