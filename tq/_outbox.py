"""The happy path: submitting reminders right after their transaction commits.

Stores call `after_commit` / `after_commit_async` with what the transaction
saved. For each reminder still fresh: submit it (a few quick retries within a
bounded time), then delete it. A transient failure keeps the reminder for the
sweeper; a permanent one parks it (never deletes it). Nothing here raises into
the caller: post-commit failures are logged and counted. The sweeper submits
stale reminders in batches through `submit_reminders` (`tq parked replay` one
at a time through `submit_reminder`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tq import _metrics, _observe, _tracing, clock
from tq._errors import SubmitError
from tq._reminder import parked_extra
from tq._submitter import Submission, Submitter, submit_deadline
from tq.txn._store import PendingTask, ReminderStore

log = logging.getLogger("tq.outbox")

ATTEMPTS = 3
BUDGET_S = 5.0
_PAUSES_S = (0.02, 0.1)


class Outcome(enum.Enum):
    SUBMITTED = "submitted"  # created (or existed already); reminder deleted
    KEPT = "kept"  # transient failure; the sweeper will retry
    PARKED = "parked"  # permanent failure; set aside for an operator


def _submit_with_retries(
    submitter: Submitter,
    sub: Submission,
    path: str,
    tally: _observe.Tally | None = None,
    first: _FirstAttempt | None = None,
) -> None:
    # The deadline also bounds the submitter's own retries (CloudTasksSubmitter
    # has some), so the whole happy path of one task stays within BUDGET_S.
    deadline = time.monotonic() + BUDGET_S
    if first is not None:
        deadline -= clock.current().monotonic() - first.started
    started = None if first is None else first.started
    with _observe.submitting(sub, path, tally, started) as observed:
        for attempt in range(ATTEMPTS):
            try:
                if first is not None:
                    # The attempt `_submit_quick` made failed: go on from it.
                    err, first = first.error, None
                    raise err
                with submit_deadline(BUDGET_S):
                    submitter.submit(sub)
                return
            except SubmitError as e:
                if e.already_exists:
                    observed.code = e.code.name
                    return
                if not e.transient or attempt == ATTEMPTS - 1 or time.monotonic() >= deadline:
                    raise
            time.sleep(_PAUSES_S[min(attempt, len(_PAUSES_S) - 1)])


async def _submit_with_retries_async(
    submitter: Submitter,
    sub: Submission,
    path: str,
    tally: _observe.Tally | None = None,
    first: _FirstAttempt | None = None,
) -> None:
    deadline = time.monotonic() + BUDGET_S
    if first is not None:
        deadline -= clock.current().monotonic() - first.started
    started = None if first is None else first.started
    with _observe.submitting(sub, path, tally, started) as observed:
        for attempt in range(ATTEMPTS):
            try:
                if first is not None:
                    err, first = first.error, None
                    raise err
                with submit_deadline(BUDGET_S):
                    await submitter.submit_async(sub)
                return
            except SubmitError as e:
                if e.already_exists:
                    observed.code = e.code.name
                    return
                if not e.transient or attempt == ATTEMPTS - 1 or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(_PAUSES_S[min(attempt, len(_PAUSES_S) - 1)])


@dataclasses.dataclass(slots=True)
class _FirstAttempt:
    """A first attempt that failed in `_submit_quick`, for the retries to go on from."""

    error: Exception
    started: float  # clock.current().monotonic() when it began


def _failed(store: ReminderStore, sub: Submission, err: Exception, path: str) -> Outcome:
    rid = sub.reminder_id or ""
    fields = _observe.log_fields(sub)
    if isinstance(err, SubmitError) and not err.transient:
        try:
            store.park_reminder(rid, parked_extra(err.code.name, err.message, clock.now()))
        except Exception:
            log.exception(
                "tq: could not park reminder %s (class %s)", rid, sub.task_class, extra=fields
            )
            _metrics.add("tq_reminders_park_failed", task_class=sub.task_class)
            return Outcome.KEPT
        log.error(
            "tq: task of class %s parked (reminder %s, %s): permanent submit failure: %s",
            sub.task_class,
            rid,
            path,
            err,
            extra=fields,
        )
        _metrics.add("tq_reminders_parked", task_class=sub.task_class, code=err.code.name)
        return Outcome.PARKED
    code = err.code.name if isinstance(err, SubmitError) else type(err).__name__
    log.warning(
        "tq: submit of reminder %s (class %s, %s) failed, left for the sweeper: %s",
        rid,
        sub.task_class,
        path,
        err,
        extra=fields,
    )
    _metrics.add("tq_submits_failed", task_class=sub.task_class, path=path, code=code)
    return Outcome.KEPT


def delete_quietly(store: ReminderStore, ids: Sequence[str]) -> bool:
    """Deletes the reminders of submitted tasks; False (logged) if that failed.

    The tasks exist: reminders left behind are resubmitted by the sweeper,
    and their names absorb the duplicate.
    """
    if not ids:
        return True
    try:
        store.delete_reminders(ids)
    except Exception:
        log.exception("tq: could not delete %d submitted reminders", len(ids))
        return False
    return True


_delete = delete_quietly


def submit_reminder(
    store: ReminderStore, sub: Submission, submitter: Submitter, path: str = "sweep"
) -> Outcome:
    """Submits one reminder's task and deletes (or parks) the reminder."""
    try:
        _submit_with_retries(submitter, sub, path)
    except Exception as e:
        return _failed(store, sub, e, path)
    _observe.reminder_done(sub, path)
    _delete(store, [sub.reminder_id or ""])
    return Outcome.SUBMITTED


