"""The FastAPI and Flask examples: a transactional task from a route, delivered to the app."""

from __future__ import annotations

import asyncio
import importlib
import pathlib
import threading
import time
import wsgiref.simple_server
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest

import tq
from tests._services.uvicorn_server import ServedApp
from tqtesting.oidc import LocalIssuer

TIMEOUT_S = 60.0


def fresh_import(name: str) -> ModuleType:
    """The example module imported anew (each reads its environment at import)."""
    import sys

    sys.modules.pop(name, None)
    return importlib.import_module(name)


def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def fastapi_example(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("APP_DATABASE", str(tmp_path / "fastapi.db"))
    return fresh_import("examples.fastapi_app.app")


def test_fastapi_route_adds_the_task_in_its_transaction_and_the_lifespans_worker_runs_it(
    fastapi_example: ModuleType,
) -> None:
    # Under uvicorn, which runs the lifespan: tq's tables and worker.
    with ServedApp(fastapi_example.app) as served, httpx.Client(base_url=served.url) as client:
        r = client.post("/signup", json={"email": "ann@example.com"})
        assert r.status_code == 201, r.text
        user = r.json()["id"]
        dup = client.post("/signup", json={"email": "ann@example.com"})
        assert dup.status_code == 409  # rolled back: no second user, no second task
        wait_until(lambda: client.get(f"/users/{user}").json()["welcomed"], "the welcome task")
    admin = tq.dbqueue.Admin(fastapi_example.queue_engine)
    assert [t.task_class for t in admin.list_tasks()] == ["welcome"]
    assert all(s.name != "fastapi-app" for s in tq.txn.stores())  # the lifespan closed it


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as iss:
        yield iss


@pytest.fixture
def flask_example(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, issuer: LocalIssuer
) -> Iterator[tuple[ModuleType, str]]:
    """The Flask example served by a real WSGI server (wsgiref) on loopback."""
    monkeypatch.setenv("APP_DATABASE", str(tmp_path / "flask.db"))
    monkeypatch.setenv("TQ_CERTS_URL", issuer.certs_url)
    mod = fresh_import("examples.flask_app.app")

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = wsgiref.simple_server.make_server("127.0.0.1", 0, mod.app, handler_class=Quiet)
    host = f"127.0.0.1:{server.server_address[1]}"
    mod.disp.configure(default_target_host=host)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield mod, host
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        mod.push_endpoint.close()
        mod.engine.dispose()


def test_flask_serves_the_push_endpoint_over_wsgi_with_oidc_and_adds_tasks_in_its_transaction(
    flask_example: tuple[ModuleType, str], issuer: LocalIssuer
) -> None:
    mod, _ = flask_example
    client = mod.app.test_client()
    r = client.post("/signup", json={"email": "bob@example.com"})
    assert r.status_code == 201
    user = r.get_json()["id"]
    assert client.post("/signup", json={"email": "bob@example.com"}).status_code == 409

    def sign(email: str, audience: str) -> str:
        return issuer.mint(email=email, audience=audience)

    async def deliver() -> int:
        # Over HTTP to the task's URL (the served app), with a token for push_as.
        async with tq.dbqueue.Worker(mod.engine, signer=sign) as w:
            return await w.run_until_idle()

    assert asyncio.run(deliver()) == 1
    assert client.get(f"/users/{user}").get_json()["welcomed"] is True
    (task,) = tq.dbqueue.Admin(mod.engine).list_tasks()
    assert (task.task_class, task.state, task.last_status) == ("welcome", "done", 200)


def test_flask_push_without_a_valid_token_is_refused(
    flask_example: tuple[ModuleType, str], issuer: LocalIssuer
) -> None:
    mod, _ = flask_example
    client = mod.app.test_client()
    user = client.post("/signup", json={"email": "eve@example.com"}).get_json()["id"]

    async def deliver() -> int:
        async with tq.dbqueue.Worker(mod.engine) as w:  # no signer: no Authorization
            return await w.run_once()

    assert asyncio.run(deliver()) == 1
    (task,) = tq.dbqueue.Admin(mod.engine).list_tasks()
    assert task.last_status == 403
    assert client.get(f"/users/{user}").get_json()["welcomed"] is False
