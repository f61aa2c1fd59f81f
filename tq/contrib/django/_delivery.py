"""Delivery to the database queue of a Django alias: a submitter made on first use.

`settings.TQ['DELIVERY'] = "database"` gives the dispatcher a
`DatabaseDelivery`: a `DbQueueSubmitter` on `engine_for(alias)`, made when
first needed and again if the alias's database changes (Django's test
runner switches to the test database after start-up). Inside an `atomic()`
block on the same database the task row is written by Django's connection
(see `_atomic`); elsewhere it goes in through the engine.
"""

from __future__ import annotations

import threading
from typing import Any

import sqlalchemy as sa

from tq._submitter import Submission
from tq.contrib.django._databases import engine_for
from tq.dbqueue import DbQueueSubmitter


class DatabaseDelivery:
    """A `tq.Submitter` storing tasks in the database queue of Django's `alias`."""

    def __init__(self, alias: str, **options: Any) -> None:
        self.alias = alias
        self.options = options  # for DbQueueSubmitter
        self._lock = threading.Lock()
        self._queue: DbQueueSubmitter | None = None

    def __repr__(self) -> str:
        return f"DatabaseDelivery({self.alias!r})"

    def database_queue(self) -> DbQueueSubmitter:
        """The DbQueueSubmitter on the alias's database as configured now."""
        engine = engine_for(self.alias)
        with self._lock:
            if self._queue is None or self._queue.engine is not engine:
                self._queue = DbQueueSubmitter(engine, **self.options)
            return self._queue

    @property
    def engine(self) -> sa.Engine:
        return self.database_queue().engine

    def submit(self, submission: Submission) -> str | None:
        return self.database_queue().submit(submission)

    async def submit_async(self, submission: Submission) -> str | None:
        return await self.database_queue().submit_async(submission)

    def delete_task(self, name: str) -> bool:
        return self.database_queue().delete_task(name)

    async def delete_task_async(self, name: str) -> bool:
        return await self.database_queue().delete_task_async(name)

    # For tq's SQLAlchemy transaction helpers, should a project use both.

    def write_in_transaction(self, connection: sa.Connection, submission: Submission) -> None:
        self.database_queue().write_in_transaction(connection, submission)

    def insert_in_transaction(self, connection: sa.Connection, submission: Submission) -> str:
        return self.database_queue().insert_in_transaction(connection, submission)

    def transaction_committed(self, sure: list[Submission], unsure: list[Submission]) -> None:
        self.database_queue().transaction_committed(sure, unsure)
