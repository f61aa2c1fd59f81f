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
        assert placed["status"] == 201
        assert mail.outbox == []  # queued, not run yet
        assert self.deliver() == 1
        assert self.deliver() == 0
        (sent,) = mail.outbox
        assert sent.subject == f"Order {placed['order']} confirmed"
        assert sent.to == ["ann@example.com"]
        assert Order.objects.get(id=placed["order"]).confirmed_at is not None
        result = send_confirmation.get_result(str(placed["confirmation"]))
        assert (result.status, result.return_value) == ("SUCCESSFUL", "ann@example.com")

    def test_a_rolled_back_order_sends_nothing(self) -> None:
        assert self.order(50)["status"] == 409
        assert self.deliver() == 0
        assert mail.outbox == []
        assert not Order.objects.exists()
