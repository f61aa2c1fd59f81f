"""The shop through Django's test client and tq's database queue (`manage.py test shop`)."""

from __future__ import annotations

from django.core import mail

from shop.models import Order
from shop.tasks import send_confirmation
from tq.contrib.django.testing import DatabaseQueueTestCase


class OrderTests(DatabaseQueueTestCase):
    def order(self, quantity: int) -> dict[str, object]:
        r = self.client.post(
            "/orders",
            {"email": "ann@example.com", "item": "tea", "quantity": quantity},
            content_type="application/json",
        )
        return {"status": r.status_code, **r.json()}

    def test_an_order_is_confirmed_once_by_its_task(self) -> None:
        placed = self.order(2)
        self.assertEqual(placed["status"], 201)
        self.assertEqual(mail.outbox, [])  # queued, not run yet
        self.assertEqual(self.deliver(), 1)
        self.assertEqual(self.deliver(), 0)
        (sent,) = mail.outbox
        self.assertEqual((sent.subject, sent.to), (f"Order {placed['order']} confirmed", ["ann@example.com"]))
        self.assertIsNotNone(Order.objects.get(id=placed["order"]).confirmed_at)
        result = send_confirmation.get_result(str(placed["confirmation"]))
        self.assertEqual((result.status, result.return_value), ("SUCCESSFUL", "ann@example.com"))

    def test_a_rolled_back_order_sends_nothing(self) -> None:
        self.assertEqual(self.order(50)["status"], 409)
        self.assertEqual(self.deliver(), 0)
        self.assertEqual(mail.outbox, [])
        self.assertFalse(Order.objects.exists())
