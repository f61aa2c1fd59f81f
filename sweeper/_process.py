"""Submitting what one scan found: a lease on the range, then bounded batches.

Before submitting, the sweeper leases the range its scan covered in the
store (`take_lease`), within a section named after the store and the shard,
so that sweepers running at the same time split the work instead of
submitting the same reminders twice. It then reads the stale reminders back
in batches of `submit_batch_size` (at most `submit_concurrent_batches`
batches held at once across the sweep) and submits them with at most
`submit_concurrency` calls in flight, through `tq._outbox.submit_reminders`:
created -> deleted (one statement per batch, after its submits), transient
failure -> kept for the next sweep, permanent failure -> parked. A batch is
cut into slices, each submitted in turn by one thread (or one asyncio task):
concurrency without a thread hop or a task per reminder; counters are added
per slice and per batch, not per reminder. No batch starts once the lease
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

from sweeper._decode import decode
from sweeper._options import SweepOptions, SweepStats
from sweeper._partition import Partition, covers, merge
from sweeper._scan import ScanResult
from sweeper._threads import SweepThreads
from tq import _metrics, _outbox, clock
from tq._reminder import Reminder
from tq._submitter import Submission, Submitter
from tq.txn import Lease, ReminderKey, ReminderStore

log = logging.getLogger("tq.sweeper")


def section_of(store: ReminderStore, shard_index: int, shard_count: int) -> str:
    """The lease section of one shard of one store."""
    return f"{store.name}/{shard_count}/{shard_index}"


def _leased(keys: list[ReminderKey], lease: Lease) -> list[ReminderKey]:
    held = merge(lease.ranges)
    if not keys or not held:
        return []
    # Keys are ascending: one range holding the first and last holds them all
    # (the common case, with no other sweeper on the range).
    first, last = int(keys[0].id, 16), int(keys[-1].id, 16)
    if len(held) == 1 and held[0].low <= first and last < held[0].high:
        return keys
    return [k for k in keys if covers(held, int(k.id, 16))]


def _chunks(keys: Sequence[ReminderKey], size: int) -> Iterator[list[str]]:
    for i in range(0, len(keys), size):
        yield [k.id for k in keys[i : i + size]]


def _to_submit(
    store: ReminderStore, ids: list[str], reminders: list[Reminder], stats: SweepStats
) -> list[Submission]:
    # Read back now, a reminder may have been unparked with a new fresh_until.
    subs = decode(store, reminders, stats)
    stats.add(gone=len(ids) - len(reminders))
    return subs


def _fetch_to_submit(store: ReminderStore, ids: list[str], stats: SweepStats) -> list[Submission]:
    return _to_submit(store, ids, store.fetch_reminders(ids), stats)


def _slices(subs: list[Submission], concurrency: int) -> list[list[Submission]]:
    """At most `concurrency` slices of `subs`, each submitted in turn by one worker."""
    k = min(concurrency, len(subs))
    return [subs[i::k] for i in range(k)]


def finish(store: ReminderStore, results: list[_outbox.Submitted], stats: SweepStats) -> None:
    """Deletes a batch's submitted reminders in one call; counts the outcomes. Never raises."""
    done = [rid for r in results for rid in r.done]
    stats.add(
        submitted=len(done),
        kept=sum(r.kept for r in results),
        parked=sum(r.parked for r in results),
    )
    if not done:
        return
    try:
        store.delete_reminders(done)
    except Exception:
        # The tasks exist; a later sweep resubmits them and their names absorb it.
        log.exception("tq sweep: could not delete %d submitted reminders", len(done))


# A slice whose submits took less than this each, on average, was in-process
# work (a test scheduler, a no-op): threads would only add switching to it.
QUICK_SUBMIT_S = 0.001


