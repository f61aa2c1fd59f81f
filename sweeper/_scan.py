"""Scans: reading the reminder IDs of one partition and planning what is left.

A scan reads at most `tasks_per_scan` reminder IDs of a partition in
ascending order. If it read that many (there may be more), or the read
timed out, it plans follow-up scans for the rest: at most
`secondary_scan_shards` of them, one level deeper, and none once the level
reaches `max_depth` (the next sweep continues there). Of what it read it
keeps the stale reminders (`fresh_until <= now`); reminders still fresh
belong to the happy path, and the store leaves parked ones out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Iterator

from sweeper._partition import Partition
from sweeper._threads import SweepThreads
from tq import _metrics, _tracing, clock
from tq.txn import ReminderKey, ReminderStore

log = logging.getLogger("tq.sweeper")

TASKS_PER_SCAN = 2048
SECONDARY_SCAN_SHARDS = 16
MAX_DEPTH = 2

_TIMEOUT_NAMES = ("Timeout", "DeadlineExceeded", "QueryCanceled")


@dataclasses.dataclass(frozen=True, slots=True)
class ScanParams:
    """How a scan reads (defaults as in luci's tq sweeper).

    Args:
      tasks_per_scan: most reminder IDs one scan reads (default 2,048).
      secondary_scan_shards: most follow-up scans one scan plans (default 16).
      max_depth: the deepest level that still plans follow-ups (default 2:
        shards at level 0, their follow-ups at 1 and 2; a level-2 scan that
        finds more leaves them to the next sweep).
      timeout_s: how long an async scan waits for its read before treating
        it as timed out (default None: as long as the store takes).
    """

    tasks_per_scan: int = TASKS_PER_SCAN
    secondary_scan_shards: int = SECONDARY_SCAN_SHARDS
    max_depth: int = MAX_DEPTH
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.tasks_per_scan < 1 or self.secondary_scan_shards < 1 or self.max_depth < 0:
            raise ValueError(
                "tasks_per_scan and secondary_scan_shards must be >= 1, max_depth >= 0"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class ScanResult:
    """What one scan found.

    Attributes:
      partition, level: what was scanned.
      covered: the part of the partition the read covered (empty after a
        timeout; up to and including the last key read when truncated).
      stale: the stale reminders read, ascending.
      follow_ups: partitions left for scans at `level + 1`.
      truncated: the read hit `tasks_per_scan` or timed out.
    """

    partition: Partition
    level: int
    covered: Partition
    stale: list[ReminderKey]
    follow_ups: list[Partition]
    truncated: bool


def is_timeout(err: BaseException) -> bool:
    """Whether `err` (or what it wraps) says a read ran out of time.

    TimeoutError, and errors named like a timeout by the database clients
    (`DeadlineExceeded`, psycopg's `QueryCanceled` for a statement timeout,
    SQLAlchemy's wrappers of them through `.orig` or the cause chain).
    """
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, TimeoutError) or any(n in type(e).__name__ for n in _TIMEOUT_NAMES):
            return True
        orig = getattr(e, "orig", None)
        e = orig if isinstance(orig, BaseException) else (e.__cause__ or e.__context__)
    return False


def plan(
    part: Partition,
    level: int,
    keys: list[ReminderKey] | None,
    now: dt.datetime,
    params: ScanParams,
    store_name: str = "",
) -> ScanResult:
    """Turns what a read returned (None: it timed out) into a ScanResult."""
    deeper = level < params.max_depth
    if keys is None:
        retry = part.split(params.secondary_scan_shards) if deeper else []
        note_cut(store_name, part, level, deeper, "timed out")
        return ScanResult(part, level, Partition(part.low, part.low), [], retry, True)
    if len(keys) > params.tasks_per_scan:
        raise ValueError(
            f"store {store_name!r} returned {len(keys)} keys for a limit of {params.tasks_per_scan}"
        )
    stale = [k for k in keys if k.fresh_until <= now]
    truncated = len(keys) == params.tasks_per_scan
    if not truncated:
        return ScanResult(part, level, part, stale, [], False)
    last = int(keys[-1].id, 16)
    covered = Partition(part.low, min(last + 1, part.high))
    follow: list[Partition] = []
    if deeper:
        follow = part.split_after(
            last, len(keys), params.tasks_per_scan, params.secondary_scan_shards
        )
    else:
        note_cut(store_name, part, level, deeper, f"has over {len(keys)} reminders")
    return ScanResult(part, level, covered, stale, follow, True)


def note_cut(store: str, part: Partition, level: int, deeper: bool, why: str) -> None:
    if deeper:
        log.info("tq sweep: %s range %s (level %d) %s; splitting the rest", store, part, level, why)
        return
    _metrics.add("tq_sweep_depth_exhausted", store=store)
    log.warning(
        "tq sweep: %s range %s (level %d) %s at the deepest level; the next sweep continues there",
        store,
        part,
        level,
        why,
    )


class Read:
    """What a scan read, filled in by the scan: `set` (keys, None: timed out) or `counted`."""

    __slots__ = ("done", "read_s", "stale", "timed_out", "total")

    def __init__(self) -> None:
        self.done = False
        self.timed_out = False
        self.total = self.stale = 0
        self.read_s: float | None = None  # the reads' own time, if not the whole block's

    def set(self, keys: list[ReminderKey] | None) -> None:
        if keys is None:
            self.done, self.timed_out = True, True
            return
        now = clock.now()
        self.counted(len(keys), sum(1 for k in keys if k.fresh_until <= now))

    def counted(self, total: int, stale: int, timed_out: bool = False) -> None:
        """The scan read `total` reminders, `stale` of them stale (a timeout after some)."""
        self.done, self.total, self.stale, self.timed_out = True, total, stale, timed_out


@contextlib.contextmanager
def observed(store: str, part: Partition, level: int, limit: int) -> Iterator[Read]:
    """A `tq.sweep.scan` span; the scan's count, duration and keys read as metrics."""
    c = clock.current()
    started = c.monotonic()
    read = Read()
    attrs = {"tq.store": store, "tq.sweep.range": str(part), "tq.sweep.level": level}
    result = "error"
    try:
        with _tracing.span("tq.sweep.scan", attrs) as span:
            yield read
            if not read.done:
                return
            n, stale = read.total, read.stale
            if n or not read.timed_out:
                _metrics.add("tq_sweep_scanned", stale, store=store, staleness="stale")
                _metrics.add("tq_sweep_scanned", n - stale, store=store, staleness="fresh")
                _tracing.set_attributes(span, {"tq.sweep.keys": n, "tq.sweep.stale": stale})
            if read.timed_out:
                result = "timeout"
                return
            result = "truncated" if n >= limit else "ok"
    finally:
        _metrics.add("tq_sweep_scans", store=store, result=result)
        duration = c.monotonic() - started if read.read_s is None else read.read_s
        _metrics.record("tq_sweep_scan_duration", duration, store=store, result=result)


def scan(store: ReminderStore, part: Partition, level: int, params: ScanParams) -> ScanResult:
    """Scans one partition of `store` (blocking). Errors other than timeouts raise."""
    now = clock.now()
    low, high = part.query_bounds()
    with observed(store.name, part, level, params.tasks_per_scan) as read:
        try:
            keys: list[ReminderKey] | None = store.fetch_reminder_keys(
                low, high, params.tasks_per_scan
            )
        except Exception as e:
            if not is_timeout(e):
                raise
            keys = None
        read.set(keys)
    return plan(part, level, keys, now, params, store.name)


async def scan_async(
    store: ReminderStore,
    part: Partition,
    level: int,
    params: ScanParams,
    threads: SweepThreads | None = None,
) -> ScanResult:
    """Like `scan`, from async code; the read runs in a thread, bounded by timeout_s.

    The thread is one of `threads` if given, else of the event loop's default executor.
    """
    now = clock.now()
    low, high = part.query_bounds()
    fetch, limit = store.fetch_reminder_keys, params.tasks_per_scan
    with observed(store.name, part, level, params.tasks_per_scan) as read:
        try:
            keys: list[ReminderKey] | None = await asyncio.wait_for(
                threads.run(fetch, low, high, limit)
                if threads
                else asyncio.to_thread(fetch, low, high, limit),
                params.timeout_s,
            )
        except Exception as e:
            if not is_timeout(e):
                raise
            keys = None
        read.set(keys)
    return plan(part, level, keys, now, params, store.name)
