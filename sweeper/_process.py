"""Submitting what one scan found: a lease on the range, then bounded batches.

Before submitting, the sweeper leases the range its scan covered in the
store (`take_lease`), within a section named after the store and the shard,
so that sweepers running at the same time split the work instead of
submitting the same reminders twice. It then reads the stale reminders back
in batches of `submit_batch_size` (at most `submit_concurrent_batches`
batches held at once across the sweep) and submits them with at most
`submit_concurrency` calls in flight, through `tq._outbox.submit_reminder`:
created -> reminder deleted (once per batch), transient failure -> kept for
the next sweep, permanent failure -> parked. No batch starts once the lease
has run out; what is left goes to the next sweep (a double submit would be
absorbed by the task name).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence

from sweeper._deferred import DeferredDeletes
from sweeper._options import SweepOptions, SweepStats
from sweeper._partition import Partition, covers, merge
from sweeper._scan import ScanResult
from tq import _metrics, _outbox, clock
from tq._reminder import Reminder, parked_extra
from tq._submitter import Submission, Submitter
from tq.txn import Lease, ReminderKey, ReminderStore

log = logging.getLogger("tq.sweeper")


def section_of(store: ReminderStore, shard_index: int, shard_count: int) -> str:
    """The lease section of one shard of one store."""
    return f"{store.name}/{shard_count}/{shard_index}"


def _leased(keys: list[ReminderKey], lease: Lease) -> list[ReminderKey]:
    held = merge(lease.ranges)
    return [k for k in keys if covers(held, int(k.id, 16))]


def _chunks(keys: Sequence[ReminderKey], size: int) -> Iterator[list[str]]:
    for i in range(0, len(keys), size):
        yield [k.id for k in keys[i : i + size]]


def _decode(store: ReminderStore, r: Reminder, stats: SweepStats) -> Submission | None:
    """The reminder's submission; a reminder that cannot be decoded is parked."""
    try:
        return r.submission()
    except Exception as e:
        log.error(
            "tq sweep: reminder %s of store %s is unreadable, parking it: %s", r.id, store.name, e
        )
        try:
            store.park_reminder(
                r.id, parked_extra("DATA_LOSS", f"unreadable reminder: {e}", clock.now())
            )
            stats.add(parked=1)
            _metrics.add("tq_reminders_parked", task_class="?", code="DATA_LOSS")
        except Exception:
            log.exception("tq sweep: could not park unreadable reminder %s", r.id)
            stats.add(kept=1)
        return None


def _count(stats: SweepStats, outcome: _outbox.Outcome) -> None:
    if outcome is _outbox.Outcome.SUBMITTED:
        stats.add(submitted=1)
    elif outcome is _outbox.Outcome.PARKED:
        stats.add(parked=1)
    else:
        stats.add(kept=1)


def _to_submit(
    store: ReminderStore, ids: list[str], reminders: list[Reminder], stats: SweepStats
) -> list[Submission]:
    # Read back now, a reminder may have been unparked with a new fresh_until.
    now = clock.now()
    subs = []
    for r in reminders:
        if r.parked or r.fresh_until > now:
            continue
        sub = _decode(store, r, stats)
        if sub is not None:
            staleness = (now - r.fresh_until).total_seconds()
            _metrics.record("tq_reminders_staleness", staleness, task_class=sub.task_class)
            subs.append(sub)
    stats.add(gone=len(ids) - len(reminders))
    return subs


def _fetch_to_submit(store: ReminderStore, ids: list[str], stats: SweepStats) -> list[Submission]:
    return _to_submit(store, ids, store.fetch_reminders(ids), stats)


class SyncWorkers:
    """Thread pools and limits shared by every scan of one blocking sweep."""

    def __init__(self, opts: SweepOptions) -> None:
        self.opts = opts
        self.submits = concurrent.futures.ThreadPoolExecutor(
            opts.submit_concurrency, thread_name_prefix="tq-sweep-submit"
        )
        self.batches = threading.BoundedSemaphore(opts.submit_concurrent_batches)

    def close(self) -> None:
        self.submits.shutdown(wait=True)


