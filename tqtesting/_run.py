"""One run of a Scheduler: the tasks it executes, serially or in parallel, and
when it stops."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import datetime as dt
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from tq import _push
from tqtesting._clock import FakeClock
from tqtesting._delivery import Delivery
from tqtesting._errors import RunLimitExceeded, SchedulerError, TaskFailed
from tqtesting._in_context import InContext
from tqtesting._options import RunConfig, loses_response, matches
from tqtesting._records import TaskRecord
from tqtesting._topics import deliver

if TYPE_CHECKING:
    from tqtesting._scheduler import Scheduler

# Outcomes that a handler chose on purpose; failing for good after them is
# not a test error (anything else is: a bug in the handler or the setup).
_EXPECTED_FAILURES = frozenset({"retry", "transient", "lost"})

# A serial run lets the event loop run other tasks (a producer of tasks, a
# test's own coroutines) at least once every this many executions.
_YIELD_EVERY = 16


class Run:
    """One call of `Scheduler.run_async`: takes due tasks from the scheduler,
    executes them through the push path, records their ends there, and stops
    as its options say."""

    def __init__(self, scheduler: Scheduler, cfg: RunConfig) -> None:
        self.scheduler = scheduler
        self.cfg = cfg
        # Tasks running in tasks of their own (parallel runs), and the ones that
        # ended and are still to be recorded, in the order they ended.
        self.in_flight: dict[asyncio.Future[_push.PushResult], tuple[TaskRecord, Delivery]] = {}
        self.ended: collections.deque[asyncio.Future[_push.PushResult]] = collections.deque()
        self.executions = 0
        self.stopping = False
        self.cancelled = False  # the caller of run_async was cancelled
        self.error: SchedulerError | None = None
        self.failed: TaskRecord | None = None

    async def join(self, worker: asyncio.Task[None]) -> None:
        """Awaits the run's loop; cancelling the caller cancels it (and says so)."""
        cancelled: asyncio.CancelledError | None = None
        while not worker.done():
            try:
                await asyncio.wait((worker,))
            except asyncio.CancelledError as e:
                cancelled = cancelled or e
                self.cancelled = True
                worker.cancel()
        if cancelled is not None:
            if not worker.cancelled():
                worker.exception()  # retrieved: the caller's cancellation wins
            raise cancelled
        worker.result()

    async def loop(self, wake: asyncio.Event) -> None:
        cfg = self.cfg
        scheduler = self.scheduler
        clock = scheduler.clock
        while True:
            wake.clear()
            if not self.stopping:
                if cfg.parallel == 1:
                    await self._run_due()
                else:
                    self._start_due(wake)
            if not self.in_flight:
                if self.stopping:
                    return
                head = scheduler._head()
                if head is None:
                    if cfg.stop_when_drained:
                        return
                    if not cfg.wait_when_drained:
                        raise SchedulerError(
                            "no task left to run and the run's stop condition was not met "
                            "(give stop_when_drained() or wait_when_drained() to allow it)"
                        )
                    await wake.wait()
                    continue
                if cfg.stop_before and any(matches(m, head) for m in cfg.stop_before):
                    return
                if scheduler._auto_advance:
                    assert isinstance(clock, FakeClock)
                    if head.eta > clock.now():
                        clock.set(head.eta)
                    continue
                await self._wait(wake, head.eta)
                continue
            # With a free slot, a task falling due must wake us too.
            free = len(self.in_flight) < cfg.parallel
            head = scheduler._head() if free and not self.stopping else None
            await self._wait(wake, head.eta if head is not None else None)

    async def _wait(self, wake: asyncio.Event, eta: dt.datetime | None) -> None:
        """Waits for a running task to end, a new task, a clock change, or `eta`."""
        if not self.ended:
            timer = None
            clock = self.scheduler.clock
            if eta is not None and not isinstance(clock, FakeClock):
                timeout = max(0.0, (eta - clock.now()).total_seconds())
                timer = asyncio.get_running_loop().call_later(timeout, wake.set)
            try:
                await wake.wait()
            finally:
                if timer is not None:
                    timer.cancel()
        while self.ended:
            fut = self.ended.popleft()
            if fut in self.in_flight:
                rec, push = self.in_flight.pop(fut)
                # handle_push turns every Exception into a status; a
                # BaseException escapes here (`abandon` requeues the task).
                try:
                    result = fut.result()
                except BaseException:
                    self.scheduler._requeue(rec, push)
                    raise
                self._ended(rec, push, result)

    def _take_due(self) -> tuple[TaskRecord, Delivery] | None:
        """Takes the next task to execute now, or None (nothing due, or the run stops).

        Tasks that are not for tq's push endpoint end here, recorded as such.
        """
        while True:
            taken = self.scheduler._take_due(self._stops_before)
            if taken is None:
                return None
            self.executions += 1
            rec, push = taken
            if push.class_id is not None:
                return taken
            self._check_stop_after(rec)
            if self.stopping:
                return None

    def _stops_before(self, rec: TaskRecord) -> bool:
        """Whether the run stops rather than execute `rec` (asked under the scheduler's lock)."""
        cfg = self.cfg
        if cfg.stop_before and any(matches(m, rec) for m in cfg.stop_before):
            self.stopping = True
            return True
        if self.executions >= cfg.max_executions:
            self.stopping = True
            self.error = RunLimitExceeded(
                f"the run reached max_executions({cfg.max_executions}) with tasks still "
                "due: a task chain that never ends? (raise the cap with "
                "tqtesting.max_executions(n))"
            )
            return True
        return False

    def _handle(self, rec: TaskRecord, push: Delivery) -> Coroutine[Any, Any, _push.PushResult]:
        if push.message is not None:
            return deliver(rec.attempts, push)
        headers = push.attempt_headers(rec.attempts, rec.eta, rec.last_status, rec.outcome)
        return _push.handle_push(self.scheduler.dispatcher, push.class_id, headers, push.body)

    async def _run_due(self) -> None:
        """Executes due tasks one after the other, each awaited in the run's own task."""
        while not self.stopping:
            taken = self._take_due()
            if taken is None:
                return
            rec, push = taken
            try:
                result = await InContext(self._handle(rec, push), contextvars.copy_context())
            except BaseException:  # cancelled, or an exception handle_push lets through
                self.scheduler._requeue(rec, push)
                raise
            self._ended(rec, push, result)
            if self.cancelled:
                # The handler swallowed the run's cancellation: it ran to its
                # end (recorded above), and the run is cancelled all the same.
                raise asyncio.CancelledError
            if self.executions % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def _start_due(self, wake: asyncio.Event) -> None:
        """Starts due tasks, each in a task of its own, while a slot is free."""

        def ended(fut: asyncio.Future[_push.PushResult]) -> None:
            self.ended.append(fut)
            wake.set()

        while len(self.in_flight) < self.cfg.parallel and not self.stopping:
            taken = self._take_due()
            if taken is None:
                return
            fut = asyncio.ensure_future(self._handle(*taken))
            self.in_flight[fut] = taken
            fut.add_done_callback(ended)

    def _ended(self, rec: TaskRecord, push: Delivery, result: _push.PushResult) -> None:
        if self.cfg.lose and loses_response(self.cfg, rec):
            result = _push.PushResult(504, "lost", result.class_id)
        failed_for_good = self.scheduler._record_attempt(rec, push, result)
        if (
            failed_for_good
            and self.scheduler.raise_on_task_error
            and result.outcome not in _EXPECTED_FAILURES
            and self.error is None
        ):
            self.failed = rec
            self.error = TaskFailed(rec.snapshot())
            self.stopping = True
        self._check_stop_after(rec)

    def _check_stop_after(self, rec: TaskRecord) -> None:
        stop_after = self.cfg.stop_after
        if stop_after and any(matches(m, rec) for m in stop_after):
            self.stopping = True

    async def abandon(self) -> None:
        """Cancels tasks still running when the run raised or was cancelled."""
        if not self.in_flight:
            return
        futures = list(self.in_flight)
        for fut in futures:
            fut.cancel()
        await asyncio.gather(*futures, return_exceptions=True)
        for fut in futures:
            rec, push = self.in_flight.pop(fut)
            if fut.cancelled() or fut.exception() is not None:
                self.scheduler._requeue(rec, push)  # never ran to the end: due again
            else:
                self._ended(rec, push, fut.result())
