"""The shop's background work: django.tasks functions, run by tq."""

from __future__ import annotations

from django.core.mail import send_mail
from django.tasks import task
from django.utils import timezone

from shop.models import Order


@task
def send_confirmation(order_id: int) -> str:
    """Emails the order's confirmation and marks it confirmed; returns the address."""
    order = Order.objects.get(id=order_id)
    send_mail(
        subject=f"Order {order.id} confirmed",
        message=f"{order.quantity} x {order.item} are on their way.",
        from_email=None,
        recipient_list=[order.email],
    )
    Order.objects.filter(id=order.id).update(confirmed_at=timezone.now())
    return order.email
