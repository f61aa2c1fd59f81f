"""What Cloud Tasks would push for a task: headers, body, and where it goes."""

from __future__ import annotations

import urllib.parse

from google.protobuf.message import Message

import tq
from tq import _envelope, _request
from tq._taskclass import DEFAULT_ROUTING_PREFIX
from tqtesting._records import TaskRecord


def push_headers(rec: TaskRecord) -> tuple[dict[str, str], bytes]:
    """The (lowercase) headers and the body of the next push of `rec`.

    The request's own headers plus the ones Cloud Tasks adds (the
    `x-appengine-*` names for App Engine requests).
    """
    _, _, req_headers, body = _request.http_parts(rec.request)
    app_engine = rec.request.task.HasField("app_engine_http_request")  # type: ignore[attr-defined]
    headers = {k.lower(): v for k, v in req_headers.items()}
    p = "x-appengine-" if app_engine else "x-cloudtasks-"
    headers["user-agent"] = "AppEngine-Google" if app_engine else "Google-Cloud-Tasks"
    headers[p + "queuename"] = rec.queue
    headers[p + "taskname"] = rec.task_id
    # Every attempt here reaches the handler, so both counts are the same.
    headers[p + "taskretrycount"] = str(rec.attempts)
    headers[p + "taskexecutioncount"] = str(rec.attempts)
    headers[p + "tasketa"] = f"{rec.eta.timestamp():.6f}"
    if rec.last_status is not None:
        headers[p + "taskpreviousresponse"] = str(rec.last_status)
        headers[p + "taskretryreason"] = f"HTTP status {rec.last_status} ({rec.outcome})"
    return headers, body


def push_class_id(dispatcher: tq.Dispatcher, class_id: str, request: Message) -> str | None:
    """The class ID in the push URL, or None when the URL is not tq's push endpoint.

    The endpoint is the class's routing prefix (the default one for a class
    the dispatcher does not know).
    """
    path = urllib.parse.urlsplit(_request.http_parts(request)[0]).path
    cls = dispatcher.task_class_by_id(class_id)
    prefix = cls.routing_prefix if cls is not None else DEFAULT_ROUTING_PREFIX
    if not path.startswith(prefix):
        return None
    return urllib.parse.unquote(path[len(prefix) :].split("/", 1)[0]) or None


def decode_payload(dispatcher: tq.Dispatcher, sub: tq.Submission) -> Message | None:
    """A copy of the submission's payload, else the envelope decoded with the registry.

    None when there is no envelope to decode (a CustomPayload read back
    from a reminder) or its class or type is unknown.
    """
    if sub.payload is not None:
        copy = type(sub.payload)()
        copy.CopyFrom(sub.payload)
        return copy
    body = _request.http_parts(sub.request)[3]
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
