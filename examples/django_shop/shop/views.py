"""POST /orders saves an order and enqueues its confirmation in one transaction."""

from __future__ import annotations

import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from shop.models import Order
from shop.tasks import send_confirmation

MAX_QUANTITY = 10  # what the shop has in stock


@csrf_exempt  # an API for the example; a real shop keeps CSRF on for browsers
@require_POST
def orders(request: HttpRequest) -> JsonResponse:
    try:
        data = json.loads(request.body)
        email, item, quantity = str(data["email"]), str(data["item"]), int(data["quantity"])
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": "give email, item and quantity"}, status=400)
    if quantity < 1:
        return JsonResponse({"error": "quantity must be at least 1"}, status=400)
    with transaction.atomic():
        order = Order.objects.create(email=email, item=item, quantity=quantity)
        # Written in this transaction: delivered if and only if the order commits.
        result = send_confirmation.enqueue(order.id)
        if quantity > MAX_QUANTITY:
            # Rolling back drops the order and its confirmation task together.
            transaction.set_rollback(True)
            return JsonResponse({"error": "not that many in stock"}, status=409)
    return JsonResponse({"order": order.id, "confirmation": result.id}, status=201)


@require_GET
def order(request: HttpRequest, order_id: int) -> JsonResponse:
    o = Order.objects.filter(id=order_id).first()
    if o is None:
        return JsonResponse({"error": "no such order"}, status=404)
    return JsonResponse({"order": o.id, "item": o.item, "confirmed": o.confirmed_at is not None})
