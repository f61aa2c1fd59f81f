"""The orders service's HTTP API (Starlette), with tq's push endpoint mounted."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

import tq
import tq.asgi
import tq.dashboard
from examples.orders.service import OrdersService


def create_app(
    service: OrdersService,
    *,
    push_auth: Any = None,
    authorized_launchers: Collection[str] = (),
    dashboard: Any = None,
) -> Starlette:
    """The ASGI app of `service`.

    Routes: `POST /orders` {"email", "item", "quantity"} -> 201 {"id"};
    `GET /orders/{id}`; `POST /countdown` {"n", "chain"} -> 202;
    `GET /countdown/{chain}`; `GET /healthz`; tq's push endpoint under
    `/internal/tasks` (`push_auth` and `authorized_launchers`, who may call
    its sweep and cron endpoints, go to `tq.asgi.app`: None checks OIDC
    tokens), whose `/internal/tasks/c/cron/daily-report` Cloud Scheduler or
    App Engine cron calls. With `dashboard` (a `tq.dashboard.Access`, or
    `INSECURE_NO_AUTH`), the operator's dashboard is served under `/tq`
    over the app's database (its outbox and database queue). Start-up
    creates the tables if missing.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        service.create_schema()
        yield

    # Sync endpoints: Starlette runs them in a thread pool (SQLAlchemy is sync here).

    def place_order(request: Request, body: dict[str, Any]) -> Response:
        try:
            email, item = str(body["email"]), str(body["item"])
            quantity = int(body.get("quantity", 1))
        except (KeyError, TypeError, ValueError):
            return JSONResponse({"error": "need email, item and quantity"}, status_code=400)
        if "@" not in email or quantity < 1:
            return JSONResponse({"error": "invalid email or quantity"}, status_code=400)
        order_id = service.place_order(email, item, quantity)
        return JSONResponse({"id": order_id}, status_code=201)

    async def orders(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "body must be JSON"}, status_code=400)
        return await _in_thread(place_order, request, body)

    def get_order(request: Request) -> Response:
        order = service.get_order(int(request.path_params["order_id"]))
        if order is None:
            return JSONResponse({"error": "no such order"}, status_code=404)
        return JSONResponse(
            {"id": order.id, "email": order.email, "item": order.item,
             "quantity": order.quantity, "confirmed": order.confirmed_at is not None}
        )  # fmt: skip

    async def countdown(request: Request) -> Response:
        body = await request.json()
        n, chain = int(body.get("n", 10)), str(body.get("chain", "demo"))
        await _in_thread(service.start_countdown, n, chain)
        return JSONResponse({"chain": chain, "n": n}, status_code=202)

    def countdown_steps(request: Request) -> Response:
        chain = request.path_params["chain"]
        return JSONResponse({"chain": chain, "steps": service.countdown_steps(chain)})

    def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    push = tq.asgi.app(
        service.dispatcher, auth=push_auth, authorized_launchers=authorized_launchers
    )
    extra = []
    if dashboard is not None:
        board = tq.dashboard.app(service.dispatcher, engine=service.engine,
                                 stores=[service.store], access=dashboard)  # fmt: skip
        extra.append(Mount("/tq", app=board))
    return Starlette(
        routes=[
            *extra,
            Route("/healthz", healthz),
            Route("/orders", orders, methods=["POST"]),
            Route("/orders/{order_id:int}", get_order),
            Route("/countdown", countdown, methods=["POST"]),
            Route("/countdown/{chain}", countdown_steps),
            Mount("/internal/tasks", app=push),
        ],
        lifespan=lifespan,
    )


async def _in_thread(fn: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)
