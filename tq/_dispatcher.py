"""The Dispatcher: a registry of task classes and the way tasks are added."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message
from opentelemetry.trace import Span, SpanKind

from tq import _batch, _deletion, _observe, _request, _schedule, _topic, _tracing, clock
from tq._errors import (
    ConfigError,
    PayloadTooLarge,
    SubmitError,
    TaskAlreadyAdded,
    TransactionError,
    ValidationError,
)
from tq._handles import AddedTask, TaskDeletion, added_task
from tq._reminder import encode_payload, fresh_until, reminder_row
from tq._submitter import (
    Submission,
    Submitter,
    current_submitter,
    new_submission,
    takes_queues,
    takes_topics,
)
from tq._task import Task, deduplicated_task_id
from tq._taskclass import (
    DEFAULT_ROUTING_PREFIX,
    CustomPayload,
    Handler,
    Kind,
    SchedulePayload,
    TaskClass,
)
from tq.cron import Cron
from tq.txn._store import (
    PendingTask,
    Transaction,
    UntoldTransaction,
    find_transaction,
    writes_tasks_itself,
)

log = logging.getLogger("tq")

H = TypeVar("H", bound=Handler)
_NAMESPACE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
MAX_BATCH = 1000
_PRODUCER = SpanKind.PRODUCER


class Sweeper(Protocol):
    """What `Dispatcher.sweep` delegates to (see the `sweeper` package)."""

    def sweep(self, dispatcher: Dispatcher) -> None: ...

    async def sweep_async(self, dispatcher: Dispatcher) -> None: ...


class Dispatcher:
    """A registry of task classes, and the way tasks are added and pushed back.

    Args:
      cloud_project, cloud_region: where short queue names live.
      default_target_host: host pushes go to, for classes without their own
        `target_host` (e.g. "app.example.com"); required unless on App Engine.
      push_as: service account Cloud Tasks signs push OIDC tokens as; pushes
        carry no token when None.
      push_audience: the token audience; default `https://<target host>`.
        The push endpoint checks the same value (see `tq.asgi`).
      authorized_pushers: more service accounts (besides `push_as`) whose
        tokens the push endpoint accepts.
      namespace: prefixes deduplication keys, so several deployments can
        share queues; "" or a letter or "_" then up to 49 of [A-Za-z0-9_].
      app_engine: build App Engine requests instead of HTTP ones, and trust
        X-AppEngine-* headers on pushes.
      target_scheme: "https" (default); "http" only for pushes to a local
        emulator or dev server on loopback.
      submitter: where tasks go when no `use_submitter()` is in effect;
        default: a `CloudTasksSubmitter` made on first use.
      sweeper: what `sweep()` runs (see the `sweeper` package).
      random_bytes: the source of reminder IDs (default `os.urandom`).
      sync_handler_scope: a context manager factory entered in the worker
        thread around each call of a `def` handler (default None), for
        per-thread resources such as database connections: the Django
        integration closes Django's stale connections there, as Django
        does around a request.
    """

    def __init__(
        self,
        *,
        cloud_project: str | None = None,
        cloud_region: str | None = None,
        default_target_host: str | None = None,
        push_as: str | None = None,
        push_audience: str | None = None,
        authorized_pushers: Sequence[str] = (),
        namespace: str = "",
        app_engine: bool = False,
        target_scheme: str = "https",
        submitter: Submitter | None = None,
        sweeper: Sweeper | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        sync_handler_scope: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.cloud_project: str | None = None
        self.cloud_region: str | None = None
        self.default_target_host: str | None = None
        self.push_as: str | None = None
        self.push_audience: str | None = None
        self.authorized_pushers: tuple[str, ...] = ()
        self.namespace = ""
        self.app_engine = False
        self.target_scheme = "https"
        self._classes: dict[str, TaskClass] = {}
        self._templates: dict[str, _request.Template | _topic.Template] = {}  # by class ID
        self._by_type: dict[str, TaskClass] = {}
        self._lock = threading.Lock()
        self._submitter = submitter
        self.sweeper = sweeper
        self.random_bytes = random_bytes
        self.sync_handler_scope = sync_handler_scope
        self.configure(
            cloud_project=cloud_project,
            cloud_region=cloud_region,
            default_target_host=default_target_host,
            push_as=push_as,
            push_audience=push_audience,
            authorized_pushers=authorized_pushers,
            namespace=namespace,
            app_engine=app_engine,
            target_scheme=target_scheme,
        )

    def configure(self, **options: Any) -> None:
        """Changes dispatcher options (same names as the constructor's).

        Meant for start-up, e.g. of the process-wide `tq.default`.
        """
        allowed = {
            "cloud_project", "cloud_region", "default_target_host", "push_as",
            "push_audience", "authorized_pushers", "namespace", "app_engine", "target_scheme",
            "submitter", "sweeper", "random_bytes", "sync_handler_scope",
        }  # fmt: skip
        unknown = set(options) - allowed
        if unknown:
            raise ConfigError(f"unknown dispatcher options: {sorted(unknown)}")
        for k, v in options.items():
            if k == "submitter":
                self._submitter = v
            else:
                setattr(self, k, v)
        ns = self.namespace
        if ns and (
            len(ns) > 50 or not (ns[0].isalpha() or ns[0] == "_") or set(ns) - _NAMESPACE_CHARS
        ):
            raise ConfigError(
                f"namespace {ns!r} is invalid: use '' or a letter or '_' followed by up "
                "to 49 letters, digits or '_'"
            )
        self.authorized_pushers = tuple(self.authorized_pushers)
        if self.target_scheme not in ("https", "http"):
            raise ConfigError(
                f"target_scheme must be 'https' or 'http', not {self.target_scheme!r}"
            )
        self._target = _request.Target(
            cloud_project=self.cloud_project,
            cloud_region=self.cloud_region,
            default_target_host=self.default_target_host,
            push_as=self.push_as,
            push_audience=self.push_audience,
            app_engine=self.app_engine,
            target_scheme=self.target_scheme,
        )

    # Registration.

    def register_task_class(self, cls: TaskClass) -> TaskClass:
        """Adds a task class. Raises ConfigError if it is invalid or clashes."""
        cls.validate()
        with self._lock:
            if cls.id in self._classes:
                raise ConfigError(f"task class {cls.id!r} is registered already; IDs are unique")
            clash = self._by_type.get(cls.type_name)
            if clash is not None:
                raise ConfigError(
                    f"task class {cls.id!r}: prototype {cls.type_name} is used by class "
                    f"{clash.id!r} already; each payload type belongs to one class"
                )
            self._classes[cls.id] = cls
            self._by_type[cls.type_name] = cls
        return cls

    def task_class(
        self,
        *,
        id: str,
        prototype: type[Message],
        kind: Kind,
        queue: str = "",
        topic: str = "",
        routing_prefix: str = DEFAULT_ROUTING_PREFIX,
        target_host: str | None = None,
        custom: Callable[[Message], CustomPayload | None] | None = None,
        quiet: bool = False,
        quiet_on_error: bool = False,
        dispatch_deadline_s: float | None = None,
        schedule: Cron | None = None,
        schedule_payload: SchedulePayload | None = None,
        raise_if_exists: bool = False,
    ) -> Callable[[H], H]:
        """Decorator: registers a task class with the decorated handler."""
        cls = self.register_task_class(
            TaskClass(
                id=id, prototype=prototype, kind=kind, queue=queue, topic=topic,
                routing_prefix=routing_prefix, target_host=target_host, custom=custom,
                quiet=quiet, quiet_on_error=quiet_on_error,
                dispatch_deadline_s=dispatch_deadline_s, schedule=schedule,
                schedule_payload=schedule_payload, raise_if_exists=raise_if_exists,
            )
        )  # fmt: skip

        def decorate(handler: H) -> H:
            self.attach_handler(cls.id, handler)
            return handler

        return decorate

    def attach_handler(self, class_id: str, handler: Handler) -> None:
        """Sets the handler of a registered class; a class takes one handler, once."""
        if not callable(handler):
            raise ConfigError(f"task class {class_id!r}: handler must be callable")
        with self._lock:
            cls = self._classes.get(class_id)
            if cls is None:
                raise ConfigError(f"no task class {class_id!r}; register it first")
            if cls.handler is not None:
                raise ConfigError(f"task class {class_id!r} has a handler already")
            cls.handler = handler

    def task_class_by_id(self, class_id: str) -> TaskClass | None:
        return self._classes.get(class_id)

    def task_class_for(self, payload: Message | type[Message]) -> TaskClass | None:
        """The class registered for the payload's protobuf type, if any."""
        return self._by_type.get(payload.DESCRIPTOR.full_name)

    def task_classes(self) -> list[TaskClass]:
        return sorted(self._classes.values(), key=lambda c: c.id)

    # Scheduled classes (see tq._schedule).

    def schedules(self) -> list[TaskClass]:
        """The task classes with a cron `schedule`, by ID."""
        return [c for c in self.task_classes() if c.schedule is not None]

    def add_scheduled_task(self, class_id: str, tick: dt.datetime | None = None) -> dt.datetime:
        """Adds the task of a scheduled class for `tick`; returns the tick.

        `tick` defaults to the latest tick at or before now. The task's name
        derives from the class and the tick, so adding one tick's task again
        (another process, a retried cron call) creates nothing new while the
        queue remembers the name. Raises ConfigError for a class without a
        schedule, ValidationError if `tick` is not a tick.
        """
        cls, tick = self._tick_of(class_id, tick)
        self.add_task(_schedule.tick_task(cls, tick), raise_if_exists=False)
        return tick

    async def add_scheduled_task_async(
        self, class_id: str, tick: dt.datetime | None = None
    ) -> dt.datetime:
        """`add_scheduled_task` from async code."""
        cls, tick = self._tick_of(class_id, tick)
        await self.add_task_async(_schedule.tick_task(cls, tick), raise_if_exists=False)
        return tick

    def _tick_of(self, class_id: str, tick: dt.datetime | None) -> tuple[TaskClass, dt.datetime]:
        cls = self._classes.get(class_id)
        if cls is None or cls.schedule is None:
            raise ConfigError(f"no scheduled task class {class_id!r}")
        if tick is None:
            tick = _schedule.current_tick(cls, clock.now())
            if tick is None:
                raise ValidationError(f"task class {class_id!r}: its schedule has not ticked yet")
        return cls, tick

    # Adding tasks.

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

    # Deleting tasks.

    def delete_task(
        self,
        task: str | AddedTask | None = None,
        *,
        task_class: str | None = None,
        deduplication_key: str | None = None,
        queue: str | None = None,
    ) -> TaskDeletion:
        """Deletes a waiting task so that it never runs; says whether there was one.

        Name the task by `task`: its full name
        (`projects/P/locations/L/queues/Q/tasks/ID`), a short one
        (`Q/tasks/ID`, in this dispatcher's project and region), or the
        `tq.AddedTask` that `add_task` returned. Or by `task_class` (a class
        ID registered here) and `deduplication_key`, with `queue` for a task
        added to a queue of its own (`Task.queue`).

        The submitter of the context deletes it (`tq.TaskDeleter`: Cloud
        Tasks, the database queue, tqtesting). The answer is a
        `tq.TaskDeletion`: `deleted` False means no such task was waiting or
        running (never added, already run, failed or deleted). A task being
        run when deleted finishes that attempt but is never retried. The
        name stays taken for the destination's deduplication window, so
        adding the same deduplicated task again soon after is absorbed (or
        raises, see `raise_if_exists`).

        A task added in a transaction (named `<queue>/tasks/<reminder ID>`)
        whose reminder is still pending after the commit (its happy path
        not run yet, say in a background queue, or left to the sweeper by a
        failure or a crash) is deleted there too: its reminder is deleted
        from every store registered with `tq.txn`, parked or not, and this
        process's happy path drops it, so it is never submitted; `deleted`
        is then True. Before the commit there is nothing to delete: the
        reminder is the open transaction's. Deletion acts now, whatever
        transaction is open.

        Raises ValidationError for a malformed name or a bad class or key
        (before anything is asked of the destination), ConfigError when the
        submitter cannot delete tasks, SubmitError for any other failure.
        """
        name = self._name_to_delete(task, task_class, deduplication_key, queue)
        deleter = _deletion.deleter_of(self.submitter())
        forgot = _deletion.forget_reminder(name)
        deleted = deleter.delete_task(name)
        return _deletion.deletion(name, forgot or deleted)

    async def delete_task_async(
        self,
        task: str | AddedTask | None = None,
        *,
        task_class: str | None = None,
        deduplication_key: str | None = None,
        queue: str | None = None,
    ) -> TaskDeletion:
        """`delete_task` from async code."""
        name = self._name_to_delete(task, task_class, deduplication_key, queue)
        deleter = _deletion.deleter_of(self.submitter())
        forgot = await asyncio.to_thread(_deletion.forget_reminder, name)
        deleted = await deleter.delete_task_async(name)
        return _deletion.deletion(name, forgot or deleted)

    def _name_to_delete(self, *args: Any) -> str:
        return _deletion.name_to_delete(
            *args, find_class=self._classes.get, namespace=self.namespace, target=self._target
        )

    def sweep(self) -> None:
        """Resubmits stale reminders once, with the configured sweeper."""
        self._require_sweeper().sweep(self)

    async def sweep_async(self) -> None:
        await self._require_sweeper().sweep_async(self)

    def _require_sweeper(self) -> Sweeper:
        if self.sweeper is None:
            raise ConfigError(
                "no sweeper configured: pass sweeper=sweeper.InProcSweeper() (or a "
                "DistributedSweeper) to the Dispatcher"
            )
        return self.sweeper

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
            tpl = self._template(cls)
            req = tpl.build(task, now=now, task_id=task_id, extra_headers=trace_headers)
            name = tpl.task_name(task, task_id)
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
                payload = encode_payload(sub)
                if len(payload) > limit:
                    raise PayloadTooLarge(
                        f"task of class {cls.id!r} is {len(payload)} bytes as a reminder, "
                        f"over the {limit} bytes store {txn.store.name!r} takes"
                    )
                rem = reminder_row(task_id or "", until, payload, b"")
                pending.append(PendingTask(rem, sub, submitter))
                added.append(added_task(name, cls.id, task_id, None))
            if not cls.quiet and log.isEnabledFor(logging.DEBUG):
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


def _check_kind(cls: TaskClass, txn: Transaction | None) -> None:
    """Raises if a task of `cls` cannot be added here (in `txn`, or outside any)."""
    kind = cls.kind
    if kind is Kind.TRANSACTIONAL and txn is None:
        raise TransactionError(
            f"task class {cls.id!r} is TRANSACTIONAL: add it inside a transaction opened "
            "with tq.txn.sql.transaction(...), tq.txn.sql.bind(session), a sessionmaker or "
            "engine made transaction-aware with tq.txn.sql.instrument(...), or "
            "tq.txn.spanner.run_in_transaction(...)"
        )
    if kind is Kind.NON_TRANSACTIONAL and txn is not None:
        raise TransactionError(
            f"task class {cls.id!r} is NON_TRANSACTIONAL: add it outside the transaction "
            "(e.g. inside tq.txn.outside_transaction()), or make the class FOLLOWS_CONTEXT"
        )


def _check_destination(cls: TaskClass, task: Task, submitter: Submitter) -> None:
    """Raises if a task of `cls` cannot go where its class says through `submitter`."""
    if cls.topic:
        if task.queue is not None:
            raise ValidationError(
                f"task of class {cls.id!r}: queue is for queue classes (Cloud Tasks); this "
                f"class publishes to Pub/Sub topic {cls.topic!r}"
            )
        if task.deduplication_key:
            raise ValidationError(
                f"task of class {cls.id!r}: Pub/Sub does not deduplicate, so a topic class "
                "takes no deduplication key (subscribers drop duplicates by the tq_task_id "
                "attribute, see docs/pubsub.md)"
            )
        if not takes_topics(submitter):
            raise ConfigError(
                f"task class {cls.id!r} publishes to Pub/Sub topic {cls.topic!r}, but the "
                f"submitter {submitter!r} takes no topics: use tq.Router(queues=..., "
                "topics=tq.pubsub.Publisher(...)), the database queue or tqtesting"
            )
        return
    if task.ordering_key:
        raise ValidationError(
            f"task of class {cls.id!r}: ordering_key is for topic classes (Pub/Sub); "
            "Cloud Tasks has none"
        )
    if not takes_queues(submitter):
        raise ConfigError(
            f"task class {cls.id!r} goes to Cloud Tasks queue {cls.queue!r}, but the "
            f"submitter {submitter!r} takes no queues: use tq.Router(queues=..., topics=...)"
        )


def _refuse_untold(cls: TaskClass, untold: UntoldTransaction) -> None:
    """Raises for a task added while a transaction tq was not told about is open."""
    head = f"task of class {cls.id!r}: {untold.what} is open and tq was not told about it"
    if cls.kind is Kind.TRANSACTIONAL:
        raise TransactionError(f"{head}, so the task cannot be written into it. {untold.fix}")
    if cls.kind is Kind.NON_TRANSACTIONAL:
        then = "it would be submitted now, as if it were outside that transaction"
    else:
        then = "it would be submitted now, and run even if that transaction rolled back"
    raise TransactionError(
        f"{head}, so {then}. {untold.fix}; or, to submit it now regardless, add it "
        "inside tq.txn.outside_transaction()"
    )


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