async def submit_reminder_async(
    store: ReminderStore, sub: Submission, submitter: Submitter, path: str = "sweep"
) -> Outcome:
    """Like `submit_reminder`, for async code (store calls run in a thread)."""
    try:
        await _submit_with_retries_async(submitter, sub, path)
    except Exception as e:
        return await asyncio.to_thread(_failed, store, sub, e, path)
    _observe.reminder_done(sub, path)
    await asyncio.to_thread(_delete, store, [sub.reminder_id or ""])
    return Outcome.SUBMITTED


@dataclasses.dataclass(slots=True)
class Submitted:
    """What `submit_reminders` did with a batch.

    Attributes:
      done: IDs of the reminders whose tasks exist now (created, or existing
        already), for the caller to delete.
      kept: transient failures, left for the next sweep.
      parked: permanent failures, parked (or kept if parking failed: counted
        in `kept`).
    """

    done: list[str] = dataclasses.field(default_factory=list)
    kept: int = 0
    parked: int = 0

    def note(self, outcome: Outcome) -> None:
        if outcome is Outcome.PARKED:
            self.parked += 1
        else:
            self.kept += 1


def submit_reminders(
    store: ReminderStore,
    subs: Sequence[Submission],
    submitter: Submitter,
    path: str = "sweep",
    out: Submitted | None = None,
) -> Submitted:
    """Submits a batch of reminders' tasks one after another (blocking).

    Each is submitted as `submit_reminder` does (quick retries within
    BUDGET_S, a `tq.submit` span, permanent failures parked), except that
    the reminders are not deleted: the caller deletes `Submitted.done` (one
    statement for the batch). Outcomes go into `out` (default: a new
    Submitted) as they come, so that a caller interrupted midway still
    knows what was submitted. Counters are added once per call. Never
    raises for a failed submit.
    """
    out = Submitted() if out is None else out
    ok: list[Submission] = []
    tally: _observe.Tally = {}
    try:
        if _tracing.tracer() is None:
            _submit_quick(store, subs, submitter, path, out, ok, tally)
            return out
        for sub in subs:
            try:
                _submit_with_retries(submitter, sub, path, tally)
            except Exception as e:
                out.note(_failed(store, sub, e, path))
                continue
            ok.append(sub)
            out.done.append(sub.reminder_id or "")
    finally:
        _observe.count_submits(tally, path)
        _observe.reminders_done(ok, path)
    return out


