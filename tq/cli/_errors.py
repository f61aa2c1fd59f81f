"""Exit codes of the `tq` command, and turning failures into them.

Scripts can rely on these (docs/cli.md lists them):

* 0 `OK`: done.
* 1 `FAILED`: the command ran but did not do what was asked: no such
  queue, task or reminder; a sweep that parked or could not submit some
  reminders; a demo that lost a task.
* 2 `USAGE`: bad flags or arguments (click's own code).
* 3 `CONFIG`: misconfiguration: a missing or invalid setting, an app that
  cannot be imported, a missing optional dependency, a schema newer than
  this tq.
* 4 `UNAVAILABLE`: a backend could not be reached or failed (database,
  Cloud Tasks, Spanner); trying again later may work.
* 130 `INTERRUPTED`: stopped by Ctrl-C.

Every error is one line on stderr starting with `tq: error: `.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

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
    print(f"tq: error: {message}", file=sys.stderr)


def _code_of(err: BaseException) -> tuple[int, str] | None:
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
        # The first line only: SQLAlchemy appends the statement and a link.
        detail = str(getattr(err, "orig", None) or err).strip().splitlines()
        return UNAVAILABLE, f"database: {detail[0] if detail else type(err).__name__}"
    gexc = sys.modules.get("google.api_core.exceptions")
    if gexc is not None and isinstance(err, gexc.GoogleAPICallError):
        return _google_code(err), f"{type(err).__name__}: {err.message}"
    grpc = sys.modules.get("grpc")
    if grpc is not None and isinstance(err, grpc.RpcError):
        code = err.code() if callable(getattr(err, "code", None)) else None
        return UNAVAILABLE, f"gRPC {getattr(code, 'name', '?')}: {err}"
    if isinstance(err, OSError):
        return UNAVAILABLE, f"{type(err).__name__}: {err}"
    return None


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
        known = _code_of(err)
        if known is None:
            raise
        code, message = known
        print_error(message)
        raise SystemExit(code) from None
