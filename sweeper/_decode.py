"""Decoding the reminders a sweep read into Submissions; parking the unreadable ones."""

from __future__ import annotations

import logging

from sweeper._options import SweepStats
from tq import _metrics, clock
from tq._reminder import Reminder, parked_extra
from tq._submitter import Submission
from tq.txn import ReminderStore

log = logging.getLogger("tq.sweeper")


def _unreadable(store: ReminderStore, r: Reminder, err: Exception, stats: SweepStats) -> None:
    """Parks a reminder whose payload cannot be decoded."""
    log.error(
        "tq sweep: reminder %s of store %s is unreadable, parking it: %s", r.id, store.name, err
    )
    try:
        store.park_reminder(
            r.id, parked_extra("DATA_LOSS", f"unreadable reminder: {err}", clock.now())
        )
        stats.add(parked=1)
        _metrics.add("tq_reminders_parked", task_class="?", code="DATA_LOSS")
    except Exception:
        log.exception("tq sweep: could not park unreadable reminder %s", r.id)
        stats.add(kept=1)


def decode(store: ReminderStore, reminders: list[Reminder], stats: SweepStats) -> list[Submission]:
    """The Submissions of the stale, unparked `reminders`; unreadable ones are parked."""
    subs, unreadable = decode_apart(reminders)
    park_unreadable(store, unreadable, stats)
    return subs


def park_unreadable(
    store: ReminderStore, unreadable: list[tuple[Reminder, Exception]], stats: SweepStats
) -> None:
    for r, err in unreadable:
        _unreadable(store, r, err, stats)


def decode_apart(
    reminders: list[Reminder],
) -> tuple[list[Submission], list[tuple[Reminder, Exception]]]:
    """The Submissions of the stale, unparked `reminders`, and the unreadable ones."""
    now = clock.now()
    subs = []
    unreadable: list[tuple[Reminder, Exception]] = []
    staleness = _metrics.instrument("tq_reminders_staleness")
    attrs: dict[str, dict[str, str]] = {}  # per task class, built once per batch
    for r in reminders:
        fresh_until = r.fresh_until
        if fresh_until > now or (r.extra and r.parked):
            continue
        try:
            sub = r.submission()
        except Exception as e:
            unreadable.append((r, e))
            continue
        subs.append(sub)
        if staleness is not None:
            a = attrs.get(sub.task_class)
            if a is None:
                a = attrs[sub.task_class] = {"task_class": sub.task_class}
            staleness.record((now - fresh_until).total_seconds(), a)
    return subs, unreadable