class SyncWorkers:
    """Thread pools and limits shared by every scan of one blocking sweep."""

    def __init__(self, opts: SweepOptions) -> None:
        self.opts = opts
        self.submits = concurrent.futures.ThreadPoolExecutor(
            opts.submit_concurrency, thread_name_prefix="tq-sweep-submit"
        )
        self.batches = threading.BoundedSemaphore(opts.submit_concurrent_batches)
        # Slices run by the pool or by the batch's own thread: together at
        # most submit_concurrency at once.
        self.in_flight = threading.BoundedSemaphore(opts.submit_concurrency)

    def submit_slice(
        self,
        store: ReminderStore,
        subs: list[Submission],
        submitter: Submitter,
        out: _outbox.Submitted,
    ) -> float:
        """Submits one slice, within the concurrency limit; returns its duration."""
        with self.in_flight:
            c = clock.current()
            started = c.monotonic()
            _outbox.submit_reminders(store, subs, submitter, "sweep", out)
            return c.monotonic() - started

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
                lease_ran_out(store, section)
                return
            with workers.batches:
                _submit_batch(store, ids, submitter, workers, stats)


def _submit_batch(
    store: ReminderStore,
    ids: list[str],
    submitter: Submitter,
    workers: SyncWorkers,
    stats: SweepStats,
) -> None:
    submit_batch(store, _fetch_to_submit(store, ids, stats), submitter, workers, stats)


def submit_batch(
    store: ReminderStore,
    subs: list[Submission],
    submitter: Submitter,
    workers: SyncWorkers,
    stats: SweepStats,
) -> None:
    """Submits a batch read already, then deletes what was submitted (blocking)."""
    outs: list[_outbox.Submitted] = []
    try:
        submit_slices(store, subs, submitter, workers, outs)
    finally:
        # After every submit of the batch returned: what succeeded is deleted
        # even if a slice failed unexpectedly.
        finish(store, outs, stats)


def submit_slices(
    store: ReminderStore,
    subs: list[Submission],
    submitter: Submitter,
    workers: SyncWorkers,
    outs: list[_outbox.Submitted],
    group: int = 1,
) -> bool:
    """Submits `subs` in slices, their outcomes added to `outs`; True if all were quick.

    This thread submits slices while the submits are quick (in-process),
    `group` slices in the first go, then each time twice as many (a slice's
    set-up and counting is then paid a few times per batch, not once per
    slice); after a slow one (network calls) the rest go to the pool, to be
    submitted concurrently. Returns once every submit has returned.
    """
    if not subs:
        return True
    if group >= min(workers.opts.submit_concurrency, len(subs)):
        # All in one go: no slices to cut and join again.
        outs.append(out := _outbox.Submitted())
        return workers.submit_slice(store, subs, submitter, out) <= QUICK_SUBMIT_S * len(subs)
    parts = _slices(subs, workers.opts.submit_concurrency)
    mine = [_outbox.Submitted() for _ in parts]
    outs.extend(mine)
    futures: list[concurrent.futures.Future[float]] = []
    try:
        i, n = 0, group
        while i < len(parts):
            batch = parts[i] if n == 1 else [sub for part in parts[i : i + n] for sub in part]
            took = workers.submit_slice(store, batch, submitter, mine[i])
            i += n
            if took > QUICK_SUBMIT_S * len(batch):
                break
            n *= 2
        futures = [
            workers.submits.submit(
                contextvars.copy_context().run, workers.submit_slice, store, part, submitter, out
            )
            for part, out in zip(parts[i:], mine[i:], strict=True)
        ]
        for f in futures:
            f.result()
    finally:
        concurrent.futures.wait(futures)
    return not futures


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
        release_quietly(store, section, lease)


def _ranges(covered: Partition) -> list[tuple[int, int]]:
    return [(covered.low, covered.high)] if covered else []


def release_quietly(store: ReminderStore, section: str, lease: Lease) -> None:
    try:
        store.release_lease(section, lease.lease_id)
    except Exception:
        # It expires on its own; the next sweep only waits for it.
        log.exception("tq sweep: could not release lease %s of %s", lease.lease_id, section)


def lease_ran_out(store: ReminderStore, section: str) -> None:
    _metrics.add("tq_sweep_lease_expired", store=store.name)
    log.warning("tq sweep: lease on %s ran out; the next sweep submits the rest", section)


