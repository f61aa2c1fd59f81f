"""A task row of the database queue as an operator sees it."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from tq.dbqueue._schema import State, from_us


@dataclasses.dataclass(frozen=True, slots=True)
class TaskInfo:
    """One task row as an operator sees it (times in UTC).

    `progress` is the holder's last heartbeat report; `result` what the
    task produced (a pull consumer's `complete(result=...)`, a push's 2xx
    response body); `failure` what its last failed attempt said (a pull
    consumer's details, a push's error response body).
    """

    id: int
    queue: str
    name: str
    task_class: str
    state: State
    eta: dt.datetime
    attempts: int
    executions: int
    last_status: int | None
    last_error: str | None
    url: str
    method: str
    created: dt.datetime
    first_attempt: dt.datetime | None
    last_attempt: dt.datetime | None
    finished: dt.datetime | None
    lease_owner: str | None
    lease_expires: dt.datetime | None
    headers: str = "{}"  # the request's headers, a JSON object
    body: bytes = b""  # the request's body (tq's JSON envelope)
    priority: int = 0
    tag: str | None = None
    progress: str | None = None
    result: bytes | None = None
    failure: bytes | None = None


def opt_time(us: int | None) -> dt.datetime | None:
    return None if us is None else from_us(us)


def task_info(row: Any) -> TaskInfo:
    m = row._mapping
    return TaskInfo(
        id=m["id"], queue=m["queue"], name=m["name"], task_class=m["task_class"],
        state=State(m["state"]), eta=from_us(m["eta_us"]), attempts=m["attempts"],
        executions=m["executions"], last_status=m["last_status"], last_error=m["last_error"],
        url=m["url"], method=m["method"], created=from_us(m["created_us"]),
        first_attempt=opt_time(m["first_attempt_us"]), last_attempt=opt_time(m["last_attempt_us"]),
        finished=opt_time(m["finished_us"]), lease_owner=m["lease_owner"],
        lease_expires=opt_time(m["lease_expires_us"]), headers=m["headers"], body=bytes(m["body"]),
        priority=m["priority"], tag=m["tag"],
        progress=m["progress"], result=_bytes(m["result"]), failure=_bytes(m["failure"]),
    )  # fmt: skip


def _bytes(v: bytes | memoryview | None) -> bytes | None:
    return None if v is None else bytes(v)
