"""Scheduler: an in-memory Cloud Tasks that runs tasks through tq's push path."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

import tq
from tq import _push
from tq._handles import check_task_name
from tq._taskclass import FULL_QUEUE_RE
from tq._topic import CLASS_ATTRIBUTE, is_publish, message_name
from tq.clock import Clock
from tq.pubsub._message import Received
from tqtesting._clock import FakeClock
from tqtesting._delivery import Delivery, decode_payload, delivery
from tqtesting._due import DueTasks, priority_of
from tqtesting._errors import SchedulerError
from tqtesting._options import RetryConfig, RunConfig, RunOption
from tqtesting._records import Attempt, TaskList, TaskRecord, TaskStatus
from tqtesting._run import Run
from tqtesting._topics import Topics


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
        self._due = DueTasks(priority_step)
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
                reminder_id=submission.reminder_id, priority=priority_of(task),
            )  # fmt: skip
            self._by_name[name] = rec
            self._records.append(rec)
            self._due.push((eta, seq, rec, push))
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
                self._due.remove(rec)
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
                self._due.push((now, seq, rec, push))
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
        run = Run(self, RunConfig.of(options))
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
                worker = asyncio.ensure_future(run.loop(wake))
            await run.join(worker)
        finally:
            with self._lock:
                self._wakers.remove(waker)
            if unsubscribe is not None:
                unsubscribe()
            await run.abandon()
        if run.error is not None:
            cause = run.failed.error if run.failed is not None else None
            raise run.error from cause

    # What a run (tqtesting._run) takes from and records here, under the lock.

    def _head(self) -> TaskRecord | None:
        with self._lock:
            return self._due.head()

    def _take_due(
        self, stops_before: Callable[[TaskRecord], bool]
    ) -> tuple[TaskRecord, Delivery] | None:
        """Takes the next due task, or None if none is due or `stops_before` it.

        A task for tq's push endpoint is marked EXECUTING; any other ends here,
        FINISHED with outcome "not_pushed".
        """
        now = self._clock.now()
        with self._lock:
            i = self._due.next_due(now)
            if i is None:
                return None
            rec = self._due.record_at(i)
            if stops_before(rec):
                return None
            push = self._due.take(i)
            if push.class_id is not None:
                rec.status = TaskStatus.EXECUTING
            else:
                rec.status = TaskStatus.FINISHED
                rec.outcome = "not_pushed"
            return rec, push

    def _requeue(self, rec: TaskRecord, push: Delivery) -> None:
        """Makes a task that never ran to the end due again (unless deleted meanwhile)."""
        with self._lock:
            if rec.status is TaskStatus.DELETED:
                return
            rec.status = TaskStatus.PENDING
            self._due.push((rec.eta, rec.seq, rec, push))

    def _record_attempt(self, rec: TaskRecord, push: Delivery, result: _push.PushResult) -> bool:
        """Records an attempt's end and retries the task if it may; whether it failed for good."""
        now = self._clock.now()
        failed_for_good = False
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
                    self._due.push((rec.eta, rec.seq, rec, push))
        return failed_for_good

    def __repr__(self) -> str:
        with self._lock:
            n, pending = len(self._records), len(self._due)
        return f"<Scheduler tasks={n} pending={pending} clock={self._clock!r}>"


def _copy(payload: Message | None) -> Message | None:
    if payload is None:
        return None
    copy = type(payload)()
    copy.CopyFrom(payload)
    return copy