class AsyncLimits:
    """Limits and threads shared by every scan of one async sweep; `close()` at its end."""

    def __init__(self, opts: SweepOptions) -> None:
        self.opts = opts
        self.submits = asyncio.Semaphore(opts.submit_concurrency)
        self.batches = asyncio.Semaphore(opts.submit_concurrent_batches)
        self.threads = SweepThreads(opts.sweep_shards + opts.submit_concurrent_batches)

    def close(self) -> None:
        self.threads.close()


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
    async with _lease_async(store, result, section, limits, stats) as (keys, lease):
        for ids in _chunks(keys, opts.submit_batch_size):
            if lease is not None and clock.now() >= lease.expires_at:
                lease_ran_out(store, section)
                return
            async with limits.batches:
                subs = await limits.threads.run(_fetch_to_submit, store, ids, stats)
                await submit_batch_async(store, subs, submitter, limits, stats)


async def submit_batch_async(
    store: ReminderStore,
    subs: list[Submission],
    submitter: Submitter,
    limits: AsyncLimits,
    stats: SweepStats,
) -> None:
    """Like `submit_batch`, from async code."""
    outs: list[_outbox.Submitted] = []
    try:
        _, settled = await submit_slices_async(store, subs, submitter, limits, outs)
    finally:
        # Also when cancelled midway: what was submitted is deleted.
        await limits.threads.run(finish, store, outs, stats)
    raise_first(settled)


def raise_first(settled: list[object]) -> None:
    """Raises the first exception of what concurrent slices returned."""
    for r in settled:
        if isinstance(r, BaseException):
            raise r


async def submit_slices_async(
    store: ReminderStore,
    subs: list[Submission],
    submitter: Submitter,
    limits: AsyncLimits,
    outs: list[_outbox.Submitted],
    group: int = 1,
) -> tuple[bool, list[object]]:
    """Like `submit_slices`: in this task while the submits are quick, the
    rest as concurrent tasks after a slow one. Returns whether all were
    quick, and what the concurrent ones raised or returned."""
    c = clock.current()
    if not subs:
        return True, []
    if group >= min(limits.opts.submit_concurrency, len(subs)):
        outs.append(out := _outbox.Submitted())
        started = c.monotonic()
        await _submit_slice(store, subs, submitter, limits, out)
        return c.monotonic() - started <= QUICK_SUBMIT_S * len(subs), []
    parts = _slices(subs, limits.opts.submit_concurrency)
    mine = [_outbox.Submitted() for _ in parts]
    outs.extend(mine)
    i, n = 0, group
    while i < len(parts):
        batch = parts[i] if n == 1 else [sub for part in parts[i : i + n] for sub in part]
        started = c.monotonic()
        await _submit_slice(store, batch, submitter, limits, mine[i])
        i += n
        if c.monotonic() - started > QUICK_SUBMIT_S * len(batch):
            break
        n *= 2
    if i >= len(parts):
        return True, []
    settled: list[object] = list(
        await asyncio.gather(
            *(
                _submit_slice(store, part, submitter, limits, out)
                for part, out in zip(parts[i:], mine[i:], strict=True)
            ),
            return_exceptions=True,
        )
    )
    return False, settled


async def _submit_slice(
    store: ReminderStore,
    subs: list[Submission],
    submitter: Submitter,
    limits: AsyncLimits,
    out: _outbox.Submitted,
) -> None:
    async with limits.submits:
        await _outbox.submit_reminders_async(store, subs, submitter, "sweep", out)


@contextlib.asynccontextmanager
async def _lease_async(
    store: ReminderStore,
    result: ScanResult,
    section: str,
    limits: AsyncLimits,
    stats: SweepStats,
) -> AsyncIterator[tuple[list[ReminderKey], Lease | None]]:
    keys, opts = result.stale, limits.opts
    if not keys or not opts.use_leases:
        yield keys, None
        return
    now = clock.now()
    lease = await limits.threads.run(
        store.take_lease, section, _ranges(result.covered), now + opts.lease_duration, now
    )
    try:
        mine = _leased(keys, lease)
        stats.add(not_leased=len(keys) - len(mine))
        yield mine, lease
    finally:
        await limits.threads.run(release_quietly, store, section, lease)
