"""The push endpoint as a uvicorn app in a process of its own (for memory checks).

    TQ_TEST_CERTS_URL=... python -m uvicorn tests.hardening._served_app:app

Authentication is on, with certificates from `TQ_TEST_CERTS_URL` (a
`tqtesting.oidc.LocalIssuer` in the test process); pushes are for
`app.test` and signed for `PUSHER`. `GET /handled` answers how many pushes
the `greet` handler ran.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import tq
import tq.asgi
from tests.testpb import payloads_pb2 as pb

HOST = "app.test"
PUSHER = "tq-push@p.iam.gserviceaccount.com"

_handled: list[str] = []

dispatcher = tq.Dispatcher(
    cloud_project="p", cloud_region="us-central1", default_target_host=HOST, push_as=PUSHER
)


@dispatcher.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
async def greet(payload: pb.Greet) -> None:
    _handled.append(payload.name)


async def handled(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(_handled)))


app = Starlette(
    routes=[
        Route("/handled", handled),
        Mount(
            "/internal/tasks",
            app=tq.asgi.app(dispatcher, certs_url=os.environ["TQ_TEST_CERTS_URL"]),
        ),
    ]
)
