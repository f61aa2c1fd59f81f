"""Effectively-once handlers on Django's ORM: the done marker in the handler's atomic() block.

The failure that matters: the handler's transaction commits, then its
response is lost (tqtesting's lose_response) or its process dies (a
database-queue worker killed after the commit); the redelivery must answer
200 without repeating the effects.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import tq
import tqtesting
from tests.django.test_backend import confirmations, count
from tests.django.test_outbox import ROOT
from tqtesting import FakeClock


def test_a_protobuf_handler_runs_once_when_its_response_is_lost(
    configure: Callable[..., Any],
) -> None:
    from tests.django.shop import tq_app
    from tests.testpb import payloads_pb2 as pb

    state = configure()
    with tqtesting.testing_context(state.dispatcher, FakeClock()) as scheduler:
        tq_app.disp.add_task(tq.Task(payload=pb.Greet(name="abcd")))
        scheduler.run(tqtesting.lose_response("bill"), tqtesting.stop_when_drained())
    (rec,) = scheduler.tasks()
    assert [a.outcome for a in rec.history] == ["lost", "ok"]
    assert confirmations("default") == [(4, "billed")]  # the redelivery changed nothing
    assert count("default", "tq_done") == 1


def test_a_django_task_runs_once_and_keeps_its_result_when_its_response_is_lost(
    configure: Callable[..., Any], alias: str
) -> None:
    from tests.django.shop.tasks import charge

    state = configure(DATABASE=alias)
    with tqtesting.testing_context(state.dispatcher, FakeClock()) as scheduler:
        result = charge.enqueue(3, database=alias)
        scheduler.run(tqtesting.lose_response("django-task"), tqtesting.stop_when_drained())
    (rec,) = scheduler.tasks()
    assert rec.attempts == 2
    assert confirmations(alias) == [(3, "charged")]
    got = charge.get_result(result.id)
    assert (got.status, got.return_value) == ("SUCCESSFUL", {"charged": 3})
    assert count(alias, "tq_done") == 1


def test_a_worker_killed_after_the_commit_does_not_run_the_task_twice(
    configure: Callable[..., Any], alias: str
) -> None:
    from django.core.asgi import get_asgi_application

    from tests.django.shop.tasks import charge
    from tq.contrib.django import _databases
    from tq.dbqueue import Admin, Worker

    configure(DATABASE=alias, DELIVERY="database")
    result = charge.enqueue(5, database=alias)
    child = subprocess.run(
        [sys.executable, "-m", "django", "tq", "worker", "--until-idle", "--insecure-no-auth"],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.django.settings",
            "TQ_TEST_DIE_AFTER_COMMIT": "1",
            "TQ_DATABASE_URL": _databases.sqlalchemy_url(alias).render_as_string(False),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 9, child.stderr[-3000:]  # died after its commit, unanswered
    assert confirmations(alias) == [(5, "charged")]
    engine = _databases.engine_for(alias)
    (leased,) = Admin(engine).list_tasks(state="leased")
    assert leased.lease_expires is not None

    async def redeliver() -> int:
        async with Worker(engine, app=get_asgi_application()) as w:
            pushed = 0
            for _ in range(20):  # the lease expires, the task is retried after its backoff
                pushed += await w.run_once()
                clock.advance(1)
            return pushed

    clock = FakeClock(leased.lease_expires)
    with tq.clock.use_clock(clock):
        assert asyncio.run(redeliver()) == 1
    assert confirmations(alias) == [(5, "charged")]  # not twice
    got = charge.get_result(result.id)
    assert (got.status, got.return_value) == ("SUCCESSFUL", {"charged": 5})
    assert got.attempts == 1  # the redelivery found it done: it ran nothing


def test_mark_done_belongs_in_an_atomic_block_and_once_in_a_def(
    configure: Callable[..., Any],
) -> None:
    from tq.contrib.django import mark_done, once

    configure()
    with pytest.raises(tq.TransactionError, match="inside transaction"):
        mark_done("default", "q/t")
    with pytest.raises(tq.ConfigError, match="plain def"):

        @once()
        async def handler(payload: object) -> None:
            pass

    with pytest.raises(tq.ConfigError, match="shorter than"):
        once(retention=dt.timedelta(minutes=5))
