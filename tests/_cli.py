"""The tq command run in process for tests, through click's CliRunner, with the
exit code a script would see."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner, Result

from tq.cli._main import cli


def run(*args: str, code: int = 0) -> Result:
    """`tq ARGS`; asserts that it exits with `code`."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, f"tq {' '.join(args)}: {result.output}"
    return result


def rows(*args: str, code: int = 0) -> list[dict[str, Any]]:
    """The rows `tq ARGS --json` prints."""
    return [json.loads(line) for line in run(*args, "--json", code=code).stdout.splitlines()]
