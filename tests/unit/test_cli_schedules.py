"""`tq schedules`: the app's cron schedules as a table, gcloud commands and cron.yaml."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

import tq
from tq.cli._main import cli
from tq.cli._schedules import app_engine_schedule

ROOT = pathlib.Path(__file__).resolve().parents[2]
APP = "examples.orders.main:app"
SA = "tq-scheduler@my-proj.iam.gserviceaccount.com"


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["schedules", "--app", APP, *args], env={})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(autouse=True)
def _orders_db(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQ_DATABASE_URL", f"sqlite:///{tmp_path}/orders.db")


def test_the_table_lists_each_scheduled_class_with_its_next_tick() -> None:
    (row,) = [json.loads(line) for line in run("--format", "json").splitlines()]
    assert row["class"] == "daily-report"
    assert (row["schedule"], row["time_zone"]) == ("5 0 * * *", "Etc/UTC")
    assert row["path"] == "/internal/tasks/c/cron/daily-report"


def test_gcloud_commands_match_the_deploy_script() -> None:
    out = run("--format", "gcloud", "--target-host", "orders-HASH-uc.a.run.app",
              "--cloud-region", "us-central1", "--authorized-launchers", SA)  # fmt: skip
    (line,) = out.splitlines()
    assert shlex.split(line) == [
        "gcloud", "scheduler", "jobs", "create", "http", "tq-cron-daily-report",
        "--location=us-central1", "--schedule=5 0 * * *", "--time-zone=Etc/UTC",
        "--uri=https://orders-HASH-uc.a.run.app/internal/tasks/c/cron/daily-report",
        "--http-method=POST", f"--oidc-service-account-email={SA}",
        "--oidc-token-audience=https://orders-HASH-uc.a.run.app",
    ]  # fmt: skip
    dry = subprocess.run(
        ["bash", str(ROOT / "deploy/gcloud/setup.sh"), "--dry-run", "my-proj", "us-central1"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    job = [ln for ln in dry.splitlines() if "jobs create http tq-cron-daily-report" in ln]
    assert [shlex.split(ln) for ln in job] == [shlex.split(line)]


def test_gcloud_commands_need_a_host_and_a_launcher() -> None:
    result = CliRunner().invoke(
        cli, ["schedules", "--app", APP, "--format", "gcloud", "--target-host", "h"], env={}
    )
    assert result.exit_code == 3
    assert "--authorized-launchers" in result.output


def test_cron_yaml_matches_the_app_engine_deploy_file() -> None:
    out = yaml.safe_load(run("--format", "cron.yaml"))["cron"]
    shipped = yaml.safe_load((ROOT / "deploy/appengine/cron.yaml").read_text())["cron"]
    assert out == [c for c in shipped if c["url"].startswith("/internal/tasks/c/cron/")]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("5 0 * * *", "every day 00:05"),
        ("@daily", "every day 00:00"),
        ("30 9 * * MON-FRI", "every monday,tuesday,wednesday,thursday,friday 09:30"),
        ("0 9 * * 7", "every sunday 09:00"),
        ("* * * * *", "every 1 minutes"),
        ("*/15 * * * *", "every 15 minutes synchronized"),
        ("@hourly", "every 1 hours synchronized"),
        ("0 */6 * * *", "every 6 hours synchronized"),
        ("*/7 * * * *", None),
        ("0 9 1 * *", None),
        ("0 9 * 1 *", None),
        ("0 9 * * */2", None),
        ("15 */5 * * *", None),
    ],
)
def test_app_engine_schedules_translate_where_they_can(expr: str, expected: str | None) -> None:
    assert app_engine_schedule(tq.Cron(expr)) == expected


def _schedules_process(db: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tq.cli", "schedules", "--app", APP, "--format", "json"],
        cwd=ROOT, env={**os.environ, "TQ_DATABASE_URL": db}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def test_schedules_prints_its_table_and_no_warning(tmp_path: pathlib.Path) -> None:
    # The app's push endpoint is built, never served: nothing to warn of.
    proc = _schedules_process(f"sqlite:///{tmp_path}/orders.db")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["class"] == "daily-report"
    assert proc.stderr == ""


def test_a_bare_sqlite_path_in_tq_database_url_is_a_sqlite_file(tmp_path: pathlib.Path) -> None:
    # One rule for TQ_DATABASE_URL everywhere: the example app reads it as the command does.
    proc = _schedules_process(str(tmp_path / "orders.db"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["class"] == "daily-report"
