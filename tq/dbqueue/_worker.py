"""Workers: lease due tasks and push them, N at a time, with retries per queue."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import sqlalchemy as sa

from tq import _metrics, clock
from tq._dispatcher import Dispatcher
from tq.dbqueue import (
    _cron,
    _db,
    _gauges,
    _lease,
    _lease_pg,
    _listen,
    _reclaim,
    _recurring,
    _rounds,
    _wakeup,
)
from tq.dbqueue._delivery import Attempt, Pusher, Signer
from tq.dbqueue._lease import Leased, Result
from tq.dbqueue._rounds import Round
from tq.dbqueue._schema import State, to_us

log = logging.getLogger("tq.dbqueue")

DEFAULT_DISPATCH_DEADLINE = dt.timedelta(minutes=10)  # Cloud Tasks' default for HTTP tasks
RECLAIM_INTERVAL_S = 1.0  # how often a running worker looks for expired leases
MAX_ERROR_PAUSE_S = 5.0  # the longest pause after failed rounds (database down)
FLUSH_DELAY_S = 0.01  # how long outcomes wait for a round to record them with its lease


class Worker:
    """Delivers the database queue's tasks: leases due ones and pushes them.

    Args:
      engine: the database (SQLite file or PostgreSQL) with the schema.
      app: an ASGI app to push into in this process, without a socket
        (e.g. the app that mounts `tq.asgi.app(dispatcher)`); None pushes
        over HTTP to each task's URL.
      client: an httpx.AsyncClient to push with instead (caller closes it).
      base_url: prefix of relative URIs (App Engine requests); default
        "http://localhost".
      concurrency: the most pushes in flight in this worker; default 16.
      queues: the queue IDs this worker serves; default all.
      poll_interval: seconds between looks for due tasks when idle; default
        0.1. Tasks added in this process wake the worker at once, and so do
        tasks committed by other processes where the database can tell
        (`listen`).
      listen: wake up when other processes commit tasks (default True):
        PostgreSQL's LISTEN/NOTIFY with psycopg 3, inotify on a SQLite file
        on Linux (see `tq.dbqueue._listen`); polling stays as the fallback.
      default_dispatch_deadline: how long to wait for a response when the
        task sets no dispatch deadline; default 10 minutes (Cloud Tasks').
      lease_grace: a lease lasts the dispatch deadline plus this (default
        30 s); when it expires (a dead or stuck worker), the task is retried.
      batch_size: the most tasks leased per queue per round; default 32.
      signer: mints OIDC tokens, `signer(email, audience) -> str` (sync or
        async), for tasks whose request carries an `oidc_token`; without
        one such tasks are pushed without Authorization (logged once).
      worker_id: names the lease owner; default "<host>:<pid>:<random>".
      dispatcher: fire the cron schedules of its task classes
        (`TaskClass.schedule`, see `tq.dbqueue._cron`); default none.

    About once a second a worker also returns expired leases to their
    queues and fires due recurring tasks (`tq.dbqueue.Recurring`) and the
    dispatcher's cron schedules. Pull
    queues are never pushed.

    Use `run()` in the foreground, `start()` / `stop()` in the background
    (e.g. from an app's lifespan), or `run_once()` / `run_until_idle()` to
    step it in tests (within `async with worker:`).
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        app: Any = None,
        client: httpx.AsyncClient | None = None,
        base_url: str = "http://localhost",
        concurrency: int = 16,
        queues: Sequence[str] | None = None,
        poll_interval: float = 0.1,
        default_dispatch_deadline: dt.timedelta = DEFAULT_DISPATCH_DEADLINE,
        lease_grace: dt.timedelta = dt.timedelta(seconds=30),
        batch_size: int = 32,
        signer: Signer | None = None,
        worker_id: str | None = None,
        dispatcher: Dispatcher | None = None,
        listen: bool = True,
    ) -> None:
        _db.check_dialect(engine)
        if concurrency < 1 or batch_size < 1:
            raise ValueError("concurrency and batch_size must be at least 1")
        self.engine = engine
        self.concurrency = concurrency
        self.queues = list(queues) if queues is not None else None
        self.poll_interval = poll_interval
        self.default_deadline_s = default_dispatch_deadline.total_seconds()
        self.grace_s = lease_grace.total_seconds()
        self.batch_size = batch_size
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._pusher_args = {"app": app, "client": client, "base_url": base_url, "signer": signer}
        self._pusher: Pusher | None = None
        self._waiter: _wakeup.Waiter | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._results: list[Result] = []
        self._results_since = 0.0  # time.monotonic() when the oldest of them came
        self._flushing: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._next_reclaim = 0.0  # time.monotonic() of the next look for expired leases
        self._upkeeping: asyncio.Task[None] | None = None
        self.delivered = 0  # attempts made, for stats and tests
        self._unobserve: Callable[[], None] | None = None
        self.dispatcher = dispatcher
        self.listen = listen
        self._listener: _listen.Listener | None = None
        # PostgreSQL with psycopg 3: outcomes (and rounds, `_rounds`) in few round
        # trips on connections of the worker's own, from the event loop (`_lease_pg`).
        self._recorder = _lease_pg.Session(engine) if _lease_pg.usable(engine) else None
        self._rounds = _rounds.Rounds(
            engine, self.queues, owner=self.worker_id, poll_interval=poll_interval,
            batch_size=batch_size, default_deadline_s=self.default_deadline_s,
            grace_s=self.grace_s, upkeep=self._upkeep,
        )  # fmt: skip

    # Life cycle.

    async def __aenter__(self) -> Worker:
        if self._pusher is None:
            self._pusher = Pusher(**self._pusher_args)
            self._waiter = _wakeup.subscribe(_wakeup.key_of(self.engine))
            self._unobserve = _gauges.observe(self.engine)
            if self.listen:
                self._listener = _listen.Listener(self.engine, self._notify, self.queues)
                await self._listener.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _notify(self, queue: str) -> None:
        """The listener's wakeup: tasks of `queue` ("": of any queue) were committed."""
        if self._waiter is not None:
            self._rounds.notified.add(queue)
            self._waiter.event.set()

    async def aclose(self) -> None:
        """Stops the background loop if any, waits for pushes in flight, frees resources."""
        await self.stop()
        await self._drain()
        if self._pusher is not None:
            await self._pusher.aclose()
            self._pusher = None
        if self._listener is not None:
            await self._listener.aclose()
            self._listener = None
        await self._rounds.aclose()
        if self._recorder is not None:
            await self._recorder.aclose()
        if self._waiter is not None:
            _wakeup.unsubscribe(_wakeup.key_of(self.engine), self._waiter)
            self._waiter = None
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None

    async def start(self) -> None:
        """Runs the worker loop in a background asyncio task (see `stop`)."""
        await self.__aenter__()
        if self._runner is None or self._runner.done():
            self._stop.clear()
            self._runner = asyncio.create_task(self._loop(), name=f"tq.dbqueue {self.worker_id}")

    def request_stop(self) -> None:
        """Asks the loop to stop leasing (e.g. from a signal handler); returns at once."""
        self._stop.set()

    async def stop(self) -> None:
        """Asks the loop to stop leasing; waits for the background loop to end."""
        self._stop.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner

    async def run(self) -> None:
        """Leases and pushes tasks until `stop()` (or cancellation).

        Database errors do not end the loop: they are logged and the worker
        tries again after a pause (up to `MAX_ERROR_PAUSE_S`).
        """
        await self.__aenter__()
        self._stop.clear()
        await self._loop()

    async def _loop(self) -> None:
        errors = 0
        try:
            while not self._stop.is_set():
                try:
                    rnd = await self._round()
                except Exception:
                    errors += 1
                    pause = min(self.poll_interval * 2**errors, MAX_ERROR_PAUSE_S)
                    log.exception("tq.dbqueue: worker %s: round failed", self.worker_id)
                    await self._idle(None, pause)
                    continue
                errors = 0
                if rnd.full and not self._starved():
                    if rnd.leased:
                        await asyncio.sleep(0)  # their pushes start before the next look
                    continue
                await self._idle(rnd.next_eta_us, busy=rnd.full)
        except asyncio.CancelledError:
            # Abandoned pushes keep their leases until they expire, then are retried.
            for t in self._inflight:
                t.cancel()
            raise
        finally:
            await self._drain()

    # Stepping (tests, tools).

    async def run_once(self) -> int:
        """One round: reclaim expired leases, fire due recurring tasks, lease what is
        due, push it, and record the outcomes.

        Returns how many tasks were pushed.
        """
        await self.__aenter__()
        rnd = await self._round(reclaim=True)
        await self._drain()
        return len(rnd.leased)

    async def run_until_idle(self, max_rounds: int = 10_000) -> int:
        """Runs rounds until one finds nothing due; returns the pushes made."""
        total = 0
        for _ in range(max_rounds):
            n = await self.run_once()
            if n == 0:
                return total
            total += n
        raise RuntimeError(f"tq.dbqueue: still busy after {max_rounds} rounds")

    # The loop.

    def _entered(self) -> _wakeup.Waiter:
        if self._waiter is None:
            raise RuntimeError("tq.dbqueue.Worker: use it inside 'async with worker:'")
        return self._waiter

    def _free(self) -> int:
        return self.concurrency - len(self._inflight)

    def _starved(self) -> bool:
        """Too few free slots to be worth a lease round while pushes are in flight.

        With a backlog, leasing as each push ends would cost a transaction per
        task; waiting for a quarter of the slots batches the leases.
        """
        return bool(self._inflight) and self._free() < max(1, self.concurrency // 4)

    async def _idle(
        self, next_eta_us: int | None, pause_s: float | None = None, busy: bool = False
    ) -> None:
        """Waits for a reason to look again: a wakeup, free slots, the poll interval.

        `busy`: due tasks are waiting for free slots (wait for slots, not a poll).
        """
        waiter = self._entered()
        timeout = self.poll_interval if pause_s is None else pause_s
        if next_eta_us is not None:
            ahead_s = (next_eta_us - to_us(clock.now())) / 1e6
            timeout = min(timeout, max(ahead_s, 0.0))
        waits = [self._stop.wait()]
        if pause_s is None:  # after an error, only stop() cuts the pause short
            if not busy:
                waits.append(waiter.event.wait())
            if self._starved():
                waits.append(self._slot_freed.wait())
        pending = [asyncio.ensure_future(w) for w in waits]
        try:
            await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for p in pending:
                p.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _round(self, reclaim: bool = False) -> Round:
        # Cleared before looking, so a commit during the look wakes the next wait.
        event = self._entered().event
        rounds = self._rounds
        rounds.woke = rounds.woke or event.is_set()
        event.clear()
        self._slot_freed.clear()
        free = self._free()
        if free <= 0:
            return Round([], False, None)
        outcomes = self._take_outcomes() if rounds.carries_outcomes else []
        # The periodic upkeep runs in the background once this round's pushes
        # have started, adding nothing to their latency; when asked for
        # (run_once), it runs first, in the round.
        upkeep = not reclaim and time.monotonic() >= self._next_reclaim
        if reclaim or upkeep:
            self._next_reclaim = time.monotonic() + RECLAIM_INTERVAL_S
        try:
            rnd = await rounds.lease_round(free, reclaim, outcomes)
        except BaseException:
            if outcomes and not rounds.carried:
                self._give_back(outcomes)
            raise
        if outcomes and not rnd.carried:
            self._give_back(outcomes)
        self._flush_soon()  # outcomes no lease can record, or a failed flush's
        for t in rnd.leased:
            task = asyncio.create_task(self._deliver(t))
            self._inflight.add(task)
            task.add_done_callback(self._delivery_done)
        if upkeep and (self._upkeeping is None or self._upkeeping.done()):
            self._upkeeping = asyncio.create_task(self._background_upkeep())
        return rnd

    async def _background_upkeep(self) -> None:
        try:
            changed = await asyncio.to_thread(self._upkeep, to_us(clock.now()), True)
        except Exception:
            log.exception("tq.dbqueue: worker %s: upkeep failed", self.worker_id)
            return
        if changed and self._waiter is not None:
            self._waiter.event.set()  # tasks came due: look again at once

    def _upkeep(self, now_us: int, checkpoint: bool = False) -> int:
        """Returns expired leases, fires due recurring tasks; how many tasks it changed.

        `checkpoint`: also checkpoints a SQLite WAL (`_db.checkpoint`), here
        rather than in whichever commit crosses the autocheckpoint threshold.
        """
        n = _reclaim.reclaim_expired(self.engine, now_us=now_us)
        n += _recurring.fire_due(self.engine, now_us=now_us)
        if self.dispatcher is not None:
            n += _cron.fire_schedules(self.engine, self.dispatcher, now_us=now_us)
        if checkpoint:
            _db.checkpoint(self.engine)
        return n

    def _delivery_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not self._starved():
            self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("tq.dbqueue: delivery crashed", exc_info=task.exception())

    async def _deliver(self, t: Leased) -> None:
        pusher = self._pusher
        if pusher is None:
            raise RuntimeError("tq.dbqueue.Worker: closed while delivering")
        deadline_s = t.dispatch_deadline_s or self.default_deadline_s
        attempt = await pusher.push(t, deadline_s)
        self.delivered += 1
        if not self._results:
            self._results_since = time.monotonic()
        self._results.append(self._result_of(t, attempt))
        self._flush_soon()

    def _result_of(self, t: Leased, a: Attempt) -> Result:
        responded = a.status is not None and a.status < 500
        r = _lease.decide(t, a.ok, a.status, a.error, responded, a.retry_after_s)
        if a.body is not None:
            r = _with_body(r, a.body)
        _count(t, _RESULT_LABEL.get(r.state, "retry"))
        if r.state is State.FAILED:
            log.error(
                "tq.dbqueue: task %s/%s (class %s) failed for good after %d attempts: %s",
                t.queue, t.name, t.task_class, t.attempts, a.error,
            )  # fmt: skip
        elif r.state is State.PENDING:
            log.info(
                "tq.dbqueue: task %s/%s attempt %d failed (%s); retry in %.3f s",
                t.queue, t.name, t.attempts, a.error, ((r.eta_us or 0) - r.now_us) / 1e6,
            )  # fmt: skip
        return r

    def _take_outcomes(self) -> list[Result]:
        """The outcomes waiting that a lease can record (`_lease_pg.usual`), taken."""
        results = self._results
        if not results:
            return []
        taken = [r for r in results if _lease_pg.usual(r)]
        self._results = (
            [] if len(taken) == len(results) else [r for r in results if not _lease_pg.usual(r)]
        )
        return taken

    def _running(self) -> bool:
        return self._runner is not None and not self._stop.is_set()

    def _give_back(self, outcomes: list[Result]) -> None:
        """Outcomes a round did not record: a running worker's next round carries them
        (after a failed round, once the database answers again); else written now."""
        self._results[:0] = outcomes
        if not self._running():
            self._results_since = 0.0
            self._flush_soon()

    def _flush_soon(self) -> None:
        if self._results and (self._flushing is None or self._flushing.done()):
            self._flushing = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._results:
            # A running worker's next round records them with its lease (one
            # statement for both); what waited FLUSH_DELAY_S (an idle worker's) is
            # written here.
            left = self._results_since + FLUSH_DELAY_S - time.monotonic()
            if left > 0 and self._running():
                await asyncio.sleep(left)
                continue
            batch, self._results = self._results, []
            try:
                await self._record(batch)
            except Exception:
                if self._running() and self._rounds.carries_outcomes:
                    # The database is away: the rounds retry with a backoff, and the
                    # first that gets through records these with its lease.
                    log.warning(
                        "tq.dbqueue: could not record %d outcomes yet; they go with the "
                        "next lease", len(batch), exc_info=True,
                    )  # fmt: skip
                    self._results[:0] = batch
                    return
                # The leases expire and the tasks are retried: at least once holds.
                log.exception("tq.dbqueue: could not record %d outcomes", len(batch))

    async def _record(self, batch: list[Result]) -> None:
        session = self._recorder
        for attempt in (1, 2):
            if session is None or not session.usable:
                break  # it cannot connect at all: through the engine from now on
            try:
                await session.record(batch)
                return
            except Exception:
                # A connection the server cut (a restart, a terminated backend)
                # is remade on the next use: once more, as an outcome is written
                # only over the lease it names (a second write matches nothing).
                if attempt == 2 and session.usable:
                    raise
        await asyncio.to_thread(_lease.record, self.engine, batch)

    async def _drain(self) -> None:
        """Waits for pushes in flight and for their outcomes to be written."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
        if self._flushing is not None:
            await self._flushing
        if self._results:
            await self._flush()
        if self._upkeeping is not None:
            await self._upkeeping


_RESULT_LABEL = {State.DONE: "done", State.FAILED: "failed"}
# (queue, task class, result) -> the labels of tq_dbqueue_attempts, made once.
_labels: dict[tuple[str, str, str], _metrics.Labels] = {}


def _count(t: Leased, result: str) -> None:
    key = (t.queue, t.task_class, result)
    labels = _labels.get(key)
    if labels is None:
        if len(_labels) >= 4096:
            _labels.clear()
        labels = _labels[key] = _metrics.labels(
            queue=t.queue, task_class=t.task_class, result=result
        )
    _metrics.add_labelled("tq_dbqueue_attempts", labels)


async def run_workers(
    engine: sa.Engine,
    *,
    count: int = 1,
    stop: asyncio.Event | None = None,
    **worker_options: Any,
) -> None:
    """Runs `count` workers in this event loop until `stop` is set (or cancelled).

    `worker_options` go to each `Worker` (app, concurrency, queues, signer,
    ...). One worker with a higher `concurrency` is usually enough per
    process; run more processes for more throughput on PostgreSQL.
    """
    workers = [Worker(engine, **worker_options) for _ in range(count)]
    try:
        for w in workers:
            await w.start()
        if stop is None:
            await asyncio.Event().wait()  # until cancelled
        else:
            await stop.wait()
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                await w.aclose()


def _with_body(r: Result, body: bytes) -> Result:
    """The attempt's result with the response body kept: the result of a success,
    the failure of an error (at most MAX_RESULT_BYTES; a larger result is dropped)."""
    if len(body) > _lease.MAX_RESULT_BYTES:
        if r.state is State.DONE:
            log.warning(
                "tq.dbqueue: task %s/%s returned a result of over %d bytes; not kept",
                r.task.queue, r.task.name, _lease.MAX_RESULT_BYTES,
            )  # fmt: skip
            return r
        body = body[: _lease.MAX_RESULT_BYTES]
    return dataclasses.replace(r, data=body)
