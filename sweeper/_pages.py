"""Paged scans: a lease on the whole range first, then pages of whole reminders.

For a store that reads whole reminders of a key range (`scan_reminders`,
which `tq.txn.sql.SQLStore` has), a scan reads each reminder once instead
of twice (its key in the scan, then its row by ID in a batch): it leases
the partition before reading it, then reads it in pages of
`submit_batch_size` reminders in key order (at most `tasks_per_scan` in
all), and submits and deletes each page before reading the next. What the
lease guards is the same as in `_process`: a page is read while this
sweeper holds its range, so what another sweeper submitted and deleted
under its own lease is gone from the page, and nothing is read again by
ID. A range held by another sweeper is left to it (with its follow-ups:
the holder plans them); keys outside the lease that a page read anyway are
left alone and counted as `not_leased`. No page is read once the lease has
run out (the next sweep goes on from there).

Follow-ups are planned as `_scan.plan` does, from the keys read; a page
read that times out ends the scan there (the rest is split into follow-ups).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Protocol, runtime_checkable

from sweeper._decode import decode, decode_apart, park_unreadable
from sweeper._options import SweepStats
from sweeper._partition import Partition, covers, merge
from sweeper._process import (
    AsyncLimits,
    SyncWorkers,
    finish,
    lease_ran_out,
    raise_first,
    release_quietly,
    submit_slices,
    submit_slices_async,
)
from sweeper._scan import ScanParams, is_timeout, note_cut, observed
from tq import _outbox, clock
from tq._reminder import Reminder
from tq._submitter import Submission, Submitter
from tq.txn import Lease, ReminderStore


@runtime_checkable
class ScanningStore(Protocol):
    """A store that reads whole reminders of a key range in one statement."""

    def scan_reminders(self, low: str, high: str, limit: int) -> list[Reminder]:
        """Up to `limit` unparked reminders with low <= ID < high, ascending, payloads included."""
        ...


def pages_of(store: ReminderStore) -> ScanningStore | None:
    """`store` if a scan can read its reminders whole, else None."""
    return store if isinstance(store, ScanningStore) else None


class ReadFailed(Exception):
    """A page read failed (not a timeout): the scan failed, its cause chained."""


@dataclasses.dataclass(slots=True)
class PagedScan:
    """One paged scan of a partition: what it read so far, and what it plans."""

    store: ReminderStore
    part: Partition
    level: int
    params: ScanParams
    page_size: int
    held: list[Partition] = dataclasses.field(default_factory=list)
    lease: Lease | None = None
    read: int = 0  # reminders read
    stale: int = 0  # of them stale
    last: int = -1  # the highest key read
    timed_out: bool = False
    ran_out: bool = False
    done: bool = False
    read_s: float = 0.0

    def hold(self, lease: Lease | None) -> None:
        self.lease = lease
        self.held = [self.part] if lease is None else merge(lease.ranges)

    def next_bounds(self) -> tuple[str, str, int] | None:
        """The next page's query bounds and size; None when the scan is done."""
        if self.done or self.read >= self.params.tasks_per_scan:
            return None
        if self.lease is not None and clock.now() >= self.lease.expires_at:
            self.ran_out, self.done = True, True
            return None
        low = self.part.low if self.last < 0 else self.last + 1
        if low >= self.part.high:
            return None
        n = min(self.page_size, self.params.tasks_per_scan - self.read)
        lo, hi = Partition(low, self.part.high).query_bounds()
        return lo, hi, n

    def took(self, page: Page, asked: int, stats: SweepStats) -> None:
        """Notes a page read (its keys outside the lease counted in `stats`)."""
        if page.not_leased:
            stats.add(not_leased=page.not_leased)
        if page.size > asked:
            raise ValueError(
                f"store {self.store.name!r} returned {page.size} reminders for a limit of {asked}"
            )
        self.read += page.size
        self.stale += page.stale
        if page.size < asked:
            self.done = True
        if page.last is not None:
            self.last = int(page.last, 16)

    def read_failed(self, e: Exception) -> None:
        """Notes a page read that timed out (the scan ends there); raises ReadFailed else."""
        if not is_timeout(e):
            raise ReadFailed(str(e)) from e
        self.timed_out = True

    @property
    def mine(self) -> list[Partition] | None:
        """The ranges a page's reminders are submitted from: None for all it reads."""
        return None if self.whole else self.held

    @property
    def whole(self) -> bool:
        """Whether the scan holds its whole partition (or takes no leases)."""
        held = self.held
        return len(held) == 1 and held[0].low == self.part.low and held[0].high == self.part.high

    def follow_ups(self) -> list[Partition]:
        """The follow-up partitions of what this scan did not read."""
        if self.ran_out:
            return []
        deeper = self.level < self.params.max_depth
        name = self.store.name
        if self.timed_out and self.last < 0:
            note_cut(name, self.part, self.level, deeper, "timed out")
            return self.part.split(self.params.secondary_scan_shards) if deeper else []
        if not self.timed_out and self.read < self.params.tasks_per_scan:
            return []
        why = "timed out" if self.timed_out else f"has over {self.read} reminders"
        note_cut(name, self.part, self.level, deeper, why)
        if not deeper:
            return []
        return self.part.split_after(
            self.last, self.read, self.params.tasks_per_scan, self.params.secondary_scan_shards
        )


