"""`manage.py tq ...`: the tq command with the project's settings (workers, sweeps, admin)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import tq
from tests.django.test_backend import confirmations, count
from tests.django.test_outbox import ROOT, _Holding
from tqtesting import FakeClock


def tq_command(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Runs `manage.py tq ARGS` in this process: (exit code, stdout)."""
    from django.core.management import CommandError, call_command

    capsys.readouterr()
    try:
        call_command("tq", *args)
    except CommandError as e:
        return e.returncode, capsys.readouterr().out
    return 0, capsys.readouterr().out


def stale_reminder(alias: str, order_id: int) -> None:
    """A committed reminder whose happy path failed (the sweeper's to submit)."""
    from django.db import transaction

    from tests.django.shop.tasks import send_confirmation

    with tq.use_submitter(_Holding()), transaction.atomic(using=alias):
        send_confirmation.enqueue(order_id, database=alias)
    assert count(alias, "tq_reminders") == 1


def test_worker_delivers_the_database_queue_into_the_project(
    configure: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from django.db import transaction

    from tests.django.shop.tasks import send_confirmation

    configure(DELIVERY="database")
    with transaction.atomic():
        result = send_confirmation.enqueue(5)
    code, _ = tq_command(capsys, "worker", "--until-idle")
    assert code == 0
    assert confirmations("default") == [(5, "")]
    assert send_confirmation.get_result(result.id).status == "SUCCESSFUL"


def test_sweep_submits_stale_reminders_of_every_database(
    configure: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    configure(DELIVERY="database")
    stale_reminder("pg", 6)
    stale_reminder("default", 7)
    with tq.clock.use_clock(FakeClock(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))):
        code, out = tq_command(capsys, "sweep", "--json")
        assert code == 0, out
        assert json.loads(out)["submitted"] == 2
        assert count("pg", "tq_reminders") == count("default", "tq_reminders") == 0
        assert count("default", "tq_tasks") == 2  # into the database queue of TQ["DATABASE"]
        assert tq_command(capsys, "worker", "--until-idle")[0] == 0
    assert confirmations("pg") == [(6, "")]
    assert confirmations("default") == [(7, "")]


def test_reminders_and_parked_reminders_are_listed_and_replayed(
    configure: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from tq.contrib.django import _databases

    configure(DELIVERY="database")
    stale_reminder("pg", 8)
    code, out = tq_command(capsys, "reminders", "count", "--json")
    counts = {row["store"]: row for row in map(json.loads, out.splitlines())}
    assert counts["django:pg"]["pending"] == 1
    assert counts["django:default"]["pending"] == 0
    store = next(s for s in tq.txn.stores() if s.name == "django:pg")
    assert isinstance(store, _databases.DjangoStore)
    (key,) = store.fetch_reminder_keys("0" * 32, "g", 10)
    store.park_reminder(key.id, b"")
    code, out = tq_command(capsys, "parked", "list", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [key.id]
    code, _ = tq_command(capsys, "parked", "replay", "--all", "--yes", "--now")
    assert code == 0
    assert count("pg", "tq_reminders") == 0  # submitted to the database queue, and deleted
    assert count("default", "tq_tasks") == 1


def test_done_markers_of_every_database_are_counted(
    configure: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    import tqtesting
    from tests.django.shop.tasks import charge

    state = configure(DATABASE="pg")
    now = FakeClock(dt.datetime.now(dt.UTC))  # markers expire 35 days after it
    with tqtesting.testing_context(state.dispatcher, now) as scheduler:
        charge.enqueue(1, database="pg")
        scheduler.run(tqtesting.stop_when_drained())
    code, out = tq_command(capsys, "markers", "count", "--json")
    assert code == 0, out
    live = {row["store"]: row["live"] for row in map(json.loads, out.splitlines())}
    assert live == {"django:default": 0, "django:pg": 1}


def test_queues_are_listed_and_purged(
    configure: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.django.shop.tasks import send_confirmation

    configure(DELIVERY="database")
    send_confirmation.enqueue(1)
    send_confirmation.enqueue(2)
    code, out = tq_command(capsys, "queues", "stats", "default", "--json")
    assert code == 0
    assert json.loads(out.splitlines()[0])["tasks"] == 2
    code, _ = tq_command(capsys, "queues", "purge", "default", "--yes")
    assert code == 0
    assert tq_command(capsys, "worker", "--until-idle")[0] == 0
    assert confirmations("default") == []


def test_manage_py_runs_the_tq_command_in_a_process_of_its_own(
    configure: Callable[..., Any],
) -> None:
    configure()
    proc = subprocess.run(
        [sys.executable, "-m", "django", "tq", "reminders", "count", "--json"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stores = sorted(json.loads(line)["store"] for line in proc.stdout.splitlines())
    assert stores == ["django:default", "django:pg"]
