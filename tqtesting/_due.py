"""The pending tasks of a Scheduler, in the order they fall due."""

from __future__ import annotations

import datetime as dt
import heapq
from typing import Any

from tq._task import PRIORITY_HEADER
from tqtesting._delivery import Delivery
from tqtesting._records import TaskRecord

# A heap entry: when a task is due, its submission number (the tie-break
# that keeps tasks due together in submission order), the task, its pushes.
Due = tuple[dt.datetime, int, TaskRecord, Delivery]


class DueTasks:
    """Pending tasks by ETA, where a task's priority gives it a head start.

    Not thread-safe: the Scheduler holds its lock around every call.
    """

    def __init__(self, priority_step: dt.timedelta) -> None:
        self._heap: list[Due] = []
        self._prioritized = 0  # entries with a priority (0: take the heap's head)
        self._priority_step = priority_step

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, entry: Due) -> None:
        """Adds a pending task."""
        heapq.heappush(self._heap, entry)
        if entry[2].priority:
            self._prioritized += 1

    def head(self) -> TaskRecord | None:
        """The task of the earliest ETA, or None if none is pending."""
        return self._heap[0][2] if self._heap else None

    def next_due(self, now: dt.datetime) -> int | None:
        """The index of the task to run next, or None if none is due.

        The heap's head (earliest ETA) unless due tasks have priorities: then
        the least rank, ETA less priority x priority_step, as the database
        queue leases (a bounded head start).
        """
        due = self._heap
        if not due or due[0][0] > now:
            return None
        if not self._prioritized:
            return 0
        step = self._priority_step
        ranks = [(e[0] - e[2].priority * step, e[1], i) for i, e in enumerate(due) if e[0] <= now]
        return min(ranks)[2]

    def record_at(self, i: int) -> TaskRecord:
        return self._heap[i][2]

    def take(self, i: int) -> Delivery:
        """Removes the entry at index `i` (from `next_due`); its pushes."""
        due = self._heap
        if i == 0:
            _, _, rec, push = heapq.heappop(due)
        else:
            _, _, rec, push = due[i]
            due[i] = due[-1]
            due.pop()
            heapq.heapify(due)
        if rec.priority:
            self._prioritized -= 1
        return push

    def remove(self, rec: TaskRecord) -> None:
        """Removes a pending task (deleted before it ran)."""
        self.take(next(i for i, entry in enumerate(self._heap) if entry[2] is rec))


def priority_of(task: Any) -> int:
    """`tq.Task.priority` of a request (its X-Tq-Priority header), else 0."""
    kind = task.WhichOneof("message_type")
    if kind is None:
        return 0
    raw = getattr(task, kind).headers.get(PRIORITY_HEADER)
    try:
        return int(raw) if raw else 0
    except ValueError:
        return 0
