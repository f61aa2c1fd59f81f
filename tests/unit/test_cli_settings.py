"""The tq command's settings table, its documentation, exit codes and dependencies."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import grpc
import pytest
from click.testing import CliRunner
from google.api_core import exceptions as gexc

import tq
from tq.cli import _settings
from tq.cli._errors import CONFIG, FAILED, UNAVAILABLE, CLIError, exit_codes
from tq.cli._main import cli

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config(*args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    result = CliRunner().invoke(cli, ["config", "--json", *args], env=env or {})
    assert result.exit_code == 0, result.output
    return {row["setting"]: row["value"] for row in map(json.loads, result.stdout.splitlines())}


def test_flag_wins_over_environment_which_wins_over_default() -> None:
    assert _config()["sweep_shards"] == 16
    assert _config(env={"TQ_SWEEP_SHARDS": "4"})["sweep_shards"] == 4
    assert _config("--sweep-shards", "8", env={"TQ_SWEEP_SHARDS": "4"})["sweep_shards"] == 8


def test_lists_and_booleans_parse_from_environment() -> None:
    got = _config(env={"TQ_AUTHORIZED_PUSHERS": "a@x.com, b@x.com", "TQ_USE_LEASES": "off"})
    assert got["authorized_pushers"] == ["a@x.com", "b@x.com"]
    assert got["use_leases"] is False


def test_port_falls_back_to_the_platform_port_variable() -> None:
    assert _config(env={"PORT": "9000"})["port"] == 9000
    assert _config(env={"PORT": "9000", "TQ_PORT": "7000"})["port"] == 7000


def test_invalid_environment_value_is_a_usage_error_naming_it() -> None:
    result = CliRunner().invoke(cli, ["config"], env={"TQ_SWEEP_MODE": "sideways"})
    assert result.exit_code == 2
    assert "sideways" in result.output


def test_from_env_reads_settings_without_click() -> None:
    got = _settings.from_env({"TQ_CLOUD_PROJECT": "p", "TQ_SWEEP_INTERVAL": "5"})
    assert got["cloud_project"] == "p"
    assert got["sweep_interval"] == 5.0
    with pytest.raises(ValueError, match="TQ_WORKERS"):
        _settings.from_env({"TQ_WORKERS": "many"})


def test_every_setting_has_distinct_flag_and_environment_names() -> None:
    flags = [s.flag for s in _settings.SETTINGS]
    envs = [e for s in _settings.SETTINGS for e in s.env]
    assert len(set(flags)) == len(flags)
    assert len(set(envs)) == len(envs)


def test_docs_configuration_table_is_current() -> None:
    result = CliRunner().invoke(cli, ["config", "--markdown"])
    docs = (ROOT / "docs" / "cli.md").read_text()
    assert result.stdout in docs, "regenerate the table in docs/cli.md with `tq config --markdown`"


def test_sweeper_options_cover_every_sweeper_tunable() -> None:
    import inspect

    import sweeper

    params = set(inspect.signature(sweeper.InProcSweeper).parameters) - {"stores", "key_space"}
    from tq.cli._options import Config
    from tq.cli._wiring import sweeper_options

    assert set(sweeper_options(Config({}))) == params


def test_dispatcher_settings_cover_every_dispatcher_option() -> None:
    import inspect

    from tq.cli._wiring import _DISPATCHER_KEYS

    params = set(inspect.signature(tq.Dispatcher).parameters)
    # Objects, not settings: given by code (or, for the submitter, by --backend).
    params -= {"submitter", "sweeper", "random_bytes", "sync_handler_scope"}
    assert set(_DISPATCHER_KEYS.values()) == params


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (CLIError("no such queue"), FAILED),
        (tq.ConfigError("bad"), CONFIG),
        (tq.SubmitError(grpc.StatusCode.UNAVAILABLE, "down"), UNAVAILABLE),
        (tq.SubmitError(grpc.StatusCode.NOT_FOUND, "no queue"), FAILED),
        (ConnectionRefusedError("refused"), UNAVAILABLE),
        # The Google clients' own retries ran out (a Cloud Tasks endpoint that refuses).
        (gexc.RetryError("Timeout of 20.0s exceeded", gexc.ServiceUnavailable("refused")),
         UNAVAILABLE),
        (gexc.NotFound("Table not found: TQReminders"), CONFIG),
        (gexc.NotFound("Queue does not exist"), FAILED),
        (gexc.PermissionDenied("no"), CONFIG),
    ],
)  # fmt: skip
def test_failures_map_to_documented_exit_codes(
    error: Exception, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited, exit_codes():
        raise error
    assert exited.value.code == code
    err = capsys.readouterr().err
    assert err.startswith("tq: error: ")
    assert len(err.splitlines()) == 1


def test_unknown_exceptions_are_not_swallowed() -> None:
    with pytest.raises(ZeroDivisionError), exit_codes():
        raise ZeroDivisionError


def test_command_without_click_says_which_extra_to_install() -> None:
    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "click" or name.startswith("click."):
            raise ImportError("blocked for the test")
        return None
import importlib.util
real = importlib.util.find_spec
importlib.util.find_spec = lambda n, *a: None if n == "click" else real(n, *a)
sys.meta_path.insert(0, Block())
from tq.cli import main
sys.exit(main(["--help"]))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert proc.returncode == CONFIG
    assert "pip install 'tq[cli]'" in proc.stderr


def test_import_tq_imports_neither_click_nor_rich_nor_the_command() -> None:
    code = (
        "import sys, tq, tq.txn, tq.asgi\n"
        "bad = {'click', 'rich', 'tq.cli', 'sweeper'} & set(sys.modules)\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize(
    ("given", "backend"),
    [
        ({"database_url": "sqlite:///q.db"}, "dbqueue"),
        ({"cloud_project": "p"}, "cloudtasks"),
        # The database is also where the outbox is: a project says where tasks go.
        ({"database_url": "sqlite:///q.db", "cloud_project": "p"}, "cloudtasks"),
        ({"database_url": "sqlite:///q.db", "cloud_project": "p", "backend": "dbqueue"},
         "dbqueue"),
    ],
)  # fmt: skip
def test_backend_auto_is_cloud_tasks_when_a_project_is_set_else_the_database_queue(
    given: dict[str, str], backend: str
) -> None:
    from tq.cli._options import Config
    from tq.cli._wiring import backend_of

    assert backend_of(Config(given)) == backend


def test_the_backend_setting_documents_the_rule_the_code_follows() -> None:
    doc = " ".join(_settings.BY_KEY["backend"].help.split())
    assert "`auto`: Cloud Tasks when a cloud project is set" in doc
    assert "else the database queue when `--db` is set" in doc
    cli_md = " ".join((ROOT / "docs" / "cli.md").read_text().split())
    assert doc in cli_md


@pytest.mark.parametrize(
    ("text", "url"),
    [
        ("orders.db", "sqlite:///orders.db"),
        ("/var/lib/app/q.db", "sqlite:////var/lib/app/q.db"),
        ("postgresql://app@db/app", "postgresql+psycopg://app@db/app"),
        ("postgres://app@db/app", "postgresql+psycopg://app@db/app"),
        ("mysql+pymysql://app@db/app", "mysql+pymysql://app@db/app"),
    ],
)
def test_database_urls_and_bare_paths_follow_one_rule(text: str, url: str) -> None:
    assert _settings.from_env({"TQ_DATABASE_URL": text}, ["database_url"]) == {"database_url": url}
    assert _config("--db", text)["database_url"] == url
