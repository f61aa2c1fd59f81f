"""deploy/: manifests parse, commands name real subcommands and flags, the DDL applies.

Docker is not available here: the image is not built; its CMD and COPY lines
are checked instead. Nothing here talks to Google Cloud.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import yaml
from click.testing import CliRunner

import tq
import tqtesting
from examples.orders.db import make_engine
from examples.orders.service import OrdersService
from examples.orders.web import create_app
from tq.cli._main import cli
from tq.cli._settings import SETTINGS
from tq.dbqueue import parse_queue_yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _dockerfile_cmd() -> list[str]:
    (line,) = [x for x in (DEPLOY / "Dockerfile").read_text().splitlines() if x.startswith("CMD")]
    cmd: list[str] = json.loads(line[len("CMD") :])
    return cmd


def _container_commands() -> dict[str, list[str]]:
    """Every `tq ...` command line the deploy files run, by where it is."""
    found = {"Dockerfile CMD": _dockerfile_cmd()}
    for path in _yaml_files():
        for doc in _docs(path):
            if path.name == "app.yaml" and "entrypoint" in doc:
                found[f"{path.name} entrypoint"] = shlex.split(doc["entrypoint"])
            spec = doc.get("spec", {}) if isinstance(doc, dict) else {}
            template = spec.get("template", {}).get("spec", {})
            for c in template.get("containers", []):
                found[f"{path.relative_to(DEPLOY)} {c.get('name', 'container')}"] = [
                    *c.get("command", []),
                    *c.get("args", []),
                ]
    return found


def _check_tq_command(argv: list[str]) -> click.Command:
    """Parses `argv` with the real command tree; raises click.UsageError if it is wrong."""
    assert argv[0] == "tq", argv
    command: click.Command = cli
    rest = argv[1:]
    while isinstance(command, click.Group):
        if not rest:
            raise click.UsageError("no subcommand")
        name, rest = rest[0], rest[1:]
        sub = command.get_command(click.Context(command), name)
        if sub is None:
            raise click.UsageError(f"no such command {name!r}")
        command = sub
    command.make_context(command.name or "", list(rest))
    return command


def test_every_manifest_parses() -> None:
    files = _yaml_files()
    assert len(files) >= 8
    for path in files:
        assert _docs(path), path


def test_container_commands_name_real_subcommands_and_flags() -> None:
    commands = _container_commands()
    assert set(commands) >= {
        "Dockerfile CMD", "app.yaml entrypoint", "cloudrun/service.yaml container",
        "k8s/app.yaml app", "k8s/sweeper.yaml sweeper", "k8s/workers.yaml worker",
        "k8s/config.yaml migrate",
    }  # fmt: skip
    for where, argv in commands.items():
        try:
            _check_tq_command(argv)
        except click.UsageError as e:
            pytest.fail(f"{where}: {shlex.join(argv)}: {e.format_message()}")


def test_command_check_catches_a_wrong_flag() -> None:
    with pytest.raises(click.UsageError):
        _check_tq_command(["tq", "serve", "app:app", "--sweep-every", "5"])
    with pytest.raises(click.UsageError):
        _check_tq_command(["tq", "sweeep"])


def test_environment_variables_in_deploy_files_are_settings() -> None:
    known = {e for s in SETTINGS for e in s.env} | {"TQ_APP"}
    used: set[str] = set()
    for path in [*DEPLOY.rglob("*.yaml"), DEPLOY / "Dockerfile", DEPLOY / "gcloud" / "setup.sh"]:
        used |= set(re.findall(r"\bTQ_[A-Z_]+\b", path.read_text()))
    assert used, "no TQ_ variables found"
    assert used <= known, f"unknown settings: {sorted(used - known)}"


def test_dockerfile_copies_paths_that_exist() -> None:
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src


def test_queue_yaml_is_read_by_the_database_queue_with_sweeps_never_retried() -> None:
    queues = {
        q.name: q for q in parse_queue_yaml((DEPLOY / "appengine" / "queue.yaml").read_text())
    }
    assert set(queues) == {"emails", "default", "tq-sweep"}
    assert queues["tq-sweep"].max_attempts == 1
    assert queues["emails"].max_retry_duration_s == 2 * 86400


def _dry_run() -> str:
    proc = subprocess.run(
        ["bash", str(DEPLOY / "gcloud" / "setup.sh"), "--dry-run", "my-proj", "us-central1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return proc.stdout


def test_gcloud_script_creates_the_queues_iam_and_sweep_job() -> None:
    out = _dry_run()
    yaml_queues = {q.name for q in parse_queue_yaml((DEPLOY / "appengine/queue.yaml").read_text())}
    created = set(re.findall(r"gcloud tasks queues create (\S+)", out))
    assert created == yaml_queues
    assert re.search(r"queues create tq-sweep .*--max-attempts=1", out)
    assert "--role=roles/iam.serviceAccountUser" in out  # to create tasks with OIDC tokens
    assert "--role=roles/run.invoker" in out
    sweep_job = re.search(r"scheduler jobs create http tq-sweep .*", out)
    assert sweep_job is not None
    assert "--uri=https://orders-HASH-uc.a.run.app/internal/tasks/c/sweep" in sweep_job.group(0)
    assert "--oidc-service-account-email=tq-scheduler@my-proj.iam.gserviceaccount.com" in out
    manifest = re.search(r"gcloud run services replace (\S+)", out)
    assert manifest is not None
    rendered = Path(manifest.group(1)).read_text()
    Path(manifest.group(1)).unlink()
    assert "__PROJECT__" not in rendered
    assert "__REGION__" not in rendered
    (service,) = yaml.safe_load_all(rendered)
    env = {
        e["name"]: e.get("value")
        for e in service["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["TQ_CLOUD_PROJECT"] == "my-proj"
    assert env["TQ_PUSH_AS"] == "tq-pusher@my-proj.iam.gserviceaccount.com"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TQ_LONG"), reason="slow: set TQ_LONG=1")
def test_gcloud_script_flags_exist_in_the_installed_gcloud(tmp_path: Path) -> None:
    gcloud, unshare = shutil.which("gcloud"), shutil.which("unshare")
    if not gcloud or not unshare or os.geteuid() != 0:
        pytest.skip("needs gcloud and root's unshare (to run gcloud with no network)")
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
           "PAGER": "cat", "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1"}  # fmt: skip
    helps: dict[tuple[str, ...], str] = {}
    for line in _dry_run().splitlines():
        argv = shlex.split(line)
        if argv[0] != "gcloud":
            continue
        depth = {"scheduler": 4, "projects": 2, "services": 2, "auth": 2, "config": 2}
        key = tuple(argv[1 : 1 + depth.get(argv[1], 3)])
        if key not in helps:
            # No network namespace: gcloud cannot reach anything while printing help.
            helps[key] = subprocess.run(
                [unshare, "-n", gcloud, *key, "--help"], capture_output=True, text=True,
                env=env, check=True, timeout=120,
            ).stdout  # fmt: skip
        for flag in re.findall(r"(--[a-z-]+)", line):
            assert flag in helps[key], f"gcloud {' '.join(key)} has no {flag}"


def test_appengine_stage_script_gathers_one_deployable_directory(tmp_path: Path) -> None:
    subprocess.run([str(DEPLOY / "appengine" / "stage.sh"), str(tmp_path)], check=True,
                   capture_output=True)  # fmt: skip
    for name in ("app.yaml", "queue.yaml", "cron.yaml", "requirements.txt", "pyproject.toml",
                 "tq/__init__.py", "sweeper/__init__.py", "examples/orders/main.py"):  # fmt: skip
        assert (tmp_path / name).exists(), name
    assert not list(tmp_path.rglob("__pycache__"))


async def test_cron_urls_reach_the_sweep_endpoint_and_the_report_route(tmp_path: Path) -> None:
    import sweeper

    service = OrdersService(make_engine(f"sqlite:///{tmp_path}/o.db"))
    service.dispatcher.configure(
        cloud_project="p", cloud_region="us-central1", app_engine=True,
        sweeper=sweeper.InProcSweeper(stores=[service.store], sweep_shards=1),
    )  # fmt: skip
    service.create_schema()
    app = create_app(service)
    cron = {c["url"] for c in _docs(DEPLOY / "appengine" / "cron.yaml")[0]["cron"]}
    try:
        with tqtesting.testing_context(service.dispatcher) as scheduler:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="https://app") as client:
                for url in sorted(cron):
                    as_cron = await client.get(url, headers={"X-Appengine-Cron": "true"})
                    assert as_cron.status_code == 200, url
                    assert (await client.get(url)).status_code == 403, url
            assert len(scheduler.tasks().of_class("daily-report")) == 1
    finally:
        service.close()


# The DDL shipped for operators who apply schemas themselves.


def _statements(sql: str) -> list[str]:
    lines = [ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _migrate(db: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli, ["db", "migrate", "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    return [json.loads(x) for x in result.stdout.splitlines()]


def test_sqlite_ddl_applies_and_matches_the_code(tmp_path: Path) -> None:
    db = tmp_path / "ddl.db"
    with sqlite3.connect(db) as conn:
        for name in ("sqlite.sql", "dbqueue-sqlite.sql"):
            conn.executescript((DEPLOY / "sql" / name).read_text())
    conn.close()
    rows = _migrate(str(db))
    assert [(r["before"], r["after"]) for r in rows] == [(r["latest"], r["latest"]) for r in rows]


@pytest.mark.postgres
def test_postgres_ddl_applies_and_matches_the_code(postgres_db_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_db_url.replace("+psycopg", ""), autocommit=True) as conn:
        for name in ("postgres.sql", "dbqueue-postgres.sql"):
            for stmt in _statements((DEPLOY / "sql" / name).read_text()):
                conn.execute(stmt)
    rows = _migrate(postgres_db_url)
    assert [(r["before"], r["after"]) for r in rows] == [(r["latest"], r["latest"]) for r in rows]


@pytest.mark.mariadb
def test_mariadb_ddl_applies_and_matches_the_code(mariadb_db_url: str) -> None:
    from tests._services.mariadb import _connect

    conn = _connect(mariadb_db_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"USE `{mariadb_db_url.rsplit('/', 1)[1]}`")
            for _ in range(2):  # idempotent
                for name in ("mysql.sql", "dbqueue-mysql.sql"):
                    for stmt in _statements((DEPLOY / "sql" / name).read_text()):
                        cur.execute(stmt)
        conn.commit()
    finally:
        conn.close()
    rows = _migrate(mariadb_db_url)
    assert [(r["before"], r["after"]) for r in rows] == [(r["latest"], r["latest"]) for r in rows]


@pytest.mark.spanner
def test_spanner_ddl_applies_to_the_emulator(spanner_emulator: Any) -> None:
    from tq.txn.spanner import SpannerStore

    database = spanner_emulator.instance.database(f"ddl-{os.getpid()}")
    database.create().result(30)
    try:
        statements = _statements((DEPLOY / "spanner" / "schema.sql").read_text())
        database.update_ddl(statements).result(60)
        store = SpannerStore(database, name="ddl-test")
        try:
            assert store.count_reminders() == (0, 0)
        finally:
            tq.txn.unregister_store("ddl-test")
    finally:
        database.drop()


def test_python_in_image_matches_the_project() -> None:
    image = (DEPLOY / "Dockerfile").read_text()
    version = re.search(r"FROM python:(\d+\.\d+)", image)
    assert version is not None
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == version.group(1)


def test_pubsub_script_makes_topics_dead_letters_push_and_pull_with_their_iam() -> None:
    url = "https://orders-HASH-uc.a.run.app"
    out = subprocess.run(
        ["bash", str(DEPLOY / "gcloud" / "pubsub.sh"), "--dry-run", "my-proj", "us-central1", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = [shlex.split(line) for line in out.splitlines() if line.startswith("gcloud ")]
    topics = {a[4] for a in lines if a[1:4] == ["pubsub", "topics", "create"]}
    assert topics == {"order-events", "order-events-dead-letter"}
    subs = {a[4]: a[5:] for a in lines if a[1:4] == ["pubsub", "subscriptions", "create"]}
    push = subs["order-events-audit"]
    endpoint = f"--push-endpoint={url}/internal/pubsub/order-events-audit"
    assert endpoint in push
    assert "--push-auth-service-account=tq-pubsub-pusher@my-proj.iam.gserviceaccount.com" in push
    for flags in (push, subs["order-events-mailer"]):
        assert "--dead-letter-topic=order-events-dead-letter" in flags
        assert "--max-delivery-attempts=5" in flags
    assert '--message-filter=attributes.tq_class = "order-placed"' in push
    grants = {(a[-2], a[-1]) for a in lines if "add-iam-policy-binding" in a}
    agent = "serviceAccount:service-123456789@gcp-sa-pubsub.iam.gserviceaccount.com"
    assert (f"--member={agent}", "--role=roles/iam.serviceAccountTokenCreator") in grants
    assert (f"--member={agent}", "--role=roles/pubsub.publisher") in grants  # dead letters
    app = "serviceAccount:orders-app@my-proj.iam.gserviceaccount.com"
    assert (f"--member={app}", "--role=roles/pubsub.publisher") in grants
