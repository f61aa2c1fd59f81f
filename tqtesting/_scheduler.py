"""Scheduler: an in-memory Cloud Tasks that runs tasks through tq's push path."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import datetime as dt
import heapq
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

import tq
from tq import _push
from tq._handles import check_task_name
from tq._task import PRIORITY_HEADER
from tq._taskclass import FULL_QUEUE_RE
from tq._topic import CLASS_ATTRIBUTE, is_publish, message_name
from tq.clock import Clock
from tq.pubsub._message import Received
from tqtesting._clock import FakeClock
from tqtesting._delivery import Delivery, decode_payload, delivery
from tqtesting._errors import RunLimitExceeded, SchedulerError, TaskFailed
from tqtesting._in_context import InContext
from tqtesting._options import RetryConfig, RunConfig, RunOption, loses_response, matches
from tqtesting._records import Attempt, TaskList, TaskRecord, TaskStatus
from tqtesting._topics import Topics, deliver

# Outcomes that a handler chose on purpose; failing for good after them is
# not a test error (anything else is: a bug in the handler or the setup).
_EXPECTED_FAILURES = frozenset({"retry", "transient", "lost"})


# A heap entry: when a task is due, its submission number (the tie-break
# that keeps tasks due together in submission order), the task, its pushes.
_Due = tuple[dt.datetime, int, TaskRecord, Delivery]

# A serial run lets the event loop run other tasks (a producer of tasks, a
# test's own coroutines) at least once every this many executions.
_YIELD_EVERY = 16


@dataclasses.dataclass(slots=True)
class _RunState:
    cfg: RunConfig
    # Tasks running in tasks of their own (parallel runs), and the ones that
    # ended and are still to be recorded, in the order they ended.
    in_flight: dict[asyncio.Future[_push.PushResult], tuple[TaskRecord, Delivery]]
    ended: collections.deque[asyncio.Future[_push.PushResult]]
    executions: int = 0
    stopping: bool = False
    cancelled: bool = False  # the caller of run_async was cancelled
    error: SchedulerError | None = None
    failed: TaskRecord | None = None


class Scheduler:
    """An in-memory Cloud Tasks for unit tests; a `tq.Submitter`.

    Collects the tasks submitted to it and, when `run` (or `run_async`) is
    called, executes them through tq's real push path (`tq._push.handle_push`
    with the envelope and `X-CloudTasks-*` headers Cloud Tasks would send),
    so handlers, `tq.execution_info()` and the outcome-to-status mapping are
    the production ones. Tasks added by handlers go to this scheduler and run
    in the same run.

    It also stands for Pub/Sub (`takes_topics`): a message published to a
    topic becomes one task per subscription of the topic (`subscriptions`,
    `subscribe`; a topic with none gets one named like it, delivering to
    this scheduler's dispatcher), each run through the push path of
    `tq.pubsub` with `execution_info().delivery_attempt` set, and retried
    while nacked, as with Cloud Tasks below.

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
      subscriptions: the subscription IDs of topics, by topic ID (or full
        name), delivering to `dispatcher`; `subscribe()` adds more, also
        with dispatchers of their own (several consumers of one topic).
      priority_step: the head start each point of `tq.Task.priority` gives
        (default 1 s): due tasks run highest priority first, a task of
        priority p ranking as if due p x step earlier, as on the database
        queue (`DbQueueSubmitter(priority_step=...)`).
    """

    takes_topics = True

    def __init__(
        self,
        dispatcher: tq.Dispatcher | None = None,
        *,
        clock: Clock | None = None,
        retry: RetryConfig | None = None,
        queues: Mapping[str, RetryConfig] | None = None,
        auto_advance: bool | None = None,
        raise_on_task_error: bool = True,
        subscriptions: Mapping[str, Sequence[str]] | None = None,
        priority_step: dt.timedelta = dt.timedelta(seconds=1),
    ) -> None:
        self._dispatcher = dispatcher if dispatcher is not None else tq.default
        self._topics = Topics(self._dispatcher, subscriptions)
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
        self._by_name: dict[str, TaskRecord] = {}  # tasks (not messages) by full name
        self._due: list[_Due] = []  # heap of pending tasks
        self._prioritized = 0  # entries of _due with a priority (0: take the heap's head)
        self._priority_step = priority_step
        self._queue_names: set[str] = set()  # queue names found valid
        self._last_attempt: Attempt | None = None
        self._wakers: list[Callable[[], None]] = []

    @property
    def dispatcher(self) -> tq.Dispatcher:
        return self._dispatcher

    @property
    def clock(self) -> Clock:
        return self._clock

    # The Submitter protocol.

    def subscribe(
        self, topic: str, subscription: str, dispatcher: tq.Dispatcher | None = None
    ) -> None:
        """Adds a subscription to a topic (IDs or full names): every message published
        from now on is also delivered there, to `dispatcher` (default: the scheduler's)."""
        self._topics.subscribe(topic, subscription, dispatcher)

    def submit(self, submission: tq.Submission) -> str | None:
        """Takes one task; returns its full name (generated if the request had none).

        A message to publish goes to its topic's subscriptions; its name is
        `<topic>/messages/<message ID>`, the ID the same on every subscription.
        Raises `tq.SubmitError` ALREADY_EXISTS for a taken name.
        """
        payload = decode_payload(self._dispatcher, submission)
        req = submission.request
        if is_publish(req):
            return self._publish(submission, payload)
        parent = str(req.parent)  # type: ignore[attr-defined]
        task = req.task  # type: ignore[attr-defined]
        if parent not in self._queue_names:
            if not FULL_QUEUE_RE.match(parent):
                raise tq.SubmitError(grpc.StatusCode.INVALID_ARGUMENT, f"bad queue name {parent!r}")
            self._queue_names.add(parent)
        name = str(task.name)
        if name and not name.startswith(parent + "/tasks/"):
            raise tq.SubmitError(
                grpc.StatusCode.INVALID_ARGUMENT, f"task {name!r} is not in queue {parent!r}"
            )
        scheduled = (
            task.schedule_time.ToDatetime(dt.UTC) if task.HasField("schedule_time") else None
        )
        with self._lock:
            seq = len(self._records) + 1
            if name in self._by_name:
                raise tq.SubmitError(grpc.StatusCode.ALREADY_EXISTS, f"task {name} exists already")
            if not name:
                auto = seq
                while f"{parent}/tasks/{auto}" in self._by_name:
                    auto += 1_000_000
                name = f"{parent}/tasks/{auto}"
            now = self._clock.now()
            eta = scheduled if scheduled is not None else now
            push = delivery(self._dispatcher, submission.task_class, req, name)
            rec = TaskRecord(
                name=name, class_id=submission.task_class, payload=payload, eta=eta,
                request=req, created=now, seq=seq, pushed=push.class_id is not None,
                reminder_id=submission.reminder_id, priority=_priority_of(task),
            )  # fmt: skip
            self._by_name[name] = rec
            self._records.append(rec)
            self._push_due((eta, seq, rec, push))
            wakers = list(self._wakers) if self._wakers else None
        if wakers is not None:
            for wake in wakers:
                wake()
        return name

    async def submit_async(self, submission: tq.Submission) -> str | None:
        """Like `submit` (it never blocks)."""
        return self.submit(submission)

    # Deleting tasks (tq.TaskDeleter).

    def delete_task(self, name: str) -> bool:
        """Deletes a waiting or running task, as Cloud Tasks' DeleteTask does; False if none.

        A waiting task (before its first run or a retry) is recorded
        DELETED and never runs; a running one finishes its attempt (which
        is recorded) and is never retried. The name stays taken. False for
        a name never submitted, or a task finished, failed or deleted
        already. Raises `tq.ValidationError` for a malformed name.
        """
        check_task_name(name)
        with self._lock:
            rec = self._by_name.get(name)
            if rec is None or rec.status not in (TaskStatus.PENDING, TaskStatus.EXECUTING):
                return False
            if rec.status is TaskStatus.PENDING:
                due = self._due
                i = next(i for i, entry in enumerate(due) if entry[2] is rec)
                due[i] = due[-1]
                due.pop()
                heapq.heapify(due)
                if rec.priority:
                    self._prioritized -= 1
            rec.status = TaskStatus.DELETED
            wakers = list(self._wakers)
        for wake in wakers:  # what a run waits for may be gone
            wake()
        return True

    async def delete_task_async(self, name: str) -> bool:
        """Like `delete_task` (it never blocks)."""
        return self.delete_task(name)

    def _publish(self, submission: tq.Submission, payload: Message | None) -> str:
        """Fans a message out: one task record per subscription of its topic; its name."""
        req: Any = submission.request
        subs = self._topics.of(req.topic)
        attributes = dict(req.attributes)
        class_id = attributes.get(CLASS_ATTRIBUTE) or submission.task_class
        with self._lock:
            now = self._clock.now()
            # One ID for the message on every subscription (as on Pub/Sub).
            message_id = str(len(self._records) + 1)
            for sub, disp in subs:
                seq = len(self._records) + 1
                msg = Received(
                    data=req.data, attributes=attributes, message_id=message_id,
                    publish_time=now, subscription=sub, ordering_key=req.ordering_key,
                )  # fmt: skip
                push = Delivery(class_id, {}, req.data, "", msg, disp)
                rec = TaskRecord(
                    name=f"{sub}/messages/{message_id}", class_id=submission.task_class,
                    payload=_copy(payload), eta=now, request=req, created=now, seq=seq,
                    reminder_id=submission.reminder_id,
                )  # fmt: skip
                self._records.append(rec)
                heapq.heappush(self._due, (now, seq, rec, push))
            wakers = list(self._wakers) if self._wakers else None
        if wakers is not None:
            for wake in wakers:
                wake()
        return message_name(req.topic, message_id)

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
        `max_executions(n)` (default 1,000), `wait_when_drained()`,
        `lose_response(...)`.

        Every execution runs in a copy of the run's context, as a push
        handled by the ASGI endpoint runs in a task of its own: the context
        variables a handler sets stay its own.

        Raises `TaskFailed` (see `raise_on_task_error`), `RunLimitExceeded`,
        or `SchedulerError` when nothing is left to run but the stop
        condition was not met (and `wait_when_drained()` was not given).
        Tasks running when the run stops or raises finish first.
        """
        state = _RunState(RunConfig.of(options), {}, collections.deque())
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
            # Executions copy this context: the tasks their handlers add come
            # back to this scheduler, on its clock. The loop runs in a task of
            # its own: serial executions run in it, and what a handler does to
            # its task (a timeout, a task group) stays off the caller's task.
            with tq.use_submitter(self), tq.clock.use_clock(self._clock):
                worker = asyncio.ensure_future(self._loop(state, wake))
            await self._join(worker, state)
        finally:
            with self._lock:
                self._wakers.remove(waker)
            if unsubscribe is not None:
                unsubscribe()
            await self._abandon(state)
        if state.error is not None:
            cause = state.failed.error if state.failed is not None else None
            raise state.error from cause

    async def _join(self, worker: asyncio.Task[None], state: _RunState) -> None:
        """Awaits the run's loop; cancelling the caller cancels it (and says so)."""
        cancelled: asyncio.CancelledError | None = None
        while not worker.done():
            try:
                await asyncio.wait((worker,))
            except asyncio.CancelledError as e:
                cancelled = cancelled or e
                state.cancelled = True
                worker.cancel()
        if cancelled is not None:
            if not worker.cancelled():
                worker.exception()  # retrieved: the caller's cancellation wins
            raise cancelled
        worker.result()

    async def _loop(self, state: _RunState, wake: asyncio.Event) -> None:
        cfg = state.cfg
        while True:
            wake.clear()
            if not state.stopping:
                if cfg.parallel == 1:
                    await self._run_due(state)
                else:
                    self._start_due(state, wake)
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
                if cfg.stop_before and any(matches(m, head) for m in cfg.stop_before):
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
        if not state.ended:
            timer = None
            if eta is not None and not isinstance(self._clock, FakeClock):
                timeout = max(0.0, (eta - self._clock.now()).total_seconds())
                timer = asyncio.get_running_loop().call_later(timeout, wake.set)
            try:
                await wake.wait()
            finally:
                if timer is not None:
                    timer.cancel()
        while state.ended:
            fut = state.ended.popleft()
            if fut in state.in_flight:
                rec, push = state.in_flight.pop(fut)
                # handle_push turns every Exception into a status; a
                # BaseException escapes here (`_abandon` requeues the task).
                try:
                    result = fut.result()
                except BaseException:
                    self._requeue(rec, push)
                    raise
                self._ended(state, rec, push, result)

    def _head(self) -> TaskRecord | None:
        with self._lock:
            return self._due[0][2] if self._due else None

    def _take_due(self, state: _RunState) -> tuple[TaskRecord, Delivery] | None:
        """Takes the next task to execute now, or None (nothing due, or the run stops).

        Tasks that are not for tq's push endpoint end here, recorded as such.
        """
        cfg = state.cfg
        while True:
            now = self._clock.now()
            with self._lock:
                i = self._next_due(now)
                if i is None:
                    return None
                rec = self._due[i][2]
                if cfg.stop_before and any(matches(m, rec) for m in cfg.stop_before):
                    state.stopping = True
                    return None
                if state.executions >= cfg.max_executions:
                    state.stopping = True
                    state.error = RunLimitExceeded(
                        f"the run reached max_executions({cfg.max_executions}) with tasks still "
                        "due: a task chain that never ends? (raise the cap with "
                        "tqtesting.max_executions(n))"
                    )
                    return None
                if i == 0:
                    _, _, _, push = heapq.heappop(self._due)
                else:
                    _, _, _, push = self._due[i]
                    self._due[i] = self._due[-1]
                    self._due.pop()
                    heapq.heapify(self._due)
                if rec.priority:
                    self._prioritized -= 1
                state.executions += 1
                if push.class_id is not None:
                    rec.status = TaskStatus.EXECUTING
                    return rec, push
                rec.status = TaskStatus.FINISHED
                rec.outcome = "not_pushed"
            self._check_stop_after(state, rec)
            if state.stopping:
                return None

    def _handle(self, rec: TaskRecord, push: Delivery) -> Coroutine[Any, Any, _push.PushResult]:
        if push.message is not None:
            return deliver(rec.attempts, push)
        headers = push.attempt_headers(rec.attempts, rec.eta, rec.last_status, rec.outcome)
        return _push.handle_push(self._dispatcher, push.class_id, headers, push.body)

    async def _run_due(self, state: _RunState) -> None:
        """Executes due tasks one after the other, each awaited in the run's own task."""
        while not state.stopping:
            taken = self._take_due(state)
            if taken is None:
                return
            rec, push = taken
            try:
                result = await InContext(self._handle(rec, push), contextvars.copy_context())
            except BaseException:  # cancelled, or an exception handle_push lets through
                self._requeue(rec, push)
                raise
            self._ended(state, rec, push, result)
            if state.cancelled:
                # The handler swallowed the run's cancellation: it ran to its
                # end (recorded above), and the run is cancelled all the same.
                raise asyncio.CancelledError
            if state.executions % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    def _start_due(self, state: _RunState, wake: asyncio.Event) -> None:
        """Starts due tasks, each in a task of its own, while a slot is free."""

        def ended(fut: asyncio.Future[_push.PushResult]) -> None:
            state.ended.append(fut)
            wake.set()

        while len(state.in_flight) < state.cfg.parallel and not state.stopping:
            taken = self._take_due(state)
            if taken is None:
                return
            fut = asyncio.ensure_future(self._handle(*taken))
            state.in_flight[fut] = taken
            fut.add_done_callback(ended)

    def _requeue(self, rec: TaskRecord, push: Delivery) -> None:
        """Makes a task that never ran to the end due again (unless deleted meanwhile)."""
        with self._lock:
            if rec.status is TaskStatus.DELETED:
                return
            rec.status = TaskStatus.PENDING
            self._push_due((rec.eta, rec.seq, rec, push))

    def _push_due(self, entry: _Due) -> None:
        """Adds a pending task to the heap (under the lock)."""
        heapq.heappush(self._due, entry)
        if entry[2].priority:
            self._prioritized += 1

    def _next_due(self, now: dt.datetime) -> int | None:
        """The heap index of the task to run next, or None if none is due (under the lock).

        The heap's head (earliest ETA) unless due tasks have priorities: then
        the least rank, ETA less priority x priority_step, as the database
        queue leases (a bounded head start).
        """
        due = self._due
        if not due or due[0][0] > now:
            return None
        if not self._prioritized:
            return 0
        step = self._priority_step
        ranks = [(e[0] - e[2].priority * step, e[1], i) for i, e in enumerate(due) if e[0] <= now]
        return min(ranks)[2]

    def _ended(
        self, state: _RunState, rec: TaskRecord, push: Delivery, result: _push.PushResult
    ) -> None:
        now = self._clock.now()
        failed_for_good = False
        if state.cfg.lose and loses_response(state.cfg, rec):
            result = _push.PushResult(504, "lost", result.class_id)
        with self._lock:
            rec.attempts += 1
            rec.last_status = result.status
            rec.outcome = result.outcome
            rec.error = result.error
            # Attempts are immutable: equal ones without an error (many tasks
            # ending at one fake instant) share one object.
            attempt = self._last_attempt
            if (
                result.error is not None
                or attempt is None
                or attempt.at != now
                or attempt.status != result.status
                or attempt.outcome != result.outcome
            ):
                attempt = Attempt(now, result.status, result.outcome, result.error)
                if result.error is None:
                    self._last_attempt = attempt
            rec.history.append(attempt)
            if rec.status is TaskStatus.DELETED:
                pass  # deleted while it ran: never retried
            elif result.done:
                rec.status = TaskStatus.FAILED if result.outcome == "fatal" else TaskStatus.FINISHED
            else:
                retry = self._queues.get(rec.queue, self._retry) if self._queues else self._retry
                if rec.attempts >= retry.max_attempts:
                    rec.status = TaskStatus.FAILED
                    failed_for_good = True
                else:
                    rec.status = TaskStatus.PENDING
                    rec.eta = now + retry.backoff(rec.attempts)
                    self._push_due((rec.eta, rec.seq, rec, push))
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
        stop_after = state.cfg.stop_after
        if stop_after and any(matches(m, rec) for m in stop_after):
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
            rec, push = state.in_flight.pop(fut)
            if fut.cancelled() or fut.exception() is not None:
                self._requeue(rec, push)  # never ran to the end: due again
            else:
                self._ended(state, rec, push, fut.result())

    def __repr__(self) -> str:
        with self._lock:
            n, pending = len(self._records), len(self._due)
        return f"<Scheduler tasks={n} pending={pending} clock={self._clock!r}>"


def _priority_of(task: Any) -> int:
    """`tq.Task.priority` of a request (its X-Tq-Priority header), else 0."""
    kind = task.WhichOneof("message_type")
    if kind is None:
        return 0
    raw = getattr(task, kind).headers.get(PRIORITY_HEADER)
    try:
        return int(raw) if raw else 0
    except ValueError:
        return 0


def _copy(payload: Message | None) -> Message | None:
    if payload is None:
        return None
    copy = type(payload)()
    copy.CopyFrom(payload)
    return copy
