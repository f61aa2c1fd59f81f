"""InProcSweeper: a whole sweep in the calling process."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import tq.txn
from sweeper import _pages, _process
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
from sweeper._scan import MAX_DEPTH, SECONDARY_SCAN_SHARDS, TASKS_PER_SCAN, scan, scan_async
from tq import _metrics, _tracing, clock
from tq._submitter import Submitter
from tq.txn import KEY_SPACE, ReminderStore

if TYPE_CHECKING:
    from tq import Dispatcher

log = logging.getLogger("tq.sweeper")


@dataclasses.dataclass(frozen=True, slots=True)
class _Scan:
    store: ReminderStore
    shard_index: int
    shard_count: int
    part: Partition
    level: int

    @property
    def section(self) -> str:
        return _process.section_of(self.store, self.shard_index, self.shard_count)


class InProcSweeper:
    """Sweeps every reminder store from this process, `sweep_shards` scans at once.

    Pass it to a Dispatcher (`tq.Dispatcher(sweeper=InProcSweeper())`) and
    call `dispatcher.sweep()` / `await dispatcher.sweep_async()` now and
    then (from a cron-called endpoint, `sweeper.run_periodically`, or the
    `tq sweep` command). A sweep splits each store's key space into
    `sweep_shards` partitions and scans them concurrently; a scan that finds
    more than `tasks_per_scan` reminders plans follow-up scans for the rest.
    Stale reminders (past their `fresh_until`) are read back in batches and
    submitted with the dispatcher's `submitter()`; memory stays bounded by
    the scans and batches in flight, whatever the backlog.

    One sweep runs at a time per InProcSweeper: a call made while one runs
    returns at once without sweeping (the running sweep covers the same
    ground; the call is logged and counted in `tq_sweeps_skipped`). Sweeps
    in several processes at once split the work through leases on key
    ranges (`use_leases`).

    Args (defaults as in luci's tq):
      stores: the stores to sweep; default: every store registered with
        `tq.txn.register_store`, looked up at each sweep.
      sweep_shards: partitions per store, and scans run at once (16).
      tasks_per_scan: most reminder IDs one scan reads (2,048).
      secondary_scan_shards: most follow-up scans one scan plans (16).
      max_depth: the deepest follow-up level that still plans follow-ups
        (2); deeper backlogs are left to the next sweep.
      scan_timeout_s: how long an async scan waits for its read before
        splitting its range into follow-ups instead (None: no limit; a
        store's own timeout error counts too, in both modes).
      submit_batch_size: reminders read back and submitted as one batch (512).
      submit_concurrent_batches: batches held at once across the sweep (8).
      submit_concurrency: submit calls in flight at once across the sweep
        (32); in `sweep()` that is the size of its thread pool.
      lease_duration: how long a scan's lease on its range lasts (1 minute);
        a batch is not started after it runs out.
      use_leases: take leases (default True); False when this process is
        the only sweeper and the store has no leases table.
      key_space: the size of the reminder ID space swept (2**128); smaller
        only in tests that squeeze IDs into a tiny space.

    Raises ValueError for a tunable out of range.
    """

    def __init__(
        self,
        *,
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
        key_space: int = KEY_SPACE,
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
        if not 1 <= key_space <= KEY_SPACE:
            raise ValueError(f"key_space must be within 1 to 2**128, got {key_space}")
        self._stores = list(stores) if stores is not None else None
        self._key_space = key_space
        self._running = threading.Lock()
        self.last_stats: SweepStats | None = None
        """What the last finished sweep did."""
        self.last_finished: dt.datetime | None = None
        """When the last sweep finished (`tq.clock` time), shown by the dashboard."""

    def stores(self) -> list[ReminderStore]:
        """The stores a sweep covers now."""
        return list(self._stores) if self._stores is not None else tq.txn.stores()

    def _shards(self) -> list[_Scan]:
        n = self.options.sweep_shards
        parts = Partition.full(self._key_space).split(n)
        return [_Scan(s, i, len(parts), p, 0) for s in self.stores() for i, p in enumerate(parts)]

    def _skip(self) -> None:
        _metrics.add("tq_sweeps_skipped", mode="inproc")
        log.info("tq sweep: a sweep is running in this process already; not starting another")

    def _done(self, stats: SweepStats, started: float) -> None:
        self.last_stats = stats
        self.last_finished = clock.now()
        _metrics.add("tq_sweeps", mode="inproc")
        duration = clock.current().monotonic() - started
        _metrics.record("tq_sweep_duration", duration, mode="inproc")
        _metrics.add("tq_sweep_submitted", stats.submitted, mode="inproc")
        log.info(
            "tq sweep: %d scans (%d failed), %d stale, %d submitted, %d kept, %d parked, "
            "%d left to other sweepers, in %.2f s",
            stats.scans,
            stats.scan_errors,
            stats.stale,
            stats.submitted,
            stats.kept,
            stats.parked,
            stats.not_leased,
            clock.current().monotonic() - started,
        )

    # Blocking.

    def sweep(self, dispatcher: Dispatcher) -> None:
        """Runs one sweep to the end (blocking), submitting with `dispatcher.submitter()`."""
        if not self._running.acquire(blocking=False):
            self._skip()
            return
        try:
            started = clock.current().monotonic()
            stats = SweepStats()
            with _tracing.span("tq.sweep", {"tq.sweep.mode": "inproc"}):
                self._sweep_sync(dispatcher.submitter(), stats)
            self._done(stats, started)
        finally:
            self._running.release()

    def _sweep_sync(self, submitter: Submitter, stats: SweepStats) -> None:
        todo = collections.deque(self._shards())
        workers = _process.SyncWorkers(self.options)
        try:
            with concurrent.futures.ThreadPoolExecutor(
                self.options.sweep_shards, thread_name_prefix="tq-sweep-scan"
            ) as pool:
                running: set[concurrent.futures.Future[list[_Scan]]] = set()
                while todo or running:
                    while todo and len(running) < self.options.sweep_shards:
                        item = todo.popleft()
                        running.add(
                            pool.submit(
                                contextvars.copy_context().run,
                                self._one_sync,
                                item,
                                submitter,
                                workers,
                                stats,
                            )
                        )
                    done, running = concurrent.futures.wait(
                        running, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for f in done:
                        todo.extend(f.result())
        finally:
            workers.close()

    def _one_sync(
        self,
        item: _Scan,
        submitter: Submitter,
        workers: _process.SyncWorkers,
        stats: SweepStats,
    ) -> list[_Scan]:
        reader = _pages.pages_of(item.store)
        if reader is not None:
            try:
                parts, stale = _pages.sweep_pages(
                    item.store,
                    reader,
                    item.part,
                    item.level,
                    item.section,
                    submitter,
                    workers,
                    stats,
                )
            except Exception as e:
                _paged_failed(item, stats, e)
                return []
            return _follow_ups(item, parts, stats, stale)
        try:
            result = scan(item.store, item.part, item.level, self.options.scan_params())
        except Exception:
            _scan_failed(item, stats)
            return []
        follow = _follow_ups(item, result.follow_ups, stats, len(result.stale))
        try:
            _process.process(item.store, result, item.section, submitter, workers, stats)
        except Exception:
            _process_failed(item)
        return follow

    # Async.

    async def sweep_async(self, dispatcher: Dispatcher) -> None:
        """Runs one sweep to the end without blocking the event loop."""
        if not self._running.acquire(blocking=False):
            self._skip()
            return
        try:
            started = clock.current().monotonic()
            stats = SweepStats()
            with _tracing.span("tq.sweep", {"tq.sweep.mode": "inproc"}):
                await self._sweep_async(dispatcher.submitter(), stats)
            self._done(stats, started)
        finally:
            self._running.release()

    async def _sweep_async(self, submitter: Submitter, stats: SweepStats) -> None:
        todo = collections.deque(self._shards())
        limits = _process.AsyncLimits(self.options)
        running: set[asyncio.Task[list[_Scan]]] = set()
        try:
            while todo or running:
                while todo and len(running) < self.options.sweep_shards:
                    item = todo.popleft()
                    running.add(
                        asyncio.create_task(self._one_async(item, submitter, limits, stats))
                    )
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    todo.extend(t.result())
        finally:
            # Cancelled mid-sweep: stop the scans still running with it.
            for t in running:
                t.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            limits.close()

    async def _one_async(
        self,
        item: _Scan,
        submitter: Submitter,
        limits: _process.AsyncLimits,
        stats: SweepStats,
    ) -> list[_Scan]:
        reader = _pages.pages_of(item.store)
        if reader is not None:
            try:
                parts, stale = await _pages.sweep_pages_async(
                    item.store,
                    reader,
                    item.part,
                    item.level,
                    item.section,
                    submitter,
                    limits,
                    stats,
                )
            except Exception as e:
                _paged_failed(item, stats, e)
                return []
            return _follow_ups(item, parts, stats, stale)
        try:
            result = await scan_async(
                item.store, item.part, item.level, self.options.scan_params(), limits.threads
            )
        except Exception:
            _scan_failed(item, stats)
            return []
        follow = _follow_ups(item, result.follow_ups, stats, len(result.stale))
        try:
            await _process.process_async(item.store, result, item.section, submitter, limits, stats)
        except Exception:
            _process_failed(item)
        return follow


def _follow_ups(item: _Scan, parts: list[Partition], stats: SweepStats, stale: int) -> list[_Scan]:
    stats.add(scans=1, stale=stale, follow_ups=len(parts))
    stats.reached(item.level)
    return [_Scan(item.store, item.shard_index, item.shard_count, p, item.level + 1) for p in parts]


def _paged_failed(item: _Scan, stats: SweepStats, e: Exception) -> None:
    """A paged scan that failed: its page read (ReadFailed), or its submits or deletes."""
    if isinstance(e, _pages.ReadFailed):
        _scan_failed(item, stats)
    else:
        stats.add(scans=1)
        _process_failed(item)


def _scan_failed(item: _Scan, stats: SweepStats) -> None:
    stats.add(scans=1, scan_errors=1)
    _metrics.add("tq_sweep_scan_errors", store=item.store.name)
    log.exception(
        "tq sweep: scan of %s range %s (level %d) failed; the next sweep retries it",
        item.store.name,
        item.part,
        item.level,
    )


def _process_failed(item: _Scan) -> None:
    _metrics.add("tq_sweep_process_errors", store=item.store.name)
    log.exception(
        "tq sweep: submitting reminders of %s range %s failed; the next sweep retries them",
        item.store.name,
        item.part,
    )
