"""Background submits: the outbox's happy path off the caller's critical path.

Inline (the default), a transaction helper submits the tasks of a committed
transaction and deletes their reminders before it returns: the caller waits
for the submit's round trip and for a second, short transaction. With a
`BackgroundSubmits` started in the process, the helper hands the committed
reminders to a bounded in-memory queue and returns at once. Threads of this
process submit them concurrently, and the DELETEs of their reminders are
coalesced across transactions into one statement per batch.

Nothing is ever lost. A reminder is queued only after its transaction has
committed, and deleted only once its task exists, so whatever the queue
holds when the process dies (kill -9, an out-of-memory kill, a platform
stopping the instance) is still in the table: the sweeper submits it once
it is stale (`fresh_until`, a minute after the add). A reminder that is
stale by the time a thread takes it is left to the sweeper too.

Back-pressure: when the queue holds `max_queued` transactions, a
transaction's reminders go the `when_full` way: "inline" (default) runs that
transaction's happy path in the caller, as without background submits;
"sweeper" leaves them to the sweeper (the caller never waits; the tasks
start after their reminders go stale and a sweep runs). Both are counted
(`tq_background_full`).

Shutdown: `stop()` (or leaving the `with` / `async with` block) stops
taking new work (later commits run inline), waits up to `stop_timeout_s`
for the queued submits and the pending DELETEs, and stops the threads;
what is left then stays for the sweeper. Start one in the lifespan of the
app (see docs/outbox-sql.md), or let `tq serve`, `tq dev` and `tq worker`
start it (`--happy-path background`). A process that exits without
stopping it drains for up to `stop_timeout_s` at interpreter exit.

When to choose it: where the process keeps running (and its CPU) between
requests: uvicorn on a VM or Kubernetes, Cloud Run with CPU always
allocated, workers. Not on platforms that throttle the CPU once a response
is sent (Cloud Run's default request-based billing, Cloud Functions, App
Engine standard's idle instances): there the queued submits would stall
until the next request, and the sweeper would run most of them a minute
late. Keep the inline happy path there.
"""

from __future__ import annotations

import atexit
import dataclasses
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from typing import Literal

from tq import _metrics, _outbox, clock
from tq._errors import ConfigError
from tq._submitter import Submission, Submitter
from tq.txn._store import PendingTask, ReminderStore

log = logging.getLogger("tq.outbox")

WhenFull = Literal["inline", "sweeper"]
_TAKE = 256  # the most transactions one thread takes from the queue at once
LINGER_S = 0.002  # how long a thread woken by a commit lets more commits join it
# How long a thread that found work lets commits gather before it looks again
# (commits keep coming: at least one per BUSY_LINGER_S).
BUSY_LINGER_S = 0.01


@dataclasses.dataclass(frozen=True, slots=True)
class BackgroundStats:
    """What a `BackgroundSubmits` has done since it started (see its attributes)."""

    queued: int  # committed transactions waiting for a thread now
    submitted: int  # tasks created (or existing already) from the queue
    deleted: int  # their reminders deleted
    failed: int  # submits that failed (kept for the sweeper, or parked)
    stale: int  # reminders stale when taken from the queue (left to the sweeper)
    inline: int  # transactions whose happy path ran inline, the queue being full
    left: int  # tasks left to the sweeper, the queue being full (when_full="sweeper")


