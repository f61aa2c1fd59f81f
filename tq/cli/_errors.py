"""Exit codes of the `tq` command, and turning failures into them.

Scripts can rely on these (docs/cli.md lists them; a test runs every row):

* 0 `OK`: done.
* 1 `FAILED`: the command ran but did not do what was asked: no such
  queue, task or reminder; a sweep that parked reminders; the user
  declined a confirmation.
* 2 `USAGE`: bad flags or arguments.
* 3 `CONFIG`: misconfiguration: a missing or invalid setting, an app that
  cannot be imported, a missing optional dependency, tq's tables missing
  (run `tq db init`), a schema newer than this tq.
* 4 `UNAVAILABLE`: a backend could not be reached or failed for now
  (database, Cloud Tasks, Spanner, a port in use; a sweep whose reminders
  could not all be read or submitted): trying again later may work.
* 130 `INTERRUPTED`: stopped by Ctrl-C.

Every error is one line on stderr starting with `tq: error: `.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import Any

OK = 0
FAILED = 1
USAGE = 2
CONFIG = 3
UNAVAILABLE = 4
INTERRUPTED = 130


class CLIError(Exception):
    """A failure with the exit code it maps to."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = FAILED) -> CLIError:
    return CLIError(message, code)


def print_error(message: str) -> None:
    """Prints `message` as one line: `tq: error: ` and the message with its lines joined."""
    line = " ".join(message.split()) or "failed"
    print(f"tq: error: {line}", file=sys.stderr)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def _missing_table(text: str) -> str | None:
    """The table an error says does not exist, or None."""
    m = re.search(
        r'no such table: "?(\w+)|relation "(\w+)" does not exist|Table not found: `?(\w+)',
        text,
    )
    return next((g for g in m.groups() if g), None) if m else None


def _missing_table_message(table: str) -> str:
    if table.lower().startswith("tq"):
        return f"database: tq's tables are missing (no table {table}): run `tq db init`"
    return f"database: no table {table}"


_CONFIG_SQLSTATES = ("28", "3D", "42")  # authorization, no such database, undefined names


def code_of(err: BaseException) -> tuple[int, str] | None:
    """The exit code and message of a known failure, or None."""
    from tq._errors import ConfigError, SubmitError, TQError

    if isinstance(err, CLIError):
        return err.code, str(err)
    if isinstance(err, ConfigError):
        return CONFIG, str(err)
    if isinstance(err, SubmitError):
        return (UNAVAILABLE if err.transient else FAILED), f"{err.code.name}: {err.message}"
    if isinstance(err, TQError):
        return FAILED, str(err)
    if isinstance(err, ImportError):
        return CONFIG, f"cannot import: {err}"
    sqlalchemy = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy is not None and isinstance(err, sqlalchemy.SQLAlchemyError):
        return _database_code(err, sqlalchemy)
    gexc = sys.modules.get("google.api_core.exceptions")
    if gexc is not None and isinstance(err, gexc.GoogleAPICallError):
        table = _missing_table(str(err.message))
        if table is not None:
            return CONFIG, _missing_table_message(table)
        return _google_code(err), f"{type(err).__name__}: {_first_line(str(err.message))}"
    if gexc is not None and isinstance(err, gexc.RetryError):
        cause = err.cause
        detail = _first_line(str(getattr(cause, "message", None) or cause or err.message))
        return UNAVAILABLE, f"gave up retrying: {detail}"
    grpc = sys.modules.get("grpc")
    if grpc is not None and isinstance(err, grpc.RpcError):
        code = err.code() if callable(getattr(err, "code", None)) else None
        return UNAVAILABLE, f"gRPC {getattr(code, 'name', '?')}: {err}"
    if isinstance(err, OSError):
        return UNAVAILABLE, f"{type(err).__name__}: {err}"
    return None


def _database_code(err: Exception, exc: Any) -> tuple[int, str]:
    # The first line only: SQLAlchemy appends the statement and a link.
    orig = getattr(err, "orig", None)
    detail = _first_line(str(orig or err)) or type(err).__name__
    table = _missing_table(detail)
    if table is not None:
        return CONFIG, _missing_table_message(table)
    if isinstance(err, exc.ArgumentError):  # a URL no dialect or driver takes, a bad option
        return CONFIG, f"database URL: {detail}"
    sqlstate = str(getattr(orig, "sqlstate", None) or "")
    if sqlstate.startswith(_CONFIG_SQLSTATES):
        return CONFIG, f"database: {detail}"
    return UNAVAILABLE, f"database: {detail}"


def _google_code(err: BaseException) -> int:
    import grpc

    code = getattr(err, "grpc_status_code", None)
    transient = {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
    }
    if code in transient:
        return UNAVAILABLE
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return CONFIG
    return FAILED


@contextlib.contextmanager
def exit_codes() -> Iterator[None]:
    """Turns known failures inside the block into `SystemExit(code)` with one error line."""
    try:
        yield
    except KeyboardInterrupt:
        print_error("interrupted")
        raise SystemExit(INTERRUPTED) from None
    except SystemExit:
        raise
    except Exception as err:
        known = code_of(err)
        if known is None:
            raise
        code, message = known
        print_error(message)
        raise SystemExit(code) from None
