"""Scheduler: an in-memory Cloud Tasks that runs tasks through tq's push path."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import heapq
import threading
from collections.abc import Callable, Mapping
from typing import Any

import grpc

import tq
from tq import _push
from tq._taskclass import FULL_QUEUE_RE
from tq.clock import Clock
from tqtesting._clock import FakeClock
from tqtesting._delivery import decode_payload, push_class_id, push_headers
from tqtesting._errors import RunLimitExceeded, SchedulerError, TaskFailed
from tqtesting._options import RetryConfig, RunConfig, RunOption, matches
from tqtesting._records import Attempt, TaskList, TaskRecord, TaskStatus

# Outcomes that a handler chose on purpose; failing for good after them is
# not a test error (anything else is: a bug in the handler or the setup).
_EXPECTED_FAILURES = frozenset({"retry", "transient"})


@dataclasses.dataclass(slots=True)
class _RunState:
    cfg: RunConfig
    in_flight: dict[asyncio.Future[_push.PushResult], TaskRecord]
    executions: int = 0
    stopping: bool = False
    error: SchedulerError | None = None
    failed: TaskRecord | None = None
    # One waiter on the run's wake event, kept until it fires (making and
    # cancelling one per wait cost as much as a task's push).
    waiter: asyncio.Future[Any] | None = None


class Scheduler:
    """An in-memory Cloud Tasks for unit tests; a `tq.Submitter`.

    Collects the tasks submitted to it and, when `run` (or `run_async`) is
    called, executes them through tq's real push path (`tq._push.handle_push`
    with the envelope and `X-CloudTasks-*` headers Cloud Tasks would send),
    so handlers, `tq.execution_info()` and the outcome-to-status mapping are
    the production ones. Tasks added by handlers go to this scheduler and run
    in the same run.

    Like Cloud Tasks, it refuses a second task with a name taken already
    (`tq.SubmitError` ALREADY_EXISTS; names stay taken after the task ends),
    honours ETAs, and retries non-2xx answers with exponential backoff up to
    `max_attempts`, after which the task is failed.

    Args:
      dispatcher: whose task classes run the pushes; default `tq.default`.
      clock: the time source for ETAs and backoff; default: the clock of the
        current context when the scheduler is made (`tq.clock.current()`).
      retry: the retry configuration of every queue (default `RetryConfig()`:
        5 attempts, 0.1 s to 1 h backoff).
      queues: retry configurations of particular queues, by short queue ID.
      auto_advance: when nothing is due, move the clock to the next ETA
        instead of waiting. Default: on with a `FakeClock`; needs one.
      raise_on_task_error: when a task fails for good with an unexpected error
        (an exception that is not a tq handler outcome, or a rejected push),
        the run raises `TaskFailed` chaining it. False only records it.
    """

    def __init__(
        self,
        dispatcher: tq.Dispatcher | None = None,
        *,
        clock: Clock | None = None,
        retry: RetryConfig | None = None,
        queues: Mapping[str, RetryConfig] | None = None,
        auto_advance: bool | None = None,
        raise_on_task_error: bool = True,
    ) -> None:
        self._dispatcher = dispatcher if dispatcher is not None else tq.default
        self._clock = clock if clock is not None else tq.clock.current()
        if auto_advance is None:
            auto_advance = isinstance(self._clock, FakeClock)
        if auto_advance and not isinstance(self._clock, FakeClock):
            raise ValueError("Scheduler(auto_advance=True) needs a tqtesting.FakeClock")
        self._auto_advance = auto_advance
        self._retry = retry or RetryConfig()
        self._queues = dict(queues or {})
        self.raise_on_task_error = raise_on_task_error
        self._lock = threading.Lock()
        self._records: list[TaskRecord] = []
        self._names: set[str] = set()
        self._due: list[tuple[dt.datetime, int, TaskRecord]] = []  # heap of pending tasks
        self._wakers: list[Callable[[], None]] = []

    @property
    def dispatcher(self) -> tq.Dispatcher:
        return self._dispatcher

    @property
    def clock(self) -> Clock:
        return self._clock

    # The Submitter protocol.

    def submit(self, submission: tq.Submission) -> None:
        """Takes one task. Raises `tq.SubmitError` ALREADY_EXISTS for a taken name."""
        payload = decode_payload(self._dispatcher, submission)
        pushed = (
            push_class_id(self._dispatcher, submission.task_class, submission.request) is not None
        )
        req = submission.request
        parent = str(req.parent)  # type: ignore[attr-defined]
        task = req.task  # type: ignore[attr-defined]
        if not FULL_QUEUE_RE.match(parent):
            raise tq.SubmitError(grpc.StatusCode.INVALID_ARGUMENT, f"bad queue name {parent!r}")
        name = str(task.name)
        if name and not name.startswith(parent + "/tasks/"):
            raise tq.SubmitError(
                grpc.StatusCode.INVALID_ARGUMENT, f"task {name!r} is not in queue {parent!r}"
            )
        with self._lock:
            seq = len(self._records) + 1
            if name in self._names:
                raise tq.SubmitError(grpc.StatusCode.ALREADY_EXISTS, f"task {name} exists already")
            if not name:
                auto = seq
                while f"{parent}/tasks/{auto}" in self._names:
                    auto += 1_000_000
                name = f"{parent}/tasks/{auto}"
            now = self._clock.now()
            eta = task.schedule_time.ToDatetime(dt.UTC) if task.HasField("schedule_time") else now
            rec = TaskRecord(
                name=name, class_id=submission.task_class, payload=payload, eta=eta,
                request=req, created=now, seq=seq, pushed=pushed,
                reminder_id=submission.reminder_id,
            )  # fmt: skip
            self._names.add(name)
            self._records.append(rec)
            heapq.heappush(self._due, (eta, seq, rec))
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    async def submit_async(self, submission: tq.Submission) -> None:
        """Like `submit` (it never blocks)."""
        self.submit(submission)

    # Looking at tasks.

    def tasks(self) -> TaskList:
        """A snapshot of every task submitted so far, in submission order."""
        with self._lock:
            return TaskList([r.snapshot() for r in self._records])

    # Running.

    def run(self, *options: RunOption) -> None:
        """Executes tasks until a stop option says so; see `run_async`.

        Runs its own event loop, so it refuses to be called from inside a
        running one (use `await run_async(...)` there).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise SchedulerError(
                "Scheduler.run() was called inside a running event loop; "
                "use `await scheduler.run_async(...)` in async code"
            )
        asyncio.run(self.run_async(*options))

    async def run_async(self, *options: RunOption) -> None:
        """Executes due tasks until a stop option says so.

        Options (see `tqtesting.stop_when_drained` and its neighbours):
        `stop_when_drained()` (the default without a stop option),
        `stop_after_task(...)`, `stop_before_task(...)`, `parallel(n)`,
        `max_executions(n)` (default 1,000), `wait_when_drained()`.

        Raises `TaskFailed` (see `raise_on_task_error`), `RunLimitExceeded`,
        or `SchedulerError` when nothing is left to run but the stop
        condition was not met (and `wait_when_drained()` was not given).
        Tasks running when the run stops or raises finish first.
        """
        state = _RunState(RunConfig.of(options), {})
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def waker() -> None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:  # a handler of this run added a task: no self-pipe write
                wake.set()
                return
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop closed; the run is over
                pass

        with self._lock:
            self._wakers.append(waker)
        unsubscribe = self._clock.on_change(waker) if isinstance(self._clock, FakeClock) else None
        try:
            # Tasks started by the loop copy this context: the tasks their
            # handlers add come back to this scheduler, on its clock.
            with tq.use_submitter(self), tq.clock.use_clock(self._clock):
                await self._loop(state, wake)
        finally:
            if state.waiter is not None:
                state.waiter.cancel()
            with self._lock:
                self._wakers.remove(waker)
            if unsubscribe is not None:
                unsubscribe()
            await self._abandon(state)
        if state.error is not None:
            cause = state.failed.error if state.failed is not None else None
            raise state.error from cause

    async def _loop(self, state: _RunState, wake: asyncio.Event) -> None:
        cfg = state.cfg
        while True:
            wake.clear()
            if not state.stopping:
                self._start_due(state)
            if not state.in_flight:
                if state.stopping:
                    return
                head = self._head()
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
                if any(matches(m, head) for m in cfg.stop_before):
                    return
                if self._auto_advance:
                    assert isinstance(self._clock, FakeClock)
                    if head.eta > self._clock.now():
                        self._clock.set(head.eta)
                    continue
                await self._wait(wake, state, head.eta)
                continue
            # With a free slot, a task falling due must wake us too.
            free = len(state.in_flight) < cfg.parallel
            head = self._head() if free and not state.stopping else None
            await self._wait(wake, state, head.eta if head is not None else None)

    async def _wait(self, wake: asyncio.Event, state: _RunState, eta: dt.datetime | None) -> None:
        """Waits for a running task to end, a new task, a clock change, or `eta`."""
        timeout = None
        if eta is not None and not isinstance(self._clock, FakeClock):
            timeout = max(0.0, (eta - self._clock.now()).total_seconds())
        if state.waiter is None or state.waiter.done():
            state.waiter = asyncio.ensure_future(wake.wait())
        waiter = state.waiter
        futures: set[asyncio.Future[Any]] = {waiter, *state.in_flight}
        done, _ = await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for fut in done:
            if fut is not waiter:
                self._ended(state, fut)

    def _head(self) -> TaskRecord | None:
        with self._lock:
            return self._due[0][2] if self._due else None

    def _start_due(self, state: _RunState) -> None:
        cfg = state.cfg
        while len(state.in_flight) < cfg.parallel:
            now = self._clock.now()
            with self._lock:
                if not self._due or self._due[0][0] > now:
                    return
                rec = self._due[0][2]
                if any(matches(m, rec) for m in cfg.stop_before):
                    state.stopping = True
                    return
                if state.executions >= cfg.max_executions:
                    state.stopping = True
                    state.error = RunLimitExceeded(
                        f"the run reached max_executions({cfg.max_executions}) with tasks still "
                        "due: a task chain that never ends? (raise the cap with "
                        "tqtesting.max_executions(n))"
                    )
                    return
                heapq.heappop(self._due)
                state.executions += 1
                if not rec.pushed:
                    rec.status = TaskStatus.FINISHED
                    rec.outcome = "not_pushed"
                else:
                    rec.status = TaskStatus.EXECUTING
                    headers, body = push_headers(rec)
                    class_id = push_class_id(self._dispatcher, rec.class_id, rec.request)
            if not rec.pushed:
                self._check_stop_after(state, rec)
                continue
            push = _push.handle_push(self._dispatcher, class_id, headers, body)
            fut = asyncio.ensure_future(push)
            state.in_flight[fut] = rec

    def _ended(self, state: _RunState, fut: asyncio.Future[_push.PushResult]) -> None:
        # handle_push turns every Exception into a status; a BaseException
        # escapes here with the task still in flight (`_abandon` requeues it).
        result = fut.result()
        rec = state.in_flight.pop(fut)
        now = self._clock.now()
        failed_for_good = False
        with self._lock:
            rec.attempts += 1
            rec.last_status = result.status
            rec.outcome = result.outcome
            rec.error = result.error
            rec.history.append(Attempt(now, result.status, result.outcome, result.error))
            if result.done:
                rec.status = TaskStatus.FAILED if result.outcome == "fatal" else TaskStatus.FINISHED
            else:
                retry = self._queues.get(rec.queue, self._retry)
                if rec.attempts >= retry.max_attempts:
                    rec.status = TaskStatus.FAILED
                    failed_for_good = True
                else:
                    rec.status = TaskStatus.PENDING
                    rec.eta = now + retry.backoff(rec.attempts)
                    heapq.heappush(self._due, (rec.eta, rec.seq, rec))
        if (
            failed_for_good
            and self.raise_on_task_error
            and result.outcome not in _EXPECTED_FAILURES
            and state.error is None
        ):
            state.failed = rec
            state.error = TaskFailed(rec.snapshot())
            state.stopping = True
        self._check_stop_after(state, rec)

    def _check_stop_after(self, state: _RunState, rec: TaskRecord) -> None:
        if any(matches(m, rec) for m in state.cfg.stop_after):
            state.stopping = True

    async def _abandon(self, state: _RunState) -> None:
        """Cancels tasks still running when the run raised or was cancelled."""
        if not state.in_flight:
            return
        futures = list(state.in_flight)
        for fut in futures:
            fut.cancel()
        await asyncio.gather(*futures, return_exceptions=True)
        for fut in futures:
            if fut.cancelled() or fut.exception() is not None:
                rec = state.in_flight.pop(fut)
                with self._lock:  # never ran to the end: due again
                    rec.status = TaskStatus.PENDING
                    heapq.heappush(self._due, (rec.eta, rec.seq, rec))
            else:
                self._ended(state, fut)

    def __repr__(self) -> str:
        with self._lock:
            n, pending = len(self._records), len(self._due)
        return f"<Scheduler tasks={n} pending={pending} clock={self._clock!r}>"
