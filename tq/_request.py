"""Turning a task into a Cloud Tasks CreateTaskRequest.

Works on the raw protobuf classes behind google-cloud-tasks' proto-plus
wrappers (they are several times faster to build and serialize).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import urllib.parse
from collections.abc import Mapping
from typing import Any

from google.cloud.tasks_v2.types import cloudtasks, target
from google.protobuf.message import Message

from tq import _envelope
from tq._errors import ConfigError, PayloadTooLarge, ValidationError
from tq._task import MAX_URI_LENGTH, PRIORITY_HEADER, TAG_HEADER, Task
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
    Raises ValidationError / PayloadTooLarge / ConfigError. The dispatcher
    keeps a `Template` per class instead, which is the same but cheaper.
    """
    return Template(cls, target).build(task, now=now, task_id=task_id, extra_headers=extra_headers)


class Template:
    """What every request of one task class has in common, worked out once.

    The queue path, the host, the URL up to the title, the OIDC token and
    the method and headers of the envelope are the same for every task of
    a class under one `Target`; a request starts as a copy of a message
    holding them (copying is a few times cheaper than setting them again).
    Raises ConfigError when the class cannot be routed (no queue project,
    no target host).
    """

    __slots__ = (
        "_app_engine", "_base", "_envelope", "_envelope_size", "_name_prefix", "_parent",
        "_parents", "_uri", "_url_head", "cls", "key", "target",
    )  # fmt: skip

    def __init__(self, cls: TaskClass, target: Target) -> None:
        self.cls = cls
        self.target = target
        self.key = template_key(cls)
        self._app_engine = target.app_engine
        parent = self._parent = queue_path(cls.queue, target)
        self._name_prefix = parent + "/tasks/"
        self._parents: dict[str, str] = {}  # Task.queue -> its full name
        base = CreateTaskRequest(parent=parent)
        t = base.task
        if cls.dispatch_deadline_s is not None:
            t.dispatch_deadline.seconds = int(cls.dispatch_deadline_s)
        envelope = CreateTaskRequest()
        if target.app_engine:
            self._url_head = ""  # App Engine takes a relative URI
            if cls.target_host or target.default_target_host:
                t.app_engine_http_request.app_engine_routing.host = target_host(cls, target)
            envelope.CopyFrom(base)
            h = envelope.task.app_engine_http_request
        else:
            host = target_host(cls, target)
            self._url_head = f"{target.target_scheme}://{host}"
            if target.push_as:
                t.http_request.oidc_token.service_account_email = target.push_as
                t.http_request.oidc_token.audience = push_audience(host, target)
            envelope.CopyFrom(base)
            h = envelope.task.http_request
        h.http_method = _POST
        h.headers["Content-Type"] = "application/json"
        self._uri = self._url_head + cls.routing_prefix + cls.id  # before the title
        if target.app_engine:
            h.relative_uri = self._uri
        elif len(self._uri) <= MAX_URI_LENGTH:
            h.url = self._uri  # else refused by build()
        self._base = base
        self._envelope = envelope
        self._envelope_size = envelope.task.ByteSize()

    @property
    def envelope(self) -> Message:
        """The request every task of the class in the envelope starts as a copy of
        (not to be changed): queue, URL, method, Content-Type, OIDC token, deadline."""
        return self._envelope  # type: ignore[no-any-return]

    def task_name(self, task: Task, task_id: str | None) -> str | None:
        """The full name `build` gives the task with `task_id` (None without one)."""
        if not task_id:
            return None
        if task.queue is not None:
            return self._parent_of(task.queue) + "/tasks/" + task_id
        return self._name_prefix + task_id

    def fits(self, cls: TaskClass, target: Target) -> bool:
        """Whether this is still the template of `cls` under `target`."""
        return self.cls is cls and self.target is target and self.key == template_key(cls)

    def build(
        self,
        task: Task,
        *,
        now: dt.datetime,
        task_id: str | None,
        extra_headers: dict[str, str] | None = None,
        now_parts: tuple[int, int] | None = None,
        check_size: bool = True,
    ) -> Message:
        """Like the module's `build`, for a task of this template's class.

        `now_parts`: `epoch_parts(now)` when the caller has them (seconds >= 0).
        `check_size=False` leaves the size check to the caller (`check_size`),
        who serializes the request anyway.
        """
        cls = self.cls
        eta = task.resolve_eta(now)
        custom = cls.custom(task.payload) if cls.custom is not None else None
        req = CreateTaskRequest()
        if custom is None:
            req.CopyFrom(self._envelope)
            t = req.task
            h = t.app_engine_http_request if self._app_engine else t.http_request
            if task.title:
                self._set_uri(h, self._uri + "/" + _quote(task.title))
            elif not self._app_engine and not h.url:
                self._set_uri(h, self._uri)  # too long: raises
            h.body = _envelope.encode(cls.id, task.payload)
        else:
            method, uri, body = _custom_request(cls, custom)
            req.CopyFrom(self._base)
            t = req.task
            h = t.app_engine_http_request if self._app_engine else t.http_request
            self._set_uri(h, self._url_head + uri)
            h.http_method = method
            _set_headers(h.headers, custom.meta)
            h.body = body
        if task.queue is not None:
            parent = self._parent_of(task.queue)
            req.parent = parent
            if task_id:
                t.name = parent + "/tasks/" + task_id
        elif task_id:
            t.name = self._name_prefix + task_id
        headers = h.headers
        if eta is None:
            if now_parts is None:
                headers[EXPECTED_ETA_HEADER] = eta_header(now)
            else:
                headers[EXPECTED_ETA_HEADER] = f"{now_parts[0]}.{now_parts[1]:06d}"
        else:
            ts = t.schedule_time
            ts.seconds, micros = epoch_parts(eta)
            ts.nanos = micros * 1000
            headers[EXPECTED_ETA_HEADER] = eta_header(eta)
        if task.priority:
            headers[PRIORITY_HEADER] = str(task.priority)
        if task.tag:
            headers[TAG_HEADER] = task.tag
        if extra_headers:
            _set_headers(headers, extra_headers)
        if check_size:
            self.check_size(req)
        return req  # type: ignore[no-any-return]

    def parts(
        self, task: Task, *, now: dt.datetime, task_id: str | None, now_parts: tuple[int, int]
    ) -> tuple[Any, ...] | None:
        """What `build(task, now=now, task_id=task_id, now_parts=now_parts)` would put in
        the request, without building it; raises what `build` raises.

        (this template, the queue's full name, task ID, URL, body,
        X-Tq-Expected-Eta value, ETA in epoch microseconds or None); None for
        a class with a `custom` hook, or a task that may be near Cloud Tasks'
        size limit (build it: its size is checked exactly).
        """
        cls = self.cls
        if cls.custom is not None:
            return None
        eta = task.resolve_eta(now)
        uri = self._uri
        if task.title:
            uri = uri + "/" + _quote(task.title)
        if not self._app_engine:
            self._check_uri(uri)
        body = _envelope.encode(cls.id, task.payload)
        parent = self._parent if task.queue is None else self._parent_of(task.queue)
        if eta is None:
            eta_value = f"{now_parts[0]}.{now_parts[1]:06d}"
            eta_us = None
        else:
            seconds, micros = epoch_parts(eta)
            eta_value = eta_header(eta)
            eta_us = seconds * 1_000_000 + micros
        # An upper bound of the task's size: the envelope's exact size, then
        # each string's length (the title's is already quoted, plain ASCII)
        # and a generous allowance for the fields' tags and lengths.
        bound = (
            self._envelope_size + len(body) + len(uri) + len(parent) + len(task_id or "")
            + len(task.tag) + 512
        )  # fmt: skip
        if bound > MAX_TASK_SIZE:
            return None
        return (self, parent, task_id, uri, body, eta_value, eta_us)

    def check_size(self, req: Message) -> None:
        """Raises PayloadTooLarge for a request whose task is over Cloud Tasks' limit.

        A caller holding the serialized request need not call it unless that
        is over the limit (the task is part of it).
        """
        size = req.task.ByteSize()  # type: ignore[attr-defined]
        if size > MAX_TASK_SIZE:
            raise PayloadTooLarge(
                f"task of class {self.cls.id!r} is {size} bytes, over Cloud Tasks' limit of "
                f"{MAX_TASK_SIZE} bytes; store the data elsewhere and pass a reference"
            )

    def _parent_of(self, queue: str) -> str:
        """The full name of a task's own queue (`Task.queue`), worked out once per queue."""
        parent = self._parents.get(queue)
        if parent is None:
            parent = queue_path(queue, self.target)
            if len(self._parents) < 1024:
                self._parents[queue] = parent
        return parent

    def _set_uri(self, h: Any, uri: str) -> None:
        if self._app_engine:
            h.relative_uri = uri
            return
        self._check_uri(uri)
        h.url = uri

    def _check_uri(self, uri: str) -> None:
        if len(uri) > MAX_URI_LENGTH:
            raise ValidationError(
                f"task of class {self.cls.id!r}: URL is {len(uri)} characters, over the "
                f"{MAX_URI_LENGTH} limit; shorten the title"
            )


def template_key(cls: TaskClass) -> tuple[Any, ...]:
    """The fields of a task class its template depends on (besides the class ID)."""
    return (cls.id, cls.queue, cls.routing_prefix, cls.target_host, cls.dispatch_deadline_s)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def epoch_parts(t: dt.datetime) -> tuple[int, int]:
    """(seconds, microseconds) since the epoch of an aware datetime, microseconds >= 0.

    Exact, and several times cheaper than Timestamp.FromDatetime (which goes
    through utctimetuple() and calendar.timegm()).
    """
    d = t - _EPOCH
    return d.days * 86_400 + d.seconds, d.microseconds


def eta_header(t: dt.datetime) -> str:
    """The X-Tq-Expected-Eta value: seconds since the epoch, to the microsecond."""
    seconds, micros = epoch_parts(t)
    if seconds < 0:
        return f"{t.timestamp():.6f}"
    return f"{seconds}.{micros:06d}"


def _set_headers(field: Any, headers: Mapping[str, str]) -> None:
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
