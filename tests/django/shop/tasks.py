"""django.tasks functions of the test project."""

from __future__ import annotations

import threading

from django.tasks import TaskContext, task

from tests.django.shop.models import Confirmation

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
