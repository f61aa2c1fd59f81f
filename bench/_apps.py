"""The ASGI apps bench/push.py serves under uvicorn (each in its own server process).

tq_app      tq.asgi.app(...) with an `async def` no-op handler, no auth
tq_auth_app the same with OIDC auth on (a LocalIssuer; the token is
            written to $TQ_BENCH_TOKEN_FILE for the load generator)
bare_app    a bare Starlette route that reads the body, parses the JSON
            and answers 200: the least a JSON push endpoint can do
"""

from __future__ import annotations

import json
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

import tq
import tq.asgi
from tests.testpb import payloads_pb2 as pb

AUDIENCE = "https://app.example.com"
PUSH_AS = "tq@bench.iam.gserviceaccount.com"


def _dispatcher() -> tq.Dispatcher:
    disp = tq.Dispatcher(
        cloud_project="bench", cloud_region="us-central1",
        default_target_host="app.example.com", push_as=PUSH_AS, push_audience=AUDIENCE,
    )  # fmt: skip

    @disp.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    async def greet(payload: pb.Greet) -> None:
        pass

    return disp


def _tq_app(auth: Any) -> Starlette:
    # Its routes take the full path (the class ID follows the routing prefix).
    return tq.asgi.app(_dispatcher(), auth=auth)


async def _bare(request: Request) -> Response:
    doc = json.loads(await request.body())
    if not isinstance(doc, dict):
        return PlainTextResponse("bad\n", status_code=400)
    return PlainTextResponse("ok\n")


def tq_app() -> Starlette:
    return _tq_app(tq.asgi.INSECURE_NO_AUTH)


def tq_mounted_app() -> Starlette:
    inner = tq.asgi.app(_dispatcher(), auth=tq.asgi.INSECURE_NO_AUTH)
    return Starlette(routes=[Mount("/internal/tasks", inner)])


def tq_auth_app() -> Starlette:
    from tqtesting.oidc import LocalIssuer

    issuer = LocalIssuer().__enter__()  # lives as long as the server process
    token = issuer.mint(email=PUSH_AS, audience=AUDIENCE)
    with open(os.environ["TQ_BENCH_TOKEN_FILE"], "w") as f:
        f.write(token)
    return _tq_app(tq.asgi.OIDCVerifier(issuer.certs_url))


def bare_app() -> Starlette:
    return Starlette(routes=[Route("/internal/tasks/t/{path:path}", _bare, methods=["POST"])])