def _submit_quick(
    store: ReminderStore,
    subs: Sequence[Submission],
    submitter: Submitter,
    path: str,
    out: Submitted,
    ok: list[Submission],
    tally: _observe.Tally,
) -> None:
    """`submit_reminders`' loop while no tracer is installed (no span to make).

    Each submit's first attempt runs here, bounded and measured as in
    `_submit_with_retries` but without its span and context managers (the
    sweeper makes thousands a second); one that fails goes on in
    `_submit_with_retries` (retries, then the outcome) from that attempt.
    """
    observed = _observe.QuickSubmits(path, tally)
    mono = _monotonic()
    done = out.done
    submit = submitter.submit
    bounded = _Rearmed()
    counted: list[Submission] = []  # done at the first attempt: counted at the end
    try:
        for sub in subs:
            started = mono()
            bounded.arm()
            try:
                submit(sub)
            except SubmitError as e:
                if not e.already_exists:
                    if not _quick_failed(store, sub, submitter, path, out, tally, e, started):
                        continue
                else:
                    observed.done(sub, e.code.name, mono() - started)
            except Exception as e:
                if not _quick_failed(store, sub, submitter, path, out, tally, e, started):
                    continue
            else:
                if observed.histogram is None:
                    counted.append(sub)
                else:
                    observed.done(sub, "OK", mono() - started)
            ok.append(sub)
            done.append(sub.reminder_id or "")
    finally:
        bounded.disarm()
        observed.done_all(counted, "OK")


# How stale the deadline of a quick submit may be: one `submit_deadline` is
# entered anew only once this much has passed since the last, so each submit
# gets its BUDGET_S less at most this (a sweep makes thousands a second).
REARM_S = 0.01


class _Rearmed:
    """`submit_deadline(BUDGET_S)` for a run of submits, entered anew every REARM_S."""

    __slots__ = ("_armed", "_bound")

    def __init__(self) -> None:
        self._bound = submit_deadline(BUDGET_S)
        self._armed: float | None = None

    def arm(self) -> None:
        """Before each submit: a deadline at most REARM_S older than BUDGET_S from now."""
        now = time.monotonic()
        armed = self._armed
        if armed is not None:
            if now - armed <= REARM_S:
                return
            self._bound.__exit__(None, None, None)
            self._armed = None
        self._bound.__enter__()
        self._armed = now

    def disarm(self) -> None:
        if self._armed is not None:
            self._armed = None
            self._bound.__exit__(None, None, None)


def _monotonic() -> Callable[[], float]:
    """The current clock's monotonic(): time.monotonic itself for the system clock."""
    c = clock.current()
    return time.monotonic if c is clock.SYSTEM else c.monotonic


def _quick_failed(
    store: ReminderStore,
    sub: Submission,
    submitter: Submitter,
    path: str,
    out: Submitted,
    tally: _observe.Tally,
    err: Exception,
    started: float,
) -> bool:
    """Retries a submit whose first attempt failed; False if it failed for good."""
    try:
        _submit_with_retries(submitter, sub, path, tally, _FirstAttempt(err, started))
    except Exception as e:
        out.note(_failed(store, sub, e, path))
        return False
    return True


async def submit_reminders_async(
    store: ReminderStore,
    subs: Sequence[Submission],
    submitter: Submitter,
    path: str = "sweep",
    out: Submitted | None = None,
) -> Submitted:
    """Like `submit_reminders`, for async code (parking runs in a thread)."""
    out = Submitted() if out is None else out
    ok: list[Submission] = []
    tally: _observe.Tally = {}
    quick = _observe.QuickSubmits(path, tally) if _tracing.tracer() is None else None
    mono = _monotonic()
    bounded = _Rearmed()
    counted: list[Submission] = []  # done at the first attempt: counted at the end
    try:
        for sub in subs:
            try:
                if quick is None:
                    await _submit_with_retries_async(submitter, sub, path, tally)
                else:
                    # As in `_submit_quick`: the first attempt without a span.
                    started = mono()
                    bounded.arm()
                    try:
                        await submitter.submit_async(sub)
                        if quick.histogram is None:
                            counted.append(sub)
                        else:
                            quick.done(sub, "OK", mono() - started)
                    except SubmitError as e:
                        if not e.already_exists:
                            first = _FirstAttempt(e, started)
                            await _submit_with_retries_async(submitter, sub, path, tally, first)
                        else:
                            quick.done(sub, e.code.name, mono() - started)
                    except Exception as e:
                        first = _FirstAttempt(e, started)
                        await _submit_with_retries_async(submitter, sub, path, tally, first)
            except Exception as e:
                out.note(await asyncio.to_thread(_failed, store, sub, e, path))
                continue
            ok.append(sub)
            out.done.append(sub.reminder_id or "")
    finally:
        bounded.disarm()
        if quick is not None:
            quick.done_all(counted, "OK")
        _observe.count_submits(tally, path)
        _observe.reminders_done(ok, path)
    return out


