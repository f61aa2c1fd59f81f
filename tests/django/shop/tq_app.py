"""The test project's tq dispatcher, with one protobuf task class of its own."""

from __future__ import annotations

import tq
from tests.testpb import payloads_pb2 as pb
from tq.contrib.django import once

disp = tq.Dispatcher()
shipped: list[int] = []


@disp.task_class(id="ship", prototype=pb.Count, kind=tq.Kind.FOLLOWS_CONTEXT, queue="default")
def ship(payload: pb.Count) -> None:
    from tests.django.shop.models import Confirmation

    shipped.append(payload.n)
    Confirmation.objects.using(payload.tag or "default").create(order_id=payload.n, note="shipped")


@disp.task_class(id="bill", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue="default")
@once()
def bill(payload: pb.Greet) -> None:
    from tests.django.shop.models import Confirmation

    Confirmation.objects.create(order_id=len(payload.name), note="billed")
