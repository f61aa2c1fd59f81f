from __future__ import annotations

import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from tests.django.shop.models import Order
from tests.django.shop.tasks import send_confirmation


@csrf_exempt
def place_order(request: HttpRequest) -> JsonResponse:
    item = json.loads(request.body)["item"]
    with transaction.atomic():
        order = Order.objects.create(item=item)
        result = send_confirmation.enqueue(order.id)
    return JsonResponse({"order": order.id, "result": result.id}, status=201)
