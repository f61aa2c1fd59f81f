"""A Django process that commits an order with a task, then dies hard.

Usage (with the environment of tests/django/conftest.py):
    python -m tests.django.child_commit ALIAS ORDER_ID

Enqueues send_confirmation(ORDER_ID) inside transaction.atomic() on ALIAS,
to a submitter that kills the process (exit 17) when the happy path calls
it after the commit: the reminder is committed and never deleted. Exits 3
if the process survives.
"""

from __future__ import annotations

import os
import sys

import django


class DyingSubmitter:
    def submit(self, submission: object) -> None:
        os._exit(17)

    async def submit_async(self, submission: object) -> None:
        os._exit(17)


def main() -> None:
    alias, order_id = sys.argv[1], int(sys.argv[2])
    django.setup()
    from django.db import transaction

    import tq
    from tests.django.shop.models import Order
    from tests.django.shop.tasks import send_confirmation

    with tq.use_submitter(DyingSubmitter()), transaction.atomic(using=alias):
        Order.objects.using(alias).create(id=order_id, item="tea")
        send_confirmation.enqueue(order_id, database=alias)
    sys.exit(3)


if __name__ == "__main__":
    main()
