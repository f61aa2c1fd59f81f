"""The dashboard's queue pages on every database the database queue runs on.

SQLite, PostgreSQL and MariaDB: keyset pages in each order, counts by
state, the last hour's history and the pages that use them, through the
ASGI app in process.
"""

from __future__ import annotations

import datetime as dt
import re

import httpx
import sqlalchemy as sa

import tq
import tq.dashboard
from tests._dbengines import any_engine_fixture  # noqa: F401
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue

TOKEN = "databases-viewer-1"


async def test_queue_pages_orders_and_history_on_every_database(engine: sa.Engine) -> None:
    d = tq.Dispatcher(cloud_project="p", cloud_region="r", default_target_host="app.test",
                      submitter=dbqueue.DbQueueSubmitter(engine))  # fmt: skip
    d.register_task_class(tq.TaskClass(id="greet", prototype=pb.Greet, queue="emails",
                                       kind=tq.Kind.NON_TRANSACTIONAL))  # fmt: skip
    for i in range(7):
        d.add_task(tq.Task(payload=pb.Greet(name=f"n{i}"), title=f"t{i}",
                           delay=dt.timedelta(hours=(7 - i) // 2)))  # fmt: skip
    admin = dbqueue.Admin(engine)
    first = admin.list_tasks(queue="emails", limit=1)[0]
    assert admin.delete_task("emails", first.name)
    for order in dbqueue.ORDERS:
        seen, cursor = [], None
        while True:
            page, cursor = admin.page_tasks(queue="emails", order=order, limit=3, cursor=cursor)
            seen += [t.name for t in page]
            if cursor is None:
                break
        assert sorted(seen) == sorted(t.name for t in admin.list_tasks(queue="emails")), order
    counts = admin.count_by_state("emails")
    assert (counts[dbqueue.State.PENDING], counts[dbqueue.State.DELETED]) == (6, 1)
    points = admin.history("emails")
    assert sum(p.added for p in points) == 7
    assert (points[-1].depth, sum(p.finished for p in points)) == (6, 1)

    app = tq.dashboard.app(d, engine=engine, stores=[],
                           access=tq.dashboard.Access(viewer_tokens=[TOKEN]))  # fmt: skip
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                 headers=auth) as c:  # fmt: skip
        assert (await c.get("/")).status_code == 200
        page = await c.get("/queues/emails", params={"order": "overdue", "state": "pending"})
        assert page.status_code == 200
        assert "pending (6)" in page.text
        names = re.findall(r"/queues/emails/tasks/([0-9a-f]+)", page.text)
        assert len(names) == 6
        task = await c.get(f"/queues/emails/tasks/{names[0]}")
        assert "Payload: tq.tests.Greet" in task.text
