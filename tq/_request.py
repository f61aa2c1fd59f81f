"""Turning a task into a Cloud Tasks CreateTaskRequest.

Works on the raw protobuf classes behind google-cloud-tasks' proto-plus
wrappers (they are several times faster to build and serialize).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import urllib.parse
from typing import Any

from google.cloud.tasks_v2.types import cloudtasks, target
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from tq import _envelope
from tq._errors import ConfigError, PayloadTooLarge, ValidationError
from tq._task import MAX_URI_LENGTH, Task
from tq._taskclass import FULL_QUEUE_RE, CustomPayload, TaskClass

CreateTaskRequest = cloudtasks.CreateTaskRequest.pb()

# Cloud Tasks refuses tasks over 1 MB (the whole task: body, headers, URL).
MAX_TASK_SIZE = 1024 * 1024

EXPECTED_ETA_HEADER = "X-Tq-Expected-Eta"
_METHODS = {
    name: int(getattr(target.HttpMethod, name))
    for name in ("POST", "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS")
}
_POST = _METHODS["POST"]


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Where and how pushes are sent; the dispatcher's settings."""

    cloud_project: str | None
    cloud_region: str | None
    default_target_host: str | None
    push_as: str | None
    push_audience: str | None
    app_engine: bool
    target_scheme: str = "https"


def queue_path(queue: str, target: Target) -> str:
    """The full name of a queue given short or full."""
    if FULL_QUEUE_RE.match(queue):
        return queue
    if not target.cloud_project or not target.cloud_region:
        raise ConfigError(
            f"queue {queue!r} is a short name: set the dispatcher's cloud_project and "
            "cloud_region, or register the class with a full queue name "
            "'projects/P/locations/L/queues/Q'"
        )
    return f"projects/{target.cloud_project}/locations/{target.cloud_region}/queues/{queue}"


def target_host(cls: TaskClass, target: Target) -> str:
    host = cls.target_host or target.default_target_host
    if not host:
        raise ConfigError(
            f"task class {cls.id!r} has no target host: set target_host on the class or "
            "default_target_host on the dispatcher"
        )
    return host


def push_audience(host: str, target: Target) -> str:
    """The OIDC audience pushes carry: `push_audience`, else `https://<host>`."""
    return target.push_audience or f"https://{host}"


def build(
    cls: TaskClass,
    task: Task,
    target: Target,
    *,
    now: dt.datetime,
    task_id: str | None,
    extra_headers: dict[str, str] | None = None,
) -> Message:
    """The CreateTaskRequest of `task` (validated already) of class `cls`.

    `task_id` names the task (`<queue>/tasks/<task_id>`) when given.
    Raises ValidationError / PayloadTooLarge / ConfigError.
    """
    parent = queue_path(cls.queue, target)
    req = CreateTaskRequest(parent=parent)
    t = req.task
    if task_id:
        t.name = f"{parent}/tasks/{task_id}"
    eta = task.resolve_eta(now)
    if eta is not None:
        ts = timestamp_pb2.Timestamp()
        ts.FromDatetime(eta.astimezone(dt.UTC))
        t.schedule_time.CopyFrom(ts)
    if cls.dispatch_deadline_s is not None:
        t.dispatch_deadline.CopyFrom(duration_pb2.Duration(seconds=int(cls.dispatch_deadline_s)))

    custom = cls.custom(task.payload) if cls.custom is not None else None
    if custom is not None:
        method, uri, body = _custom_request(cls, custom)
        headers = dict(custom.meta)
    else:
        method, body = _POST, _envelope.encode(cls.id, task.payload)
        uri = cls.routing_prefix + cls.id + ("/" + _quote(task.title) if task.title else "")
        headers = {"Content-Type": "application/json"}
    headers[EXPECTED_ETA_HEADER] = f"{(eta or now).timestamp():.6f}"
    if extra_headers:
        headers.update(extra_headers)

    if target.app_engine:
        h = t.app_engine_http_request
        h.relative_uri = uri
        h.http_method = method
        _set_headers(h.headers, headers)
        h.body = body
        if cls.target_host or target.default_target_host:
            h.app_engine_routing.host = target_host(cls, target)
    else:
        host = target_host(cls, target)
        url = f"{target.target_scheme}://{host}{uri}"
        if len(url) > MAX_URI_LENGTH:
            raise ValidationError(
                f"task of class {cls.id!r}: URL is {len(url)} characters, over the "
                f"{MAX_URI_LENGTH} limit; shorten the title"
            )
        h = t.http_request
        h.url = url
        h.http_method = method
        _set_headers(h.headers, headers)
        h.body = body
        if target.push_as:
            h.oidc_token.service_account_email = target.push_as
            h.oidc_token.audience = push_audience(host, target)

    size = t.ByteSize()
    if size > MAX_TASK_SIZE:
        raise PayloadTooLarge(
            f"task of class {cls.id!r} is {size} bytes, over Cloud Tasks' limit of "
            f"{MAX_TASK_SIZE} bytes; store the data elsewhere and pass a reference"
        )
    return req  # type: ignore[no-any-return]


def _set_headers(field: Any, headers: dict[str, str]) -> None:
    # The map's update() is MutableMapping's pure-Python one; plain item
    # assignment does the same a few times faster.
    for k, v in headers.items():
        field[k] = v


def _quote(title: str) -> str:
    return urllib.parse.quote(title, safe="-_.~:@!$&'()*+,;=/")


def _custom_request(cls: TaskClass, custom: CustomPayload) -> tuple[int, str, bytes]:
    method = _METHODS.get(custom.method.upper())
    if method is None:
        raise ValidationError(f"task class {cls.id!r}: unsupported HTTP method {custom.method!r}")
    if not custom.relative_uri.startswith("/"):
        raise ValidationError(
            f"task class {cls.id!r}: CustomPayload.relative_uri must start with '/'"
        )
    return method, custom.relative_uri, custom.body


def http_parts(req: Message) -> tuple[str, int, dict[str, str], bytes]:
    """(URL or relative URI, method, headers, body) of a built request."""
    t = req.task  # type: ignore[attr-defined]
    if t.HasField("app_engine_http_request"):
        h = t.app_engine_http_request
        return h.relative_uri, h.http_method, dict(h.headers), h.body
    h = t.http_request
    return h.url, h.http_method, dict(h.headers), h.body