def process(
    store: ReminderStore,
    result: ScanResult,
    section: str,
    submitter: Submitter,
    workers: SyncWorkers,
    stats: SweepStats,
) -> None:
    """Leases the scanned range and submits its stale reminders (blocking)."""
    opts = workers.opts
    with _lease(store, result, section, opts, stats) as (keys, lease):
        for ids in _chunks(keys, opts.submit_batch_size):
            if lease is not None and clock.now() >= lease.expires_at:
                _lease_ran_out(store, section)
                return
            with workers.batches:
                subs = _fetch_to_submit(store, ids, stats)
                view = DeferredDeletes(store)
                # A few slices per batch, each submitted in turn by one pool
                # thread: up to submit_concurrency calls in flight, without a
                # thread hop per reminder.
                k = min(opts.submit_concurrency, len(subs))
                futures = [
                    workers.submits.submit(
                        contextvars.copy_context().run,
                        _submit_each,
                        view,
                        subs[i::k],
                        submitter,
                        stats,
                    )
                    for i in range(k)
                ]
                try:
                    for f in futures:
                        f.result()
                finally:
                    view.flush()


def _submit_each(
    view: DeferredDeletes, subs: list[Submission], submitter: Submitter, stats: SweepStats
) -> None:
    for sub in subs:
        _count(stats, _outbox.submit_reminder(view, sub, submitter, "sweep"))


@contextlib.contextmanager
def _lease(
    store: ReminderStore,
    result: ScanResult,
    section: str,
    opts: SweepOptions,
    stats: SweepStats,
) -> Iterator[tuple[list[ReminderKey], Lease | None]]:
    keys = result.stale
    if not keys or not opts.use_leases:
        yield keys, None
        return
    now = clock.now()
    lease = store.take_lease(section, _ranges(result.covered), now + opts.lease_duration, now)
    try:
        mine = _leased(keys, lease)
        stats.add(not_leased=len(keys) - len(mine))
        yield mine, lease
    finally:
        _release(store, section, lease)


def _ranges(covered: Partition) -> list[tuple[int, int]]:
    return [(covered.low, covered.high)] if covered else []


def _release(store: ReminderStore, section: str, lease: Lease) -> None:
    try:
        store.release_lease(section, lease.lease_id)
    except Exception:
        # It expires on its own; the next sweep only waits for it.
        log.exception("tq sweep: could not release lease %s of %s", lease.lease_id, section)


def _lease_ran_out(store: ReminderStore, section: str) -> None:
    _metrics.add("tq_sweep_lease_expired", store=store.name)
    log.warning("tq sweep: lease on %s ran out; the next sweep submits the rest", section)


class AsyncLimits:
    """Limits shared by every scan of one async sweep."""

    def __init__(self, opts: SweepOptions) -> None:
        self.opts = opts
        self.submits = asyncio.Semaphore(opts.submit_concurrency)
        self.batches = asyncio.Semaphore(opts.submit_concurrent_batches)


async def process_async(
    store: ReminderStore,
    result: ScanResult,
    section: str,
    submitter: Submitter,
    limits: AsyncLimits,
    stats: SweepStats,
) -> None:
    """Like `process`, from async code (store calls run in threads)."""
    opts = limits.opts
    async with _lease_async(store, result, section, opts, stats) as (keys, lease):
        for ids in _chunks(keys, opts.submit_batch_size):
            if lease is not None and clock.now() >= lease.expires_at:
                _lease_ran_out(store, section)
                return
            async with limits.batches:
                subs = await asyncio.to_thread(_fetch_to_submit, store, ids, stats)
                view = DeferredDeletes(store)
                try:
                    await asyncio.gather(
                        *(_submit_one(view, s, submitter, limits, stats) for s in subs)
                    )
                finally:
                    await asyncio.to_thread(view.flush)


async def _submit_one(
    view: DeferredDeletes,
    sub: Submission,
    submitter: Submitter,
    limits: AsyncLimits,
    stats: SweepStats,
) -> None:
    async with limits.submits:
        outcome = await _outbox.submit_reminder_async(view, sub, submitter, "sweep")
    _count(stats, outcome)


@contextlib.asynccontextmanager
async def _lease_async(
    store: ReminderStore,
    result: ScanResult,
    section: str,
    opts: SweepOptions,
    stats: SweepStats,
) -> AsyncIterator[tuple[list[ReminderKey], Lease | None]]:
    keys = result.stale
    if not keys or not opts.use_leases:
        yield keys, None
        return
    now = clock.now()
    lease = await asyncio.to_thread(
        store.take_lease, section, _ranges(result.covered), now + opts.lease_duration, now
    )
    try:
        mine = _leased(keys, lease)
        stats.add(not_leased=len(keys) - len(mine))
        yield mine, lease
    finally:
        await asyncio.to_thread(_release, store, section, lease)
