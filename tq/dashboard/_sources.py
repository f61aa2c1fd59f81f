"""What the dashboard reads and acts on: a queue backend, outbox stores, a dispatcher."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tq.admin import OutboxAdmin, QueueAdmin

if TYPE_CHECKING:
    from tq._dispatcher import Dispatcher
    from tq.txn import ReminderStore


@dataclasses.dataclass
class Sources:
    """The parts behind the pages.

    `queues`: the task backend's admin (None: no queue pages). `stores`:
    outbox stores (None: those registered with `tq.txn` at each request).
    `dispatcher`: decodes payloads by class, lists cron schedules and, if
    it sweeps in this process, tells the sweeper's last run.
    """

    queues: QueueAdmin | None
    stores: Sequence[ReminderStore] | None
    dispatcher: Dispatcher | None
    label: str = ""

    def outbox(self) -> OutboxAdmin:
        import tq.txn

        return OutboxAdmin(list(self.stores) if self.stores is not None else tq.txn.stores())

    def last_sweep(self) -> tuple[dt.datetime | None, Any]:
        """When this process's sweeper last finished and what it did (None: not known here)."""
        sweeper = getattr(self.dispatcher, "sweeper", None)
        return getattr(sweeper, "last_finished", None), getattr(sweeper, "last_stats", None)
