"""Submitting the tasks of one `add_task` call in one call of the submitter.

A submitter with `submit_batch` (and `submit_batch_async`) takes several
tasks at once and answers for each: its name (or None), or the SubmitError
that refused it (see `tq.Submitter`). The database queue writes such a batch
in one statement. Metrics are those of one submit per task, each taking the
whole call's time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tq import _observe, clock
from tq._errors import SubmitError
from tq._handles import AddedTask, added_task
from tq._submitter import Submission, Submitter

Plan = list[tuple[Submission, Submitter, "str | None"]]
"""What `add_task` submits now: each task, its submitter, the name add_task gave it."""


def submit(batch: Callable[[list[Submission]], list[Any]], plan: Plan) -> list[Any]:
    """Submits a plan's tasks in one call of `batch` (a `submit_batch`), counted."""
    started = clock.current().monotonic()
    try:
        results = batch([sub for sub, _, _ in plan])
    except SubmitError as e:
        _count(plan, [e] * len(plan), started)
        raise
    _count(plan, results, started)
    return results


async def submit_async(
    batch: Callable[[list[Submission]], Awaitable[list[Any]]], plan: Plan
) -> list[Any]:
    """`submit` for a `submit_batch_async`."""
    started = clock.current().monotonic()
    try:
        results = await batch([sub for sub, _, _ in plan])
    except SubmitError as e:
        _count(plan, [e] * len(plan), started)
        raise
    _count(plan, results, started)
    return results


def _count(plan: Plan, results: Sequence[Any], started: float) -> None:
    """tq_submits and tq_submit_duration for a batch: each task took the whole call."""
    elapsed = clock.current().monotonic() - started
    tally: _observe.Tally = {}
    quick = _observe.QuickSubmits("direct", tally)
    for (sub, _, _), r in zip(plan, results, strict=True):
        quick.done(sub, r.code.name if isinstance(r, SubmitError) else "OK", elapsed)
    _observe.count_submits(tally, "direct")


def added(plan: Plan, results: Sequence[Any]) -> list[AddedTask]:
    """The handles of a batch; raises its first failure other than ALREADY_EXISTS."""
    out: list[AddedTask] = []
    for (sub, _, name), r in zip(plan, results, strict=True):
        if isinstance(r, SubmitError):
            if not r.already_exists:
                raise r
            out.append(added_task(name, sub.task_class, None, True))
        else:
            out.append(added_task(r or name, sub.task_class, None, False))
    return out
