"""django.tasks functions of the test project."""

from __future__ import annotations

import os
import threading

from django.db import transaction
from django.tasks import TaskContext, task

from tests.django.shop.models import Confirmation
from tq.contrib.django import once

failures_left: dict[str, int] = {}  # key -> attempts that still fail
_lock = threading.Lock()


@task
def send_confirmation(
    order_id: int, database: str = "default", note: str = ""
) -> dict[str, object]:
    Confirmation.objects.using(database).create(order_id=order_id, note=note)
    return {"order": order_id, "sent": True}


@task(queue_name="emails")
async def send_async(order_id: int) -> int:
    return order_id * 2


@task
def flaky(key: str) -> str:
    with _lock:
        left = failures_left.get(key, 0)
        if left:
            failures_left[key] = left - 1
    if left:
        raise RuntimeError(f"{key}: failing on purpose ({left} left)")
    return key


@task(takes_context=True)
def attempt_of(context: TaskContext) -> int:
    return context.attempt


@task
@once()
def charge(order_id: int, database: str = "default") -> dict[str, int]:
    """Effectively once on the results database (the `database` the test configures)."""
    Confirmation.objects.using(database).create(order_id=order_id, note="charged")
    if os.environ.get("TQ_TEST_DIE_AFTER_COMMIT"):
        # The process dies once the transaction committed, before answering the push.
        transaction.on_commit(lambda: os._exit(9), using=database)
    return {"charged": order_id}
