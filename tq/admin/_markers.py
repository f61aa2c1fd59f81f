"""The done markers of effectively-once handlers, as an operator sees them.

`MarkerAdmin(stores)` counts live and expired markers and deletes expired
ones, in bounded batches, in each store that keeps markers: a SQL store
(`tq_done`, through `tq.txn.sql`) or a Spanner store (`TQDone`, through
`tq.txn.spanner`). Other stores (an in-memory one) keep none and are left
out. The store modules are looked up among the loaded ones: a store of a
kind exists only once its module is imported, so nothing optional is
imported here.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from tq import clock

DEFAULT_BATCH_SIZE = 1000


def _module_of(store: Any) -> ModuleType | None:
    """`tq.txn.sql` or `tq.txn.spanner` if `store` is one of theirs, else None."""
    for name, cls in (("tq.txn.sql", "SQLStore"), ("tq.txn.spanner", "SpannerStore")):
        module = sys.modules.get(name)
        if module is not None and isinstance(store, getattr(module, cls)):
            return module
    return None


class MarkerAdmin:
    """Counting and expiring the done markers of `stores` (the caller owns and closes them)."""

    def __init__(self, stores: Sequence[Any]) -> None:
        self.stores = [(s, m) for s in stores if (m := _module_of(s)) is not None]

    def counts(self, now: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Per store: markers still in force (`live`) and past their expiry (`expired`)."""
        at = now if now is not None else clock.now()
        out = []
        for store, module in self.stores:
            live, expired = module.count_markers(store, now=at)
            out.append({"store": store.name, "live": live, "expired": expired})
        return out

    def expire(
        self,
        *,
        now: dt.datetime | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batches: int | None = None,
    ) -> list[dict[str, Any]]:
        """Deletes expired markers from each store; per store, how many (`deleted`)."""
        at = now if now is not None else clock.now()
        out = []
        for store, module in self.stores:
            n = module.expire_markers(store, now=at, batch_size=batch_size, max_batches=max_batches)
            out.append({"store": store.name, "deleted": n})
        return out