def sweep_pages(
    store: ReminderStore,
    reader: ScanningStore,
    part: Partition,
    level: int,
    section: str,
    submitter: Submitter,
    workers: SyncWorkers,
    stats: SweepStats,
) -> tuple[list[Partition], int]:
    """Leases, reads and submits one partition page by page (blocking).

    Returns the follow-up partitions and how many stale reminders were read.
    A failed read raises ReadFailed, anything else what it raised (the
    lease is released either way).
    """
    opts = workers.opts
    params = opts.scan_params()
    scan = PagedScan(store, part, level, params, opts.submit_batch_size)
    lease = None
    if opts.use_leases:
        now = clock.now()
        lease = store.take_lease(section, [(part.low, part.high)], now + opts.lease_duration, now)
        if not lease.ranges:
            return [], 0  # another sweeper holds the whole range, and plans its follow-ups
    scan.hold(lease)
    held = scan.mine
    c = clock.current()
    try:
        with observed(store.name, part, level, params.tasks_per_scan) as read:
            try:
                while (bounds := scan.next_bounds()) is not None:
                    with workers.batches:
                        started = c.monotonic()
                        try:
                            page = read_page(store, reader, bounds, held, stats)
                        except Exception as e:
                            scan.read_failed(e)
                            break
                        finally:
                            scan.read_s += c.monotonic() - started
                        scan.took(page, bounds[2], stats)
                        if page.stale_mine:
                            submit_page(store, page.stale_mine, submitter, workers, stats)
            finally:
                read.read_s = scan.read_s
                read.counted(scan.read, scan.stale, scan.timed_out)
    finally:
        if lease is not None:
            release_quietly(store, section, lease)
    if scan.ran_out:
        lease_ran_out(store, section)
    return scan.follow_ups(), scan.stale


async def sweep_pages_async(
    store: ReminderStore,
    reader: ScanningStore,
    part: Partition,
    level: int,
    section: str,
    submitter: Submitter,
    limits: AsyncLimits,
    stats: SweepStats,
) -> tuple[list[Partition], int]:
    """Like `sweep_pages`, from async code (store calls run in the sweep's threads;
    a page read waits at most `scan_timeout_s`)."""
    opts = limits.opts
    params = opts.scan_params()
    scan = PagedScan(store, part, level, params, opts.submit_batch_size)
    run = limits.threads.run
    lease = None
    if opts.use_leases:
        now = clock.now()
        lease = await run(
            store.take_lease, section, [(part.low, part.high)], now + opts.lease_duration, now
        )
        if not lease.ranges:
            return [], 0
    scan.hold(lease)
    held = scan.mine
    c = clock.current()
    try:
        with observed(store.name, part, level, params.tasks_per_scan) as read:
            try:
                while (bounds := scan.next_bounds()) is not None:
                    async with limits.batches:
                        started = c.monotonic()
                        try:
                            page = await asyncio.wait_for(
                                run(read_page, store, reader, bounds, held, stats),
                                params.timeout_s,
                            )
                        except Exception as e:
                            scan.read_failed(e)
                            break
                        finally:
                            scan.read_s += c.monotonic() - started
                        scan.took(page, bounds[2], stats)
                        if page.stale_mine:
                            await submit_page_async(
                                store, page.stale_mine, submitter, limits, stats
                            )
            finally:
                read.read_s = scan.read_s
                read.counted(scan.read, scan.stale, scan.timed_out)
    finally:
        if lease is not None:
            await run(release_quietly, store, section, lease)
    if scan.ran_out:
        lease_ran_out(store, section)
    return scan.follow_ups(), scan.stale


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """One page read: its size, last ID, stale count, and its stale reminders to submit."""

    size: int
    last: str | None
    stale: int
    stale_mine: list[Reminder]
    not_leased: int


