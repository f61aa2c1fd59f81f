"""The database queue: Cloud Tasks semantics on SQLite or PostgreSQL.

A second delivery backend for tq. `DbQueueSubmitter` stores each task
(the CreateTaskRequest tq builds) as a row of `tq_tasks`; `Worker`s lease
due rows and push them, as Cloud Tasks would, to the same push endpoint
(`tq.asgi.app(...)`), with the same headers and status handling, retries
with backoff per queue, task-name deduplication with a tombstone window,
and rate and concurrency limits per queue. Two ways to run it:

* Embedded (the local default): a SQLite file, workers in the app process
  pushing into the app itself with no socket::

      engine = tq.dbqueue.sqlite_engine("tasks.db")
      tq.dbqueue.create_schema(engine)
      disp.configure(submitter=tq.dbqueue.DbQueueSubmitter(engine))
      worker = tq.dbqueue.Worker(engine, app=app)   # start() in the lifespan

* Self-hosted: PostgreSQL, any number of worker processes anywhere
  (`python -m tq.dbqueue worker --db URL --app module:app`).

Inside a transaction (`tq.txn.sql`), `add_task` on this backend writes the
task row in the caller's transaction (see `WritesInTransaction`). Queues
configured with `pull=True` are not pushed: consumers lease their tasks
with `PullQueue`. `Recurring` adds a task every so often, and workers
given a dispatcher (`Worker(..., dispatcher=disp)`) fire the cron
schedules of its task classes (`TaskClass.schedule`; `cron_states` shows
their next and last ticks). `Admin` lists, deletes, purges, pauses and
reports. Topics: `Subscription`s (`apply_subscriptions`) fan each message of
a topic class out to a queue per subscription, pushed in Pub/Sub's format to
`tq.pubsub.app` (see docs/pubsub.md).

Requires SQLAlchemy 2 (and psycopg 3 for PostgreSQL) and httpx.
"""

from __future__ import annotations

import sqlalchemy as sa

from tq._errors import LeaseConflict, TaskNotFound
from tq.dbqueue._admin import ORDERS, Admin
from tq.dbqueue._cleaner import Cleanup
from tq.dbqueue._cron import CronState, cron_states
from tq.dbqueue._db import mysql_engine, sqlite_engine
from tq.dbqueue._delivery import Signer
from tq.dbqueue._pull import PulledTask, PullQueue
from tq.dbqueue._queuedb import QueueState
from tq.dbqueue._queues import QueueConfig
from tq.dbqueue._queueyaml import load_queue_yaml, parse_queue_yaml
from tq.dbqueue._recurring import Recurring, RecurringInfo
from tq.dbqueue._schema import (
    SCHEMA_VERSION,
    State,
    create_schema,
    schema_sql,
    schema_version,
)
from tq.dbqueue._stats import HistoryPoint, QueueStats
from tq.dbqueue._submitter import TOMBSTONE_WINDOW, DbQueueSubmitter, WritesInTransaction
from tq.dbqueue._taskinfo import TaskInfo
from tq.dbqueue._topics import (
    Subscription,
    apply_subscriptions,
    delete_subscription,
    list_subscriptions,
)
from tq.dbqueue._worker import DEFAULT_DISPATCH_DEADLINE, Worker, run_workers


def apply_queues(engine: sa.Engine, configs: list[QueueConfig]) -> None:
    """Creates or updates the queues' configuration (pause states are kept)."""
    Admin(engine).apply_queues(configs)


__all__ = [
    "DEFAULT_DISPATCH_DEADLINE",
    "ORDERS",
    "SCHEMA_VERSION",
    "TOMBSTONE_WINDOW",
    "Admin",
    "Cleanup",
    "CronState",
    "DbQueueSubmitter",
    "HistoryPoint",
    "LeaseConflict",
    "PullQueue",
    "PulledTask",
    "QueueConfig",
    "QueueState",
    "QueueStats",
    "Recurring",
    "RecurringInfo",
    "Signer",
    "State",
    "Subscription",
    "TaskInfo",
    "TaskNotFound",
    "Worker",
    "WritesInTransaction",
    "apply_queues",
    "apply_subscriptions",
    "create_schema",
    "cron_states",
    "delete_subscription",
    "list_subscriptions",
    "load_queue_yaml",
    "mysql_engine",
    "parse_queue_yaml",
    "run_workers",
    "schema_sql",
    "schema_version",
    "sqlite_engine",
]