class BackgroundSubmits:
    """Runs the outbox's happy path in background threads of this process.

    Args:
      max_queued: the most committed transactions waiting in the queue
        (default 10,000).
      concurrency: the most threads submitting at once (default 8); they
        start as the queue needs them.
      when_full: "inline" (default) or "sweeper": where a committed
        transaction's reminders go when the queue is full (see the module
        docstring). Never dropped.
      delete_batch: the most reminder IDs per DELETE (default 500).
      delete_delay_s: how long a submitted reminder's DELETE may wait for
        others to join it (default 0.05 s; far below the minute a reminder
        stays fresh).
      stop_timeout_s: how long `stop()` and interpreter exit wait for the
        queue to drain (default 10 s).

    Use `with BackgroundSubmits(): ...` or `async with` (e.g. in an ASGI
    lifespan), or `start()` and `stop()`. One may run per process at a time
    (ConfigError otherwise).
    """

    def __init__(
        self,
        *,
        max_queued: int = 10_000,
        concurrency: int = 8,
        when_full: WhenFull = "inline",
        delete_batch: int = 500,
        delete_delay_s: float = 0.05,
        stop_timeout_s: float = 10.0,
    ) -> None:
        if max_queued < 1 or concurrency < 1 or delete_batch < 1:
            raise ConfigError("max_queued, concurrency and delete_batch must be at least 1")
        if when_full not in ("inline", "sweeper"):
            raise ConfigError(f"when_full must be 'inline' or 'sweeper', not {when_full!r}")
        if delete_delay_s < 0 or stop_timeout_s < 0:
            raise ConfigError("delete_delay_s and stop_timeout_s must not be negative")
        self.max_queued = max_queued
        self.concurrency = concurrency
        self.when_full = when_full
        self.delete_batch = delete_batch
        self.delete_delay_s = delete_delay_s
        self.stop_timeout_s = stop_timeout_s
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # _unfinished reached 0
        self._hurry = threading.Event()  # set while someone drains: no lingering
        self._reset()

    def _reset(self) -> None:
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        # The caller's side takes no lock (a lock it waited for would hand the
        # GIL to a background thread for up to a switch interval): it counts
        # its offers on an itertools.count, whose next() is atomic.
        self._offers = itertools.count()
        self._drain_reads = 0  # next() calls on _offers made by drain(), not offers
        self._taken = 0  # transactions taken from _queue by the threads
        self._unfinished = 0  # tasks taken and not yet settled (deleted, failed, left)
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting on the queue
        self._deletes = _Deletes(self)
        self._running = False
        self._counts = dict.fromkeys(
            ("submitted", "deleted", "failed", "stale", "inline", "left"), 0
        )

    # Life cycle.

    def start(self) -> BackgroundSubmits:
        """Takes the happy paths of this process from now on; returns self."""
        global _active
        with _active_lock:
            if _active is not None:
                raise ConfigError(
                    "a tq.BackgroundSubmits is running in this process already; stop it first"
                )
            _active = self
            with self._lock:
                self._running = True
            self._deletes.start()
            _outbox.offload = self._offer
        atexit.register(self._at_exit)
        return self

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stops taking work, drains the queue; True if everything was settled in time.

        Later commits run their happy path inline. What is not settled
        within `timeout_s` (default `stop_timeout_s`) stays for the sweeper
        (the threads go on with it until the process exits).
        """
        global _active
        with _active_lock:
            if _active is self:
                _active = None
                _outbox.offload = None
        with self._lock:
            was_running, self._running = self._running, False
        atexit.unregister(self._at_exit)
        if not was_running:
            return True
        done = self.drain(self.stop_timeout_s if timeout_s is None else timeout_s)
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        self._deletes.stop()
        if not done:
            log.warning(
                "tq: background submits stopped with %d tasks unsettled; the sweeper will "
                "submit those still in the outbox",
                self._unfinished,
            )
        return done

    async def stop_async(self, timeout_s: float | None = None) -> bool:
        """`stop()` from async code (waits in a thread)."""
        import asyncio

        return await asyncio.to_thread(self.stop, timeout_s)

    def drain(self, timeout_s: float | None = None) -> bool:
        """Waits until every task taken in so far is settled; False on timeout.

        Settled: submitted and its reminder deleted, failed (kept for the
        sweeper or parked), or left to the sweeper. Pending DELETEs go out
        at once while someone drains.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._deletes.hurry(True)
        try:
            with self._settled:
                offered = next(self._offers) - self._drain_reads
                self._drain_reads += 1
                while self._taken < offered or self._unfinished:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._settled.wait(left)
            return True
        finally:
            self._deletes.hurry(False)

    async def drain_async(self, timeout_s: float | None = None) -> bool:
        import asyncio

        return await asyncio.to_thread(self.drain, timeout_s)

    def __enter__(self) -> BackgroundSubmits:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> BackgroundSubmits:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_async()

    @property
    def stats(self) -> BackgroundStats:
        with self._lock:
            return BackgroundStats(queued=self._queue.qsize(), **self._counts)

    def _at_exit(self) -> None:
        self.stop()

    # The caller's side: what a commit pays.

    def _offer(self, store: ReminderStore, pending: Sequence[PendingTask]) -> bool:
        """Queues a committed transaction's reminders; False: run them inline.

        What a commit pays: no lock taken (see `_reset`), one queue put.
        """
        if not self._running:
            return False
        if self._queue.qsize() >= self.max_queued:
            return self._full(pending)
        next(self._offers)
        self._queue.put(_Item(store, pending, clock.current()))
        if not self._idle and len(self._threads) < self.concurrency:
            self._spawn()
        return True

    def _full(self, pending: Sequence[PendingTask]) -> bool:
        inline = self.when_full == "inline"
        with self._lock:
            if inline:
                self._counts["inline"] += 1
            else:
                self._counts["left"] += len(pending)
        _metrics.add("tq_background_full", fallback=self.when_full)
        return not inline

    def _spawn(self) -> None:
        with self._lock:
            if self._idle or len(self._threads) >= self.concurrency:
                return  # another caller started one meanwhile
            t = threading.Thread(target=self._work, name="tq-background-submit", daemon=True)
            self._threads.append(t)
            self._idle += 1  # counted idle from now: one start per need
        t.start()

    # The threads' side.

    def _work(self) -> None:
        took_idle = True  # _spawn counted this thread idle before starting it
        busy = False  # it found work last time: look again after a linger
        while True:
            if not took_idle:
                with self._lock:
                    self._idle += 1
            took_idle = False
            items: list[_Item] = []
            if not busy:
                item = self._queue.get()  # idle: the next commit wakes this thread
                if item is None:
                    with self._lock:
                        self._idle -= 1
                        self._threads.remove(threading.current_thread())
                    return
                items.append(item)
            if self._queue.qsize() < _TAKE and not self._hurry.is_set():
                # Let more commits join: every wakeup of this thread costs its
                # own CPU and the caller's (the GIL handed over and back), more
                # than a submit. While busy, it looks again after a linger
                # instead of being woken by the next commit. Not while someone
                # drains.
                self._hurry.wait(BUSY_LINGER_S if busy else LINGER_S)
            # Take a fair share of what waits, so that slow submits spread
            # over the threads while a fast submitter keeps up alone.
            share = min(_TAKE, self._queue.qsize() // max(1, len(self._threads)))
            while len(items) <= share:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:  # a stop for some thread: pass it on
                    self._queue.put(None)
                    break
                items.append(more)
            busy = bool(items)
            if not busy:  # nothing came: still idle, and blocks for the next commit
                took_idle = True
                continue
            n = sum(len(item.pending) for item in items)
            with self._lock:
                self._idle -= 1
                self._taken += len(items)
                self._unfinished += n
            try:
                self._process(items)
            except Exception:  # never kill the thread; the sweeper has the reminders
                log.exception("tq: background submits failed; the sweeper will submit them")
                self._settle(n)

    def _process(self, items: list[_Item]) -> None:
        # The batch's reminders by store and clock (one of each, as a rule):
        # counted and judged fresh once per group, not once per transaction.
        sources: dict[tuple[str, int], tuple[ReminderStore, clock.Clock, list[PendingTask]]] = {}
        for item in items:
            key = (item.store.name, id(item.clock))
            source = sources.get(key)
            if source is None:
                sources[key] = (item.store, item.clock, list(item.pending))
            else:
                source[2].extend(item.pending)
        groups: list[_Group] = []
        stale = 0
        for store, clk, pending in sources.values():
            fresh = _outbox.count_created(pending, clk.now())
            stale += len(pending) - len(fresh)
            if fresh:
                groups.extend(_by_submitter(store, clk, fresh))
        if stale:
            self._count("stale", stale)
            self._settle(stale)
        for g in groups:
            with clock.use_clock(g.clock):
                out = _outbox.submit_reminders(g.store, g.subs, g.submitter, "happy")
            failed = len(g.subs) - len(out.done)
            with self._lock:
                self._counts["submitted"] += len(out.done)
                self._counts["failed"] += failed
            if failed:
                self._settle(failed)
            if out.done:
                self._deletes.add(g.store, out.done)

    def _count(self, what: str, n: int) -> None:
        with self._lock:
            self._counts[what] += n

    def _settle(self, n: int) -> None:
        with self._lock:
            self._unfinished -= n
            if self._unfinished <= 0:
                self._unfinished = 0
                self._settled.notify_all()

    def _after_fork(self) -> None:
        # The parent's threads do not exist in the child, and what its queue
        # holds is the parent's to submit: the child starts afresh.
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._hurry = threading.Event()
        running = self._running
        self._reset()
        self._running = running
        if running:
            self._deletes.start()


@dataclasses.dataclass(slots=True)
class _Item:
    store: ReminderStore
    pending: Sequence[PendingTask]
    clock: clock.Clock


@dataclasses.dataclass(slots=True)
class _Group:
    store: ReminderStore
    submitter: Submitter
    clock: clock.Clock
    subs: list[Submission] = dataclasses.field(default_factory=list)


def _by_submitter(store: ReminderStore, clk: clock.Clock, fresh: list[PendingTask]) -> list[_Group]:
    """The submissions of `fresh` grouped by their submitter (one, as a rule)."""
    first = fresh[0].submitter
    if all(p.submitter is first for p in fresh):
        return [_Group(store, first, clk, [p.submission for p in fresh])]
    groups: dict[int, _Group] = {}
    for p in fresh:
        g = groups.get(id(p.submitter))
        if g is None:
            g = groups[id(p.submitter)] = _Group(store, p.submitter, clk)
        g.subs.append(p.submission)
    return list(groups.values())


class _Deletes:
    """The reminders to delete, by store, coalesced across transactions by one thread."""

    def __init__(self, owner: BackgroundSubmits) -> None:
        self.owner = owner
        self.cond = threading.Condition()
        self.by_store: dict[str, tuple[ReminderStore, list[str]]] = {}
        self.count = 0
        self.hurried = 0
        self.stopping = False
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="tq-background-delete", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(self.owner.stop_timeout_s)

    def hurry(self, on: bool) -> None:
        with self.cond:
            self.hurried += 1 if on else -1
            if self.hurried:
                self.owner._hurry.set()
            else:
                self.owner._hurry.clear()
            self.cond.notify()

    def add(self, store: ReminderStore, ids: list[str]) -> None:
        with self.cond:
            entry = self.by_store.get(store.name)
            if entry is None:
                self.by_store[store.name] = (store, list(ids))
            else:
                entry[1].extend(ids)
            self.count += len(ids)
            if self.count >= self.owner.delete_batch or self.hurried:
                self.cond.notify()

    def _run(self) -> None:
        owner = self.owner
        while True:
            with self.cond:
                while not self.count and not self.stopping:
                    self.cond.wait()
                if not self.count:  # stopping, and nothing left
                    return
                # Wait a little for others to join the batch, unless it is full.
                until = time.monotonic() + owner.delete_delay_s
                while self.count < owner.delete_batch and not self.hurried and not self.stopping:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self.cond.wait(left)
                batch, self.by_store, self.count = self.by_store, {}, 0
            for store, ids in batch.values():
                for i in range(0, len(ids), owner.delete_batch):
                    chunk = ids[i : i + owner.delete_batch]
                    if _outbox.delete_quietly(store, chunk):
                        owner._count("deleted", len(chunk))
                    owner._settle(len(chunk))


_active: BackgroundSubmits | None = None
_active_lock = threading.Lock()


def background_submits() -> BackgroundSubmits | None:
    """The `BackgroundSubmits` running in this process, if any."""
    return _active


def _after_fork_in_child() -> None:
    if _active is not None:
        _active._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