def read_page(
    store: ReminderStore,
    reader: ScanningStore,
    bounds: tuple[str, str, int],
    held: list[Partition] | None,
    stats: SweepStats,
) -> Page:
    """Reads one page; its stale reminders within `held` (None: all) are to be submitted."""
    lo, hi, n = bounds
    rows = reader.scan_reminders(lo, hi, n)
    now = clock.now()
    stale = [r for r in rows if r.fresh_until <= now]
    mine = stale if held is None else [r for r in stale if covers(held, int(r.id, 16))]
    return Page(len(rows), rows[-1].id if rows else None, len(stale), mine, len(stale) - len(mine))


# Stale reminders decoded at a time while submits are quick: their Submissions
# live until the chunk is submitted, not the whole page (fewer objects
# outlive the garbage collector's young generations; ~1 us a reminder).
DECODE_CHUNK = 64


def submit_page(
    store: ReminderStore,
    reminders: list[Reminder],
    submitter: Submitter,
    workers: SyncWorkers,
    stats: SweepStats,
) -> None:
    """Decodes and submits a page's stale reminders, then deletes the submitted ones.

    While the submits are quick, DECODE_CHUNK reminders at a time (after the
    first chunk, each in one go); after a slow one, the rest as one batch
    spread over the submit threads. One delete for the page, also when a
    submit failed unexpectedly. Empties `reminders` as it decodes them (so
    that they are freed as they go, not with the page).
    """
    outs: list[_outbox.Submitted] = []
    try:
        group = 1
        while reminders:
            chunk = _take(reminders, DECODE_CHUNK)
            if not submit_slices(
                store, decode(store, chunk, stats), submitter, workers, outs, group
            ):
                rest = decode(store, _take(reminders, len(reminders)), stats)
                submit_slices(store, rest, submitter, workers, outs)
                return
            group = workers.opts.submit_concurrency
    finally:
        finish(store, outs, stats)


async def submit_page_async(
    store: ReminderStore,
    reminders: list[Reminder],
    submitter: Submitter,
    limits: AsyncLimits,
    stats: SweepStats,
) -> None:
    """Like `submit_page`, from async code (decoding in the event loop; unreadable
    reminders parked in the sweep's threads)."""
    outs: list[_outbox.Submitted] = []
    settled: list[object] = []
    try:
        group = 1
        while reminders:
            chunk = _take(reminders, DECODE_CHUNK)
            subs = await _decoded(store, chunk, limits, stats)
            quick, settled = await submit_slices_async(store, subs, submitter, limits, outs, group)
            if not quick:
                raise_first(settled)
                subs = await _decoded(store, _take(reminders, len(reminders)), limits, stats)
                _, settled = await submit_slices_async(store, subs, submitter, limits, outs)
                break
            group = limits.opts.submit_concurrency
    finally:
        # Also when cancelled midway: what was submitted is deleted.
        await limits.threads.run(finish, store, outs, stats)
    raise_first(settled)


def _take(reminders: list[Reminder], n: int) -> list[Reminder]:
    """The first `n` of `reminders`, removed from it."""
    chunk = reminders[:n]
    del reminders[:n]
    return chunk


async def _decoded(
    store: ReminderStore, reminders: list[Reminder], limits: AsyncLimits, stats: SweepStats
) -> list[Submission]:
    subs, unreadable = decode_apart(reminders)
    if unreadable:
        await limits.threads.run(park_unreadable, store, unreadable, stats)
    return subs
