"""What Cloud Tasks would push for a task: headers, body, and where it goes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import urllib.parse
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import Message

import tq
from tq import _envelope, _request
from tq._taskclass import DEFAULT_ROUTING_PREFIX
from tq._topic import is_publish


@dataclasses.dataclass(slots=True, eq=False)  # not frozen: that makes it slower to build
class Delivery:
    """What every push of one task carries, worked out once when it is submitted.

    Attributes:
      class_id: the class ID in the push URL; None when the URL is not tq's
        push endpoint (the task is then not executed).
      headers: the request's own headers (lowercase) and the ones Cloud Tasks
        adds that stay the same across attempts.
      body: the request body.
      prefix: `x-cloudtasks-`, or `x-appengine-` for App Engine requests.
      message: for a Pub/Sub message, the `tq.pubsub.Received` one
        subscription gets (delivered by `tqtesting._topics.deliver`).
      dispatcher: for a Pub/Sub message, the dispatcher of its subscription.
    """

    class_id: str | None
    headers: dict[str, str]
    body: bytes
    prefix: str
    message: Any = None
    dispatcher: Any = None

    def attempt_headers(
        self, attempts: int, eta: dt.datetime, last_status: int | None, last_outcome: str
    ) -> dict[str, str]:
        """The headers of the push after `attempts` earlier ones, due at `eta`."""
        headers = self.headers.copy()
        p = self.prefix
        # Every attempt here reaches the handler, so both counts are the same.
        count = str(attempts)
        headers[p + "taskretrycount"] = count
        headers[p + "taskexecutioncount"] = count
        headers[p + "tasketa"] = f"{eta.timestamp():.6f}"
        if last_status is not None:
            headers[p + "taskpreviousresponse"] = str(last_status)
            headers[p + "taskretryreason"] = f"HTTP status {last_status} ({last_outcome})"
        return headers


def delivery(dispatcher: tq.Dispatcher, class_id: str, request: Message, name: str) -> Delivery:
    """The `Delivery` of a task named `name` (full name) built from `request`."""
    task = request.task  # type: ignore[attr-defined]
    app_engine = task.HasField("app_engine_http_request")
    if app_engine:
        http = task.app_engine_http_request
        url, p = http.relative_uri, "x-appengine-"
        headers = _lowercase(http.headers)
        headers["user-agent"] = "AppEngine-Google"
    else:
        http = task.http_request
        url, p = http.url, "x-cloudtasks-"
        headers = _lowercase(http.headers)
        headers["user-agent"] = "Google-Cloud-Tasks"
    queue_path, _, task_id = name.rpartition("/tasks/")
    headers[p + "queuename"] = queue_path.rsplit("/", 1)[-1]
    headers[p + "taskname"] = task_id
    return Delivery(_path_class_id(dispatcher, class_id, url), headers, http.body, p)


def _lowercase(headers: Mapping[str, str]) -> dict[str, str]:
    # Iterating the protobuf map's keys is faster than its items().
    return {k.lower(): headers[k] for k in headers}


# (routing prefix, URL) -> the class ID in the URL: tasks of a class share
# their URL unless they have titles. Bounded: cleared when full.
_class_in_url: dict[tuple[str, str], str | None] = {}
_CLASS_IN_URL_MAX = 4096


def _path_class_id(dispatcher: tq.Dispatcher, class_id: str, url: str) -> str | None:
    """The class ID in the push URL, or None when the URL is not tq's push endpoint.

    The endpoint is the class's routing prefix (the default one for a class
    the dispatcher does not know).
    """
    cls = dispatcher.task_class_by_id(class_id)
    prefix = cls.routing_prefix if cls is not None else DEFAULT_ROUTING_PREFIX
    key = (prefix, url)
    try:
        return _class_in_url[key]
    except KeyError:
        pass
    path = urllib.parse.urlsplit(url).path
    found = None
    if path.startswith(prefix):
        found = urllib.parse.unquote(path[len(prefix) :].split("/", 1)[0]) or None
    if len(_class_in_url) >= _CLASS_IN_URL_MAX:
        _class_in_url.clear()
    _class_in_url[key] = found
    return found


def decode_payload(dispatcher: tq.Dispatcher, sub: tq.Submission) -> Message | None:
    """A copy of the submission's payload, else the envelope decoded with the registry.

    None when there is no envelope to decode (a CustomPayload read back
    from a reminder) or its class or type is unknown.
    """
    if sub.payload is not None:
        copy = type(sub.payload)()
        copy.CopyFrom(sub.payload)
        return copy
    req = sub.request
    body = req.data if is_publish(req) else _request.http_parts(req)[3]  # type: ignore[attr-defined]
    try:
        class_id, type_name, json_body = _envelope.peek(body)
    except _envelope.EnvelopeError:
        return None
    cls = dispatcher.task_class_by_id(class_id)
    if cls is None or cls.type_name != type_name:
        return None
    try:
        return _envelope.decode_body(json_body, cls.prototype)
    except _envelope.EnvelopeError:
        return None
