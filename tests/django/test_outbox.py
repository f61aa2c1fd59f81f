"""The outbox in Django's atomic() blocks: crashes, several databases, untold transactions."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import grpc
import pytest

import tq
import tqtesting
from tests.django.test_backend import confirmations, count
from tqtesting import FakeClock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_process_killed_after_commit_leaves_a_reminder_the_sweeper_submits(
    configure: Callable[..., Any], alias: str
) -> None:
    from tests.django.shop.models import Order
    from tests.django.shop.tasks import send_confirmation

    state = configure()
    child = subprocess.run(
        [sys.executable, "-m", "tests.django.child_commit", alias, "41"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 17, child.stderr[-3000:]
    assert Order.objects.using(alias).filter(id=41).exists()  # the commit happened
    assert count(alias, "tq_reminders") == 1  # and its reminder with it
    clock = FakeClock(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))  # past fresh_until
    with tqtesting.testing_context(state.dispatcher, clock) as scheduler:
        state.dispatcher.sweep()
        assert count(alias, "tq_reminders") == 0
        scheduler.run(tqtesting.stop_when_drained())
    assert confirmations(alias) == [(41, "")]
    (rec,) = scheduler.tasks()
    # The result row of a task enqueued on "pg" follows that commit on "default"
    # in an on_commit hook the crash skipped: the first attempt wrote it.
    payload = rec.payload
    got = send_confirmation.get_result(payload.result_id)  # type: ignore[union-attr]
    assert (got.status, got.attempts) == ("SUCCESSFUL", 1)


def test_a_fresh_reminder_is_left_to_the_happy_path(configure: Callable[..., Any]) -> None:
    from django.db import transaction

    from tests.django.shop.tasks import send_confirmation

    state = configure()
    clock = FakeClock(dt.datetime.now(dt.UTC))
    with tqtesting.testing_context(state.dispatcher, clock) as scheduler:
        with tq.use_submitter(_Holding()), transaction.atomic():
            send_confirmation.enqueue(1)
        state.dispatcher.sweep()  # the reminder is still fresh: not the sweeper's
        assert len(scheduler.tasks()) == 0
        clock.advance(dt.timedelta(minutes=2))
        state.dispatcher.sweep()
        assert len(scheduler.tasks()) == 1


class _Holding:
    """A submitter that fails for now: the reminder stays for the sweeper."""

    def submit(self, submission: object) -> None:
        raise tq.SubmitError(grpc.StatusCode.UNAVAILABLE, "down for now")

    async def submit_async(self, submission: object) -> None:
        self.submit(submission)


def test_atomic_blocks_on_two_databases_need_to_be_told_which(
    configure: Callable[..., Any],
) -> None:
    from django.db import transaction

    from tests.django.shop.tasks import send_confirmation
    from tq.contrib.django import on_database

    state = configure()
    with tqtesting.testing_context(state.dispatcher, FakeClock()) as scheduler:
        with transaction.atomic(using="default"), transaction.atomic(using="pg"):
            with pytest.raises(tq.TransactionError, match="on_database"):
                send_confirmation.enqueue(1)
            with on_database("pg"):
                send_confirmation.enqueue(2, database="pg")
            assert count("pg", "tq_reminders") == 1
            assert count("default", "tq_reminders") == 0
        scheduler.run(tqtesting.stop_when_drained())
    assert confirmations("pg") == [(2, "")]


def test_a_transaction_outside_atomic_is_refused_not_escaped(configure: Callable[..., Any]) -> None:
    from django.db import transaction

    from tests.django.shop.tasks import send_confirmation

    state = configure()
    with tqtesting.testing_context(state.dispatcher, FakeClock()) as scheduler:
        transaction.set_autocommit(False, using="pg")
        try:
            with pytest.raises(tq.TransactionError, match=r"outside transaction\.atomic"):
                send_confirmation.enqueue(1)
        finally:
            transaction.rollback(using="pg")
            transaction.set_autocommit(True, using="pg")
        assert len(scheduler.tasks()) == 0


def test_the_sweeper_and_the_tq_command_see_each_database_by_name(
    configure: Callable[..., Any],
) -> None:
    from tq.contrib.django import _databases

    configure()
    names = sorted(s.name for s in tq.txn.stores() if isinstance(s, _databases.DjangoStore))
    assert names == ["django:default", "django:pg"]
    pg = _databases.sqlalchemy_url("pg")
    assert pg.get_backend_name() == "postgresql"
    assert pg.database.startswith("tq_django_")
    assert _databases.sqlalchemy_url("default").database == os.environ["TQ_TEST_DJANGO_SQLITE"]