# Reminder IDs whose tasks `Dispatcher.delete_task` deleted in this process:
# a happy path that has not submitted them yet (a background queue's) drops
# them. Insertion-ordered, the oldest forgotten past MAX_CANCELLED.
_cancelled: dict[str, None] = {}
_cancelled_lock = threading.Lock()
MAX_CANCELLED = 10_000


def cancel(reminder_id: str) -> None:
    """Keeps this process's happy path from submitting reminder `reminder_id` from now on."""
    with _cancelled_lock:
        _cancelled[reminder_id] = None
        while len(_cancelled) > MAX_CANCELLED:
            del _cancelled[next(iter(_cancelled))]


def _drop_cancelled(fresh: list[PendingTask]) -> list[PendingTask]:
    with _cancelled_lock:
        kept = [p for p in fresh if p.reminder.id not in _cancelled]
        for p in fresh:
            _cancelled.pop(p.reminder.id, None)
    if len(kept) < len(fresh):
        _metrics.add("tq_reminders_cancelled", len(fresh) - len(kept))
    return kept


def count_created(pending: Sequence[PendingTask], now: dt.datetime) -> list[PendingTask]:
    """Counts committed reminders (tq_reminders_created); returns those still fresh at `now`.

    A stale one belongs to the sweeper (counted in tq_reminders_stale_at_commit).
    One whose task was deleted since its commit (`cancel`) is dropped.
    """
    fresh = []
    counts: dict[tuple[str, bool], int] = {}
    for p in pending:
        is_fresh = now < p.reminder.fresh_until
        if is_fresh:
            fresh.append(p)
        key = (p.submission.task_class, is_fresh)
        counts[key] = counts.get(key, 0) + 1
    for (task_class, is_fresh), n in counts.items():
        staleness = "fresh" if is_fresh else "stale"
        _metrics.add("tq_reminders_created", n, task_class=task_class, staleness=staleness)
    if len(fresh) < len(pending):
        _metrics.add("tq_reminders_stale_at_commit", len(pending) - len(fresh))
    if _cancelled:
        return _drop_cancelled(fresh)
    return fresh


def _fresh(pending: Sequence[PendingTask]) -> list[PendingTask]:
    return count_created(pending, clock.now())


def _post_commit_attributes(store: ReminderStore, pending: Sequence[PendingTask]) -> dict[str, Any]:
    return {"tq.store": store.name, "tq.reminders": len(pending)}


offload: Callable[[ReminderStore, Sequence[PendingTask]], bool] | None = None
"""Set by a running `tq.BackgroundSubmits`: takes a commit's happy path (True) or
declines it (False: run it inline)."""


def after_commit(store: ReminderStore, pending: Sequence[PendingTask]) -> None:
    """The happy path for a committed transaction (blocking). Never raises.

    With background submits running (`tq.BackgroundSubmits`) it only queues
    the reminders, unless their queue is full.
    """
    off = offload
    if off is not None and off(store, pending):
        return
    with _tracing.span("tq.post_commit", _post_commit_attributes(store, pending)):
        done: list[str] = []
        for p in _fresh(pending):
            try:
                _submit_with_retries(p.submitter, p.submission, "happy")
            except Exception as e:
                _failed(store, p.submission, e, "happy")
                continue
            _observe.reminder_done(p.submission, "happy")
            done.append(p.reminder.id)
        _delete(store, done)


async def after_commit_async(store: ReminderStore, pending: Sequence[PendingTask]) -> None:
    """The happy path for a committed transaction, from async code. Never raises."""
    off = offload
    if off is not None and off(store, pending):
        return
    with _tracing.span("tq.post_commit", _post_commit_attributes(store, pending)):
        fresh = _fresh(pending)

        async def one(p: PendingTask) -> str | None:
            try:
                await _submit_with_retries_async(p.submitter, p.submission, "happy")
            except Exception as e:
                await asyncio.to_thread(_failed, store, p.submission, e, "happy")
                return None
            _observe.reminder_done(p.submission, "happy")
            return p.reminder.id

        results = await asyncio.gather(*(one(p) for p in fresh))
        done = [r for r in results if r is not None]
        if done:
            await asyncio.to_thread(_delete, store, done)
