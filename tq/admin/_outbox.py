"""The outbox as an operator sees it: reminders and parked reminders in any store.

`OutboxAdmin(stores)` reads and acts on the stores it is given (SQLite,
PostgreSQL or Spanner, through the `tq.txn.ReminderStore` protocol):
counts, reminder and parked lists (keyset pages by reminder ID), one
reminder with its request, and the two operator actions on parked
reminders: replay (unpark, and optionally submit at once) and drop.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

from tq import clock
from tq.txn import ReminderStore
from tq.txn._keyspace import id_to_int, int_to_id, key_bound

PAGE = 500  # reminders read from a store per call


def describe_reminder(store: ReminderStore, r: Any, *, full: bool = False) -> dict[str, Any]:
    """What an operator wants to know of a reminder: class, queue or topic, URL, why parked.

    With `full`, also the task's name, method, headers, body and ETA (of a
    task for a queue). A payload this tq cannot read is shown as such,
    never hidden.
    """
    row: dict[str, Any] = {"store": store.name, "id": r.id, "fresh_until": r.fresh_until}
    try:
        sub = r.submission()
        req: Any = sub.request
        if sub.topic:  # a message for a Pub/Sub topic
            row.update(task_class=sub.task_class, queue="", topic=sub.topic.rsplit("/", 1)[-1],
                       created=sub.created, url="")  # fmt: skip
            if full:
                row.update(task_name="", method="PUBLISH", headers=dict(req.attributes),
                           body=bytes(req.data), eta=None)  # fmt: skip
            return _parked_fields(row, r)
        task = req.task
        http = task.http_request if task.http_request.url else task.app_engine_http_request
        row.update(
            task_class=sub.task_class,
            queue=str(req.parent).rsplit("/", 1)[-1],
            topic="",
            created=sub.created,
            url=str(task.http_request.url or task.app_engine_http_request.relative_uri),
        )
        if full:
            eta = task.schedule_time.ToDatetime(dt.UTC) if task.HasField("schedule_time") else None
            method = http.DESCRIPTOR.fields_by_name["http_method"].enum_type
            row.update(
                task_name=task.name, method=method.values_by_number[http.http_method].name,
                headers=dict(http.headers), body=bytes(http.body), eta=eta,
            )  # fmt: skip
    except Exception as e:  # a payload this tq cannot read: show it, never hide the row
        row["task_class"] = f"<undecodable: {type(e).__name__}>"
    return _parked_fields(row, r)


def _parked_fields(row: dict[str, Any], r: Any) -> dict[str, Any]:
    from tq._pb import reminder_pb2

    if r.extra:
        extra = reminder_pb2.ReminderExtra.FromString(r.extra)
        if extra.parked_reason:
            row.update(
                parked_code=extra.parked_code,
                parked_reason=extra.parked_reason,
                parked_at=extra.parked_at.ToDatetime(dt.UTC),
            )
    return row


@dataclasses.dataclass(frozen=True, slots=True)
class Chosen:
    """A parked reminder picked for an action, with its store."""

    store: ReminderStore
    reminder: Any


class OutboxAdmin:
    """Operations on the reminders of `stores` (the caller owns and closes them)."""

    def __init__(self, stores: Sequence[ReminderStore]) -> None:
        self.stores = list(stores)

    def store(self, name: str) -> ReminderStore | None:
        return next((s for s in self.stores if s.name == name), None)

    def counts(self) -> list[dict[str, Any]]:
        """Per store: reminders waiting to be submitted (`pending`) and `parked`."""
        out = []
        for s in self.stores:
            pending, parked = s.count_reminders()
            out.append({"store": s.name, "pending": pending, "parked": parked})
        return out

    # Reminders.

    def keys(self, store: ReminderStore, limit: int, after: str = "") -> Iterator[Any]:
        """Up to `limit` reminder keys (ID, fresh_until) of `store` with ID > `after`, by ID.

        A store may list parked reminders among them (the keys do not say which).
        """
        low = key_bound(id_to_int(after) + 1) if after else key_bound(0)
        high, left = key_bound(1 << 128), limit
        while left > 0:
            want = min(PAGE, left)
            page = store.fetch_reminder_keys(low, high, want)
            yield from page
            if len(page) < want:
                return
            left -= len(page)
            low = key_bound(id_to_int(page[-1].id) + 1)

    def list_reminders(
        self, limit: int, *, stale: bool = False, store: str | None = None, after: str = ""
    ) -> list[dict[str, Any]]:
        """Reminders not parked, by store then ID (`stale`: only those past fresh_until)."""
        now = clock.now()
        rows: list[dict[str, Any]] = []
        for s in self.stores:
            if store is not None and s.name != store:
                continue
            keys = [k for k in self.keys(s, limit, after) if not stale or k.fresh_until <= now]
            for i in range(0, len(keys), PAGE):
                batch = s.fetch_reminders([k.id for k in keys[i : i + PAGE]])
                rows += [
                    describe_reminder(s, r)
                    for r in sorted(batch, key=lambda r: r.id)
                    if not r.parked
                ]
        return rows

    def oldest_staleness(self, scan_limit: int = 20_000) -> tuple[dt.timedelta | None, bool]:
        """How long the stalest reminder is past its fresh_until, and whether all were seen.

        Reads at most `scan_limit` keys per store (the keys carry
        fresh_until; the order is by random ID, so a partial read samples).
        None: no reminder is stale.
        """
        now, worst, complete = clock.now(), None, True
        for s in self.stores:
            seen = 0
            for k in self.keys(s, scan_limit):
                seen += 1
                late = now - k.fresh_until
                if late > dt.timedelta(0) and (worst is None or late > worst):
                    worst = late
            complete = complete and seen < scan_limit
        return worst, complete

    def get_reminder(self, store: str, reminder_id: str) -> dict[str, Any] | None:
        """One reminder with its request, or None."""
        s = self.store(store)
        if s is None:
            return None
        found = s.fetch_reminders([reminder_id]) or self._parked_by_id(s, reminder_id)
        return describe_reminder(s, found[0], full=True) if found else None

    def _parked_by_id(self, store: ReminderStore, reminder_id: str) -> list[Any]:
        """The parked reminder `reminder_id`, if parked (a store may keep them apart: Spanner)."""
        try:
            key = id_to_int(reminder_id)
        except ValueError:
            return []
        after = int_to_id(key - 1) if key > 0 else ""
        return [r for r in store.list_parked(1, after) if r.id == reminder_id]

    # Parked reminders.

    def parked(self, store: ReminderStore, limit: int, after: str = "") -> list[Any]:
        """Up to `limit` parked reminders of `store` with ID > `after`, by ID."""
        out: list[Any] = []
        while len(out) < limit:
            want = min(PAGE, limit - len(out))
            page = store.list_parked(want, after)
            out += page
            if len(page) < want:
                break
            after = page[-1].id
        return out

    def list_parked(
        self, limit: int, *, store: str | None = None, after: str = ""
    ) -> list[dict[str, Any]]:
        """Parked reminders with why they were parked, by store then ID."""
        return [
            describe_reminder(s, r)
            for s in self.stores
            if store is None or s.name == store
            for r in self.parked(s, limit, after)
        ]

    def choose_parked(
        self, ids: Sequence[str] | None, *, store: str | None = None
    ) -> tuple[list[Chosen], list[str]]:
        """The parked reminders with these IDs (None: all), and the IDs not found parked."""
        chosen: list[Chosen] = []
        for s in self.stores:
            if store is not None and s.name != store:
                continue
            if ids is None:
                chosen += [Chosen(s, r) for r in self.parked(s, 1 << 30)]
            else:
                chosen += [
                    Chosen(s, r) for i in dict.fromkeys(ids) for r in self._parked_by_id(s, i)
                ]
        missing = [] if ids is None else sorted(set(ids) - {c.reminder.id for c in chosen})
        return chosen, missing

    def replay(self, chosen: Sequence[Chosen], submitter: Any = None) -> int:
        """Unparks them (the next sweep submits them), or submits at once through `submitter`.

        Returns how many could not be replayed (gone meanwhile, or parked
        again by a failed submit).
        """
        from tq import _outbox

        failed = 0
        for c in chosen:
            if not c.store.unpark_reminder(c.reminder.id, clock.now()):
                failed += 1
            elif submitter is not None:
                outcome = _outbox.submit_reminder(
                    c.store, c.reminder.submission(), submitter, path="replay"
                )
                failed += outcome is not _outbox.Outcome.SUBMITTED
        return failed

    def drop(self, chosen: Sequence[Chosen]) -> int:
        """Deletes them: their tasks are given up for good. Returns how many."""
        by_store: dict[str, tuple[ReminderStore, list[str]]] = {}
        for c in chosen:
            by_store.setdefault(c.store.name, (c.store, []))[1].append(c.reminder.id)
        for s, ids in by_store.values():
            s.delete_reminders(ids)
        return len(chosen)
