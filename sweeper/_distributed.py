"""DistributedSweeper: a sweep spread over the service's replicas by Cloud Tasks."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from google.protobuf.message import Message

import tq.txn
from sweeper import _process
from sweeper._options import (
    LEASE_DURATION,
    SUBMIT_BATCH_SIZE,
    SUBMIT_CONCURRENCY,
    SUBMIT_CONCURRENT_BATCHES,
    SWEEP_SHARDS,
    SweepOptions,
    SweepStats,
)
from sweeper._partition import Partition
from sweeper._scan import MAX_DEPTH, SECONDARY_SCAN_SHARDS, TASKS_PER_SCAN, scan_async
from tq import _metrics, _tracing
from tq._errors import ConfigError, Fatal, Ignore
from tq._execution import execution_info
from tq._pb.sweep_pb2 import SweepTask
from tq._task import Task
from tq._taskclass import DEFAULT_ROUTING_PREFIX, Kind, TaskClass
from tq.txn import ReminderStore

if TYPE_CHECKING:
    from tq import Dispatcher

log = logging.getLogger("tq.sweeper")

SWEEP_CLASS_ID = "tq-sweep"
DEFAULT_QUEUE = "tq-sweep"


class DistributedSweeper:
    """Sweeps through Cloud Tasks: one sweep task per shard, run by any replica.

    Construct it once at start-up in every replica, with the dispatcher it
    serves: it registers the internal NON_TRANSACTIONAL task class
    `tq-sweep` (payload `SweepTask`, on `queue`) with its handler, and sets
    itself as the dispatcher's sweeper::

        disp = tq.Dispatcher(...)
        sweeper.DistributedSweeper(disp)            # queue "tq-sweep"
        ...
        disp.sweep()                                # e.g. from the cron endpoint

    `sweep()` enqueues one sweep task per shard per store (`sweep_shards`,
    default 16). Each sweep task, wherever Cloud Tasks pushes it, scans its
    key range, enqueues follow-up sweep tasks for what it could not read,
    takes a lease on what it read (so that overlapping sweeps split the work
    instead of doubling it) and submits the stale reminders found there.

    Sweep tasks are never retried: the handler turns every failure into
    `tq.Fatal` (HTTP 202, logged as an error) and drops a push that Cloud
    Tasks retries anyway (`tq.Ignore`); the next sweep picks up what is left.
    Configure the queue with no retries too (`max_attempts: 1`, see
    docs/sweeping.md).

    Args: as `InProcSweeper` (`stores`, `sweep_shards`, `tasks_per_scan`,
    `secondary_scan_shards`, `max_depth`, `scan_timeout_s`,
    `submit_batch_size`, `submit_concurrent_batches`, `submit_concurrency`,
    `lease_duration`, `use_leases`), and:
      queue: the Cloud Tasks queue of sweep tasks (default "tq-sweep"),
        short or full name.
      routing_prefix, target_host: where sweep tasks are pushed (default:
        the dispatcher's push endpoint, `/internal/tasks/t/tq-sweep/...`).

    Raises ConfigError if the dispatcher has a `tq-sweep` class already,
    ValueError for a tunable out of range.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        queue: str = DEFAULT_QUEUE,
        stores: Sequence[ReminderStore] | None = None,
        sweep_shards: int = SWEEP_SHARDS,
        tasks_per_scan: int = TASKS_PER_SCAN,
        secondary_scan_shards: int = SECONDARY_SCAN_SHARDS,
        max_depth: int = MAX_DEPTH,
        scan_timeout_s: float | None = None,
        submit_batch_size: int = SUBMIT_BATCH_SIZE,
        submit_concurrent_batches: int = SUBMIT_CONCURRENT_BATCHES,
        submit_concurrency: int = SUBMIT_CONCURRENCY,
        lease_duration: dt.timedelta = LEASE_DURATION,
        use_leases: bool = True,
        routing_prefix: str = DEFAULT_ROUTING_PREFIX,
        target_host: str | None = None,
    ) -> None:
        self.options = SweepOptions(
            sweep_shards=sweep_shards,
            tasks_per_scan=tasks_per_scan,
            secondary_scan_shards=secondary_scan_shards,
            max_depth=max_depth,
            scan_timeout_s=scan_timeout_s,
            submit_batch_size=submit_batch_size,
            submit_concurrent_batches=submit_concurrent_batches,
            submit_concurrency=submit_concurrency,
            lease_duration=lease_duration,
            use_leases=use_leases,
        )
        self._stores = list(stores) if stores is not None else None
        self._dispatcher = dispatcher
        self.task_class = dispatcher.register_task_class(
            TaskClass(
                id=SWEEP_CLASS_ID,
                prototype=SweepTask,
                kind=Kind.NON_TRANSACTIONAL,
                queue=queue,
                handler=self._handler,
                routing_prefix=routing_prefix,
                target_host=target_host,
            )
        )
        dispatcher.configure(sweeper=self)

    def stores(self) -> list[ReminderStore]:
        """The stores a sweep covers now."""
        return list(self._stores) if self._stores is not None else tq.txn.stores()

    def _store(self, name: str) -> ReminderStore | None:
        if self._stores is None:
            return tq.txn.get_store(name)
        return next((s for s in self._stores if s.name == name), None)

    def _check(self, dispatcher: Dispatcher) -> None:
        if dispatcher is not self._dispatcher:
            raise ConfigError(
                "this DistributedSweeper serves another dispatcher: make one per dispatcher"
            )

    def _first_tasks(self) -> list[Task]:
        parts = Partition.full().split(self.options.sweep_shards)
        sweep_id = uuid.uuid4().hex
        return [
            Task(
                payload=SweepTask(
                    store=store.name,
                    partition=str(p),
                    shard_index=i,
                    shard_count=len(parts),
                    level=0,
                    lessor_id=sweep_id,
                ),
                title=f"shard-{i}",
            )
            for store in self.stores()
            for i, p in enumerate(parts)
        ]

    # The Sweeper protocol.

    def sweep(self, dispatcher: Dispatcher) -> None:
        """Enqueues one sweep task per shard per store (blocking); returns at once."""
        self._check(dispatcher)
        tasks = self._first_tasks()
        with _tracing.span("tq.sweep", {"tq.sweep.mode": "distributed"}):
            for i in range(0, len(tasks), 500):
                dispatcher.add_task(*tasks[i : i + 500])
        _metrics.add("tq_sweeps", mode="distributed")
        log.info("tq sweep: enqueued %d sweep tasks", len(tasks))

    async def sweep_async(self, dispatcher: Dispatcher) -> None:
        """Like `sweep`, from async code."""
        self._check(dispatcher)
        tasks = self._first_tasks()
        with _tracing.span("tq.sweep", {"tq.sweep.mode": "distributed"}):
            for i in range(0, len(tasks), 500):
                await dispatcher.add_task_async(*tasks[i : i + 500])
        _metrics.add("tq_sweeps", mode="distributed")
        log.info("tq sweep: enqueued %d sweep tasks", len(tasks))

    # The handler of sweep tasks.

    async def _handler(self, payload: Message) -> None:
        if not isinstance(payload, SweepTask):
            raise Fatal(f"tq-sweep takes SweepTask payloads, got {type(payload).__name__}")
        await self.handle(payload)

    async def handle(self, task: SweepTask) -> None:
        """Runs one sweep task: scan, enqueue follow-ups, lease, submit.

        Raises `tq.Fatal` on any failure and `tq.Ignore` for a retried push,
        so that sweep tasks are never retried.
        """
        try:
            info = execution_info()
        except LookupError:  # called directly, not through a push
            info = None
        if info is not None and (info.retry_count > 0 or info.execution_count > 0):
            raise Ignore(f"sweep task of range {task.partition} is not retried; the next sweep is")
        store = self._store(task.store)
        if store is None:
            raise Fatal(f"sweep task for unknown store {task.store!r}; is it registered?")
        try:
            part = Partition.from_string(task.partition)
        except ValueError as e:
            raise Fatal(f"sweep task with a bad partition: {e}") from e
        try:
            stats = await self._run(store, task, part)
        except (Fatal, Ignore):
            raise
        except Exception as e:
            _metrics.add("tq_sweep_task_errors", store=store.name)
            raise Fatal(f"sweep of {store.name} range {part} failed: {e!r}") from e
        log.debug("tq sweep: %s range %s level %d: %s", store.name, part, task.level, stats)

    async def _run(self, store: ReminderStore, task: SweepTask, part: Partition) -> SweepStats:
        limits = _process.AsyncLimits(self.options)
        try:
            return await self._scan_and_submit(store, task, part, limits)
        finally:
            limits.close()

    async def _scan_and_submit(
        self, store: ReminderStore, task: SweepTask, part: Partition, limits: _process.AsyncLimits
    ) -> SweepStats:
        stats = SweepStats()
        result = await scan_async(
            store, part, task.level, self.options.scan_params(), limits.threads
        )
        stats.add(scans=1, stale=len(result.stale), follow_ups=len(result.follow_ups))
        stats.reached(task.level)
        follow = [
            Task(
                payload=SweepTask(
                    store=task.store,
                    partition=str(p),
                    shard_index=task.shard_index,
                    shard_count=task.shard_count,
                    level=task.level + 1,
                    lessor_id=task.lessor_id,
                ),
                title=f"shard-{task.shard_index}-{task.level + 1}",
            )
            for p in result.follow_ups
        ]
        # Follow-ups go out while this scan's reminders are submitted, so that
        # other replicas start on them at once.
        section = _process.section_of(store, task.shard_index, task.shard_count)
        results = await asyncio.gather(
            self._dispatcher.add_task_async(*follow) if follow else _nothing(),
            _process.process_async(
                store, result, section, self._dispatcher.submitter(), limits, stats
            ),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return stats


async def _nothing() -> None:
    return None
