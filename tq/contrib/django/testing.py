"""Testing a Django project's tasks on the database queue, as they run in production.

`DatabaseQueueTestCase` is a `TransactionTestCase` (transactions really
commit, as tq's delivery needs) whose `deliver()` runs the database queue's
tasks through the project's own URLs and tq's views, in this process, until
none is due::

    class OrderTests(DatabaseQueueTestCase):
        def test_an_order_is_confirmed(self):
            self.client.post("/orders", {...}, content_type="application/json")
            self.assertEqual(self.deliver(), 1)
            self.assertEqual(len(mail.outbox), 1)

Tasks go to the database queue of settings.TQ['DATABASE'] (set DELIVERY to
"database", or leave the cloud project unset); tq's own tables are emptied
after each test, as Django flushes the models' tables. For unit tests that
need no database queue, tqtesting's in-memory Scheduler works too
(`tqtesting.testing_context(dispatcher)`).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from django.core.asgi import get_asgi_application
from django.db import connections
from django.test import TransactionTestCase

from tq.contrib.django import _databases, _state

TQ_TABLES = ("tq_tasks", "tq_reminders", "tq_leases", "tq_done", "tq_recurring", "tq_cron")


class DatabaseQueueTestCase(TransactionTestCase):
    """A TransactionTestCase that delivers the database queue's tasks on demand."""

    databases: ClassVar[Any] = {"default"}

    def deliver(self, **worker: Any) -> int:
        """Delivers every due task into the project (ASGI, in process); returns the pushes.

        Keyword arguments go to `tq.dbqueue.Worker`. Tasks the delivered ones
        add are delivered too, until nothing is due.
        """
        from tq.dbqueue import Worker

        engine = _databases.engine_for(_state.current().settings.database)

        async def run() -> int:
            async with Worker(engine, app=get_asgi_application(), **worker) as w:
                return await w.run_until_idle()

        return asyncio.run(run())

    def _fixture_teardown(self) -> None:
        super()._fixture_teardown()
        for alias in self._databases_names(include_mirrors=False):
            if not _databases.supported(alias):
                continue
            with connections[alias].cursor() as cursor:
                for table in TQ_TABLES:
                    cursor.execute(f"DELETE FROM {table}")
