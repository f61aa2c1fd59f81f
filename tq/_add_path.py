"""The add path: tasks validated and turned into submissions made now (outside a
transaction) or into reminders written into the transaction (inside one)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.trace import Span, SpanKind

from tq import _batch, _observe, _request, _topic, _tracing, clock
from tq._add_rules import check_destination as _check_destination
from tq._add_rules import check_kind as _check_kind
from tq._add_rules import refuse_untold as _refuse_untold
from tq._errors import ConfigError, PayloadTooLarge, SubmitError, TaskAlreadyAdded, ValidationError
from tq._handles import AddedTask, added_task
from tq._registry import TaskClassRegistry
from tq._reminder import encode_payload, fresh_until, reminder_row, request_payload
from tq._request import MAX_TASK_SIZE, epoch_parts
from tq._submitter import (
    Submission,
    Submitter,
    built_submission,
    current_submitter,
    new_submission,
)
from tq._task import Task, deduplicated_task_id
from tq._taskclass import TaskClass
from tq.txn._store import (
    PendingTask,
    Transaction,
    UntoldTransaction,
    find_transaction,
    writes_tasks_itself,
)

log = logging.getLogger("tq")

MAX_BATCH = 1000
_PRODUCER = SpanKind.PRODUCER


class AddPath(TaskClassRegistry):
    """`add_task` and `add_task_async` of `tq.Dispatcher`, which sets the options below."""

    namespace: str
    cloud_project: str | None
    random_bytes: Callable[[int], bytes]
    _submitter: Submitter | None
    _templates: dict[str, _request.Template | _topic.Template]  # by class ID
    _target: _request.Target

    def add_task(self, *tasks: Task, raise_if_exists: bool | None = None) -> list[AddedTask]:
        """Adds tasks from sync code; returns a `tq.AddedTask` per task, in order.

        Inside a transaction made ambient by a store helper (`tq.txn.sql`,
        `tq.txn.spanner`) TRANSACTIONAL and FOLLOWS_CONTEXT tasks are written
        as reminders and submitted after the commit (their handles carry the
        reminder ID, and `existed` None); otherwise tasks are submitted now.
        All tasks are validated before anything is written or submitted.

        A task whose name is taken already (a deduplication key used within
        the destination's window, or a scheduled tick added twice) is
        absorbed: its handle says `existed=True` and nothing new is created.
        With `raise_if_exists=True` (or, when it is None, for a class
        registered with `raise_if_exists=True`) the call raises
        `tq.TaskAlreadyAdded` instead, once every task of the call was
        submitted. It never fires inside a transaction: those tasks are
        named by fresh reminder IDs, and the happy path and the sweeper
        absorb their own resubmissions whatever it says.

        Raises ValidationError, PayloadTooLarge, TransactionError,
        ConfigError, TaskAlreadyAdded, or SubmitError (a non-transactional
        submit failed; tasks before it in the call may have been created, and
        with a submitter that takes a batch in one call, `submit_batch`, the
        others too).
        """
        if _tracing.tracer() is None:
            return self._add(tasks, None, raise_if_exists)
        with _tracing.span("tq.add_task", {"tq.tasks": len(tasks)}, kind=_PRODUCER) as span:
            return self._add(tasks, span, raise_if_exists)

    def _add(
        self, tasks: Sequence[Task], span: Span | None, raise_if_exists: bool | None
    ) -> list[AddedTask]:
        if raise_if_exists is not None and type(raise_if_exists) is not bool:
            raise ValidationError(f"raise_if_exists must be a bool or None: {raise_if_exists!r}")
        plan = self._plan(tasks, span)
        if isinstance(plan, _TxnPlan):
            return _save_reminders(plan)
        if len(plan) > 1 and span is None and callable(getattr(plan[0][1], "submit_batch", None)):
            submit_batch = plan[0][1].submit_batch  # type: ignore[attr-defined]
            added = _batch.added(plan, _batch.submit(submit_batch, plan))
        else:
            added = [_submit_now(submitter, sub, name) for sub, submitter, name in plan]
        if raise_if_exists is not False:
            for a in added:  # inline: this runs on every add_task
                if a.existed:
                    self._refuse_existing(added, raise_if_exists)
                    break
        return added

    async def add_task_async(
        self, *tasks: Task, raise_if_exists: bool | None = None
    ) -> list[AddedTask]:
        """Adds tasks from async code; same semantics (and handles) as `add_task`."""
        if _tracing.tracer() is None:
            return await self._add_async(tasks, None, raise_if_exists)
        with _tracing.span("tq.add_task", {"tq.tasks": len(tasks)}, kind=_PRODUCER) as span:
            return await self._add_async(tasks, span, raise_if_exists)

    async def _add_async(
        self, tasks: Sequence[Task], span: Span | None, raise_if_exists: bool | None
    ) -> list[AddedTask]:
        if raise_if_exists is not None and type(raise_if_exists) is not bool:
            raise ValidationError(f"raise_if_exists must be a bool or None: {raise_if_exists!r}")
        plan = self._plan(tasks, span)
        if isinstance(plan, _TxnPlan):
            return _save_reminders(plan)
        if len(plan) == 1:  # the usual case: no asyncio task to gather
            sub, submitter, name = plan[0]
            added = [await _submit_now_async(submitter, sub, name)]
        elif span is None and callable(getattr(plan[0][1], "submit_batch_async", None)):
            submit_batch = plan[0][1].submit_batch_async  # type: ignore[attr-defined]
            added = _batch.added(plan, await _batch.submit_async(submit_batch, plan))
        else:
            results = await asyncio.gather(
                *(_submit_now_async(submitter, sub, name) for sub, submitter, name in plan),
                return_exceptions=True,
            )
            added = []
            for r in results:
                if isinstance(r, BaseException):
                    raise r
                added.append(r)
        if raise_if_exists is not False:
            for a in added:
                if a.existed:
                    self._refuse_existing(added, raise_if_exists)
                    break
        return added

    def _refuse_existing(self, added: list[AddedTask], raise_if_exists: bool | None) -> None:
        """Raises TaskAlreadyAdded if a task that existed is to be refused, not absorbed."""
        existing = [
            a
            for a in added
            if a.existed and (raise_if_exists or self._classes[a.task_class].raise_if_exists)
        ]
        if existing:
            raise TaskAlreadyAdded(added, existing)

    def submitter(self) -> Submitter:
        """The submitter of the current context, else the dispatcher's own."""
        s = current_submitter() or self._submitter
        if s is None:
            if not self.cloud_project:
                raise ConfigError(
                    "no submitter: set cloud_project (to submit to Cloud Tasks), pass "
                    "submitter=..., or wrap the code in tq.use_submitter(...)"
                )
            from tq._cloudtasks import CloudTasksSubmitter

            s = self._submitter = CloudTasksSubmitter()
        return s

    def _plan(
        self, tasks: Sequence[Task], span: Span | None = None
    ) -> _TxnPlan | list[tuple[Submission, Submitter, str | None]]:
        if not tasks:
            return []
        if len(tasks) > MAX_BATCH:
            raise ValidationError(f"add_task takes at most {MAX_BATCH} tasks per call")
        # The trace context of the add_task span travels in every task's headers.
        trace_headers = _tracing.outgoing_headers() if span is not None else None
        found = find_transaction()
        untold: UntoldTransaction | None = None
        txn: Transaction | None = None
        if isinstance(found, UntoldTransaction):
            untold = found
        else:
            txn = found
        now = clock.now()
        # The ETA header and a reminder's creation time, worked out once.
        now_parts: tuple[int, int] | None = epoch_parts(now)
        if now_parts[0] < 0:  # type: ignore[index]
            now_parts = None
        submitter = self.submitter()
        queues_ok = False  # the submitter was found to take queue classes' tasks
        # In a transaction every task becomes a reminder (_check_kind refuses
        # the others); outside one every task is submitted now.
        subs: list[tuple[Submission, Submitter, str | None]] = []
        pending: list[PendingTask] = []
        added: list[AddedTask] = []
        if txn is not None:
            until = fresh_until(now, txn.deadline)
            limit = txn.store.max_payload_size
            # The database queue writes its task row into the transaction
            # itself: no reminder is stored, so none is encoded.
            direct = writes_tasks_itself(txn, submitter)
        debug = log.isEnabledFor(logging.DEBUG)
        # A submitter that stores requests as rows takes what they were built from.
        want_parts = trace_headers is None and getattr(submitter, "takes_parts", False) is True
        last_cls: TaskClass | None = None  # the tasks of a call are mostly of one class
        for task in tasks:
            if not isinstance(task, Task):
                raise ValidationError(f"add_task takes tq.Task objects, got {task!r}")
            task.validate()
            cls = self._by_type.get(task.payload.DESCRIPTOR.full_name)
            if cls is None:
                raise ValidationError(
                    f"no task class for payload type {task.payload.DESCRIPTOR.full_name}; "
                    "register one with Dispatcher.task_class(...)"
                )
            if untold is not None:
                _refuse_untold(cls, untold)
            _check_kind(cls, txn)
            if cls.topic or task.ordering_key or not queues_ok:
                _check_destination(cls, task, submitter)
                queues_ok = queues_ok or not cls.topic
            if cls.topic:
                # Every message carries a task ID (its reminder's in a transaction).
                task_id: str | None = self.random_bytes(16).hex()
            elif txn is not None:
                if task.deduplication_key:
                    raise ValidationError(
                        f"task of class {cls.id!r}: a deduplication key cannot be used on a "
                        "task added in a transaction (its reminder already names it)"
                    )
                task_id = self.random_bytes(16).hex()
            elif task.deduplication_key:
                task_id = deduplicated_task_id(self.namespace, cls.id, task.deduplication_key)
            else:
                task_id = None
            if cls is not last_cls:
                tpl = self._template(cls)
                last_cls = cls
            # A reminder's request is serialized here: its size is checked on
            # those bytes (and its task's only when they are over the limit).
            stored = txn is not None and not direct and type(tpl) is _request.Template
            parts: tuple[Any, ...] | None = None
            if stored:
                req = tpl.build(
                    task, now=now, task_id=task_id, extra_headers=trace_headers,
                    now_parts=now_parts, check_size=False,
                )  # type: ignore[call-arg]  # fmt: skip
            elif type(tpl) is _request.Template:
                if want_parts and now_parts is not None:
                    # Its request is built only if something reads it.
                    parts = tpl.parts(task, now=now, task_id=task_id, now_parts=now_parts)
                if parts is None:
                    req = tpl.build(
                        task, now=now, task_id=task_id, extra_headers=trace_headers,
                        now_parts=now_parts,
                    )  # fmt: skip
            else:
                req = tpl.build(task, now=now, task_id=task_id, extra_headers=trace_headers)
            name = tpl.task_name(task, task_id)
            sub: Submission
            if parts is not None:
                sub = built_submission(
                    cls.id, now, task.payload, task_id if txn is not None else None,
                    (*parts, task.priority, task.tag), task, now_parts,  # type: ignore[arg-type]
                )  # fmt: skip
            else:
                sub = new_submission(
                    req, cls.id, now, task.payload, task_id if txn is not None else None
                )
            if txn is None:
                subs.append((sub, submitter, name))
            elif direct:
                rem = reminder_row(task_id or "", until, b"", b"")
                pending.append(PendingTask(rem, sub, submitter))
                added.append(added_task(name, cls.id, task_id, None))
            else:
                if stored:
                    raw = req.SerializeToString()
                    if len(raw) > MAX_TASK_SIZE:
                        tpl.check_size(req)  # type: ignore[union-attr]
                    payload = (
                        encode_payload(sub)
                        if now_parts is None
                        else request_payload(cls.id, raw, now_parts)
                    )
                else:
                    payload = encode_payload(sub)
                if len(payload) > limit:
                    raise PayloadTooLarge(
                        f"task of class {cls.id!r} is {len(payload)} bytes as a reminder, "
                        f"over the {limit} bytes store {txn.store.name!r} takes"
                    )
                rem = reminder_row(task_id or "", until, payload, b"")
                pending.append(PendingTask(rem, sub, submitter))
                added.append(added_task(name, cls.id, task_id, None))
            if debug and not cls.quiet:
                where = cls.topic or task.queue or cls.queue
                fields = {"tq_class": cls.id, "tq_queue": where.rsplit("/", 1)[-1]}
                if txn is not None and task_id:
                    fields["tq_reminder"] = task_id
                log.debug("tq: adding task of class %s: %s", cls.id, task.payload, extra=fields)
        if span is not None:
            classes = {s.task_class for s, _, _ in subs} | {
                p.submission.task_class for p in pending
            }
            _tracing.set_attributes(
                span, {"tq.task_class": sorted(classes), "tq.transactional": txn is not None}
            )
        if txn is None:
            return subs
        return _TxnPlan(txn, pending, added)

    def _template(self, cls: TaskClass) -> _request.Template | _topic.Template:
        # Built on first use (a class that cannot be routed fails at add_task,
        # as before) and again after configure() or a change to the class.
        tpl = self._templates.get(cls.id)
        if cls.topic:
            if not isinstance(tpl, _topic.Template) or not tpl.fits(cls, self.cloud_project):
                tpl = self._templates[cls.id] = _topic.Template(cls, self.cloud_project)
            return tpl
        if not isinstance(tpl, _request.Template) or not tpl.fits(cls, self._target):
            tpl = self._templates[cls.id] = _request.Template(cls, self._target)
        return tpl


@dataclasses.dataclass(slots=True)
class _TxnPlan:
    txn: Transaction
    pending: list[PendingTask]
    added: list[AddedTask]  # the handles of `pending`, in order


def _save_reminders(plan: _TxnPlan) -> list[AddedTask]:
    """Writes a plan's reminders into its transaction; their handles.

    A transaction with `save_reminders` (the SQL stores') takes a batch at
    once: one INSERT for the lot.
    """
    pending = plan.pending
    save_all = getattr(plan.txn, "save_reminders", None) if len(pending) > 1 else None
    if save_all is not None:
        save_all(pending)
        return plan.added
    save = plan.txn.save_reminder
    for p in pending:
        save(p)
    return plan.added


def _submit_now(submitter: Submitter, sub: Submission, name: str | None) -> AddedTask:
    """Submits one task now; its handle. `name`: the task's, if add_task named it."""
    try:
        with _observe.submitting(sub, "direct"):
            created = submitter.submit(sub)
    except SubmitError as e:
        if not e.already_exists:
            raise
        return added_task(name, sub.task_class, None, True)
    return added_task(created or name, sub.task_class, None, False)


async def _submit_now_async(submitter: Submitter, sub: Submission, name: str | None) -> AddedTask:
    try:
        with _observe.submitting(sub, "direct"):
            created = await submitter.submit_async(sub)
    except SubmitError as e:
        if not e.already_exists:
            raise
        return added_task(name, sub.task_class, None, True)
    return added_task(created or name, sub.task_class, None, False)
