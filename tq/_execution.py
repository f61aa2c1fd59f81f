"""ExecutionInfo: what Cloud Tasks (or Pub/Sub) tells a handler about the current attempt."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
from collections.abc import Iterator, Mapping


@dataclasses.dataclass(frozen=True, slots=True)
class ExecutionInfo:
    """Facts about the running attempt of a task, from the push's headers.

    Attributes:
      task_class: the ID of the task's class.
      execution_count: how many times the task was run before, counting only
        attempts that got a response from the handler (0 on the first run).
      retry_count: how many times the task was retried before, including
        attempts that never reached the handler (0 on the first run).
      task_id: the task's ID (the last part of its name).
      queue: the queue's ID (the short name).
      eta: when the task was scheduled to run, or None if the header is absent.
      retry_reason: why the previous attempt failed, if Cloud Tasks says.
      previous_response: the HTTP status of the previous attempt, if any.
      delivery_attempt: for a Pub/Sub message, which delivery this is (1 on
        the first), where Pub/Sub says so (subscriptions with a dead-letter
        policy); else None. `execution_count` is then one less.
      message_id: for a Pub/Sub message, the ID Pub/Sub gave it (a message
        published twice, e.g. by the sweeper, has two; `task_id` is the
        same on both: the `tq_task_id` attribute).
      subscription: for a Pub/Sub message, the short ID of the
        subscription that delivered it (also in `queue`).
      expected_eta: when the task was meant to run, fixed when it was added
        (tq's `X-Tq-Expected-Eta` header: the add time or the requested
        ETA); the same on every attempt, unlike `eta`, which Cloud Tasks
        moves to each retry. None for a push tq did not build.
    """

    task_class: str = ""
    execution_count: int = 0
    retry_count: int = 0
    task_id: str = ""
    queue: str = ""
    eta: dt.datetime | None = None
    retry_reason: str = ""
    previous_response: int | None = None
    delivery_attempt: int | None = None
    message_id: str = ""
    subscription: str = ""
    expected_eta: dt.datetime | None = None

    @classmethod
    def from_headers(
        cls, task_class: str, headers: Mapping[str, str], *, app_engine: bool = False
    ) -> ExecutionInfo:
        """Reads X-CloudTasks-* headers (and X-AppEngine-* ones on App Engine).

        `headers` must have lowercase keys (as ASGI gives them).
        """
        if app_engine:

            def get(name: str) -> str:
                for p in ("x-cloudtasks-", "x-appengine-"):
                    v = headers.get(p + name)
                    if v:
                        return v.strip()
                return ""

            queue = get("queuename")
            return cls(
                task_class=task_class,
                execution_count=_int(get("taskexecutioncount")),
                retry_count=_int(get("taskretrycount")),
                task_id=get("taskname").rsplit("/", 1)[-1],
                queue=queue.rsplit("/", 1)[-1],  # the emulator sends the full path
                eta=_eta(get("tasketa")),
                retry_reason=get("taskretryreason"),
                previous_response=_int(get("taskpreviousresponse")) or None,
                expected_eta=_expected_eta(headers.get(_EXPECTED_ETA, "")),
            )
        # Once per push: the plain lookups of the common case, inline.
        h = headers.get
        return cls(
            task_class=task_class,
            execution_count=_int(h("x-cloudtasks-taskexecutioncount", "").strip()),
            retry_count=_int(h("x-cloudtasks-taskretrycount", "").strip()),
            task_id=h("x-cloudtasks-taskname", "").strip().rsplit("/", 1)[-1],
            queue=h("x-cloudtasks-queuename", "").strip().rsplit("/", 1)[-1],
            eta=_eta(h("x-cloudtasks-tasketa", "").strip()),
            retry_reason=h("x-cloudtasks-taskretryreason", "").strip(),
            previous_response=_int(h("x-cloudtasks-taskpreviousresponse", "").strip()) or None,
            expected_eta=_expected_eta(h(_EXPECTED_ETA, "")),
        )


def _int(v: str) -> int:
    if len(v) < 10 and v.isdigit() and v.isascii():  # the common case, no exception
        return int(v)
    try:
        return max(0, int(v))
    except ValueError:
        return 0


_EXPECTED_ETA = "x-tq-expected-eta"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _expected_eta(v: str) -> dt.datetime | None:
    """The time of an `X-Tq-Expected-Eta` value ("<seconds>.<6 digits>"), exactly.

    Exact (no float in between), so that the value read on every attempt
    names the same instant: `tq.txn.marker_key` relies on it.
    """
    seconds, dot, micros = v.strip().partition(".")
    if (
        dot
        and len(micros) == 6
        and len(seconds) <= 12
        and (seconds + micros).isascii()
        and (seconds + micros).isdigit()
    ):
        try:
            return _EPOCH + dt.timedelta(seconds=int(seconds), microseconds=int(micros))
        except OverflowError:
            return None
    return _eta(v.strip())


def _eta(v: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(float(v), dt.UTC) if v else None
    except (ValueError, OverflowError, OSError):
        return None


class FromHeaders:
    """The ExecutionInfo of a push, read from its headers when first asked for.

    Most handlers never ask: the push path makes this (no header parsed)
    and `execution_info()` reads the headers once, on the first call.
    `headers` (lowercase keys) must not change while the handler runs.
    """

    __slots__ = ("_app_engine", "_headers", "_info", "task_class")

    def __init__(self, task_class: str, headers: Mapping[str, str], app_engine: bool) -> None:
        self.task_class = task_class
        self._headers = headers
        self._app_engine = app_engine
        self._info: ExecutionInfo | None = None

    def get(self) -> ExecutionInfo:
        info = self._info
        if info is None:
            info = self._info = ExecutionInfo.from_headers(
                self.task_class, self._headers, app_engine=self._app_engine
            )
        return info

    def queue_and_retried(self) -> tuple[str, bool]:
        """(queue ID, whether this is a retry), without the rest of the headers."""
        if self._info is None and not self._app_engine:
            h = self._headers.get
            queue = h("x-cloudtasks-queuename", "").strip().rsplit("/", 1)[-1]
            return queue, _int(h("x-cloudtasks-taskretrycount", "").strip()) > 0
        info = self.get()
        return info.queue, info.retry_count > 0


_Current = ExecutionInfo | FromHeaders | None
_current: contextvars.ContextVar[_Current] = contextvars.ContextVar(
    "tq_execution_info", default=None
)


def execution_info() -> ExecutionInfo:
    """The ExecutionInfo of the task whose handler is running.

    Raises LookupError outside a handler.
    """
    info = _current.get()
    if info is None:
        raise LookupError("tq.execution_info() is only available inside a task handler")
    if isinstance(info, FromHeaders):
        return info.get()
    return info


@contextlib.contextmanager
def executing(info: ExecutionInfo) -> Iterator[ExecutionInfo]:
    token = _current.set(info)
    try:
        yield info
    finally:
        _current.reset(token)


def enter(info: ExecutionInfo | FromHeaders) -> contextvars.Token[_Current]:
    """Makes `info` current (what `executing` does, without a context manager's cost)."""
    return _current.set(info)


def leave(token: contextvars.Token[_Current]) -> None:
    """Undoes `enter`."""
    _current.reset(token)
