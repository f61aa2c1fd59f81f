"""The raw ASGI side of a push: its headers and body read, its response sent.

Plain ASGI messages, no Starlette Request or Response per push: the push
endpoints (`tq.asgi`, `tq.pubsub`) serve every push through these.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send


def _headers(scope: Scope) -> dict[str, str]:
    # ASGI header names are lowercase already; a client's are lowercased
    # anyway. A repeated header's values are joined with ", " (RFC 9110,
    # 5.3), never one picked: two Authorization headers then carry no valid
    # token, whichever one a proxy looked at.
    raw = scope["headers"]
    if not isinstance(raw, list):
        raw = list(raw)
    names = _NAMES
    headers = {names[k]: v.decode("latin-1") for k, v in raw}
    if len(headers) == len(raw):
        return headers  # no header repeated: the common case, in one pass
    headers = {}
    for k, v in raw:
        name, value = names[k], v.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class _HeaderNames(dict[bytes, str]):
    """Header names as str, lowercase; the usual ones looked up, others decoded each time
    (never kept: the names a client sends are its choice)."""

    def __missing__(self, name: bytes) -> str:
        return name.decode("latin-1").lower()


_NAMES = _HeaderNames(
    (n.encode(), n)
    for n in (
        "host", "content-length", "content-type", "user-agent", "accept", "accept-encoding",
        "authorization", "connection", "traceparent", "tracestate", "x-cloud-trace-context",
        "x-forwarded-for", "x-forwarded-proto", "forwarded", "via",
        "x-cloudtasks-queuename", "x-cloudtasks-taskname", "x-cloudtasks-taskretrycount",
        "x-cloudtasks-taskexecutioncount", "x-cloudtasks-tasketa",
        "x-cloudtasks-taskpreviousresponse", "x-cloudtasks-taskretryreason",
        "x-appengine-queuename", "x-appengine-taskname", "x-appengine-taskretrycount",
        "x-appengine-taskexecutioncount", "x-appengine-tasketa",
        "x-appengine-taskpreviousresponse", "x-appengine-taskretryreason",
        "x-appengine-cron", "x-cloudscheduler-scheduletime", "x-tq-expected-eta",
    )
)  # fmt: skip


def _full_path(scope: Scope) -> str:
    """The request path from the server's root, whatever the mount."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    # ASGI servers and Starlette mounts keep root_path inside path; older ones do not.
    return path if path.startswith(root) else root + path


def _path_and_query(path: str, scope: Scope) -> str:
    query: bytes = scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The body, or None as soon as it grows past `limit` bytes.

    Raises starlette's ClientDisconnect if the client goes away first (as
    `Request.stream()` does).
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk: bytes = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise ClientDisconnect()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# What Starlette's ServerErrorMiddleware sends for an exception (debug off).
_ERROR_BODY = b"Internal Server Error"
_ERROR_HEADERS = [
    (b"content-length", str(len(_ERROR_BODY)).encode()),
    (b"content-type", b"text/plain; charset=utf-8"),
]

# What PlainTextResponse(outcome + "\n", status_code=status) would send
# (Response(status_code=204) for 204: no body, no headers).
_TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")


async def _respond(send: Send, status: int, outcome: str) -> None:
    if status == 204:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = (outcome + "\n").encode()
    headers = [(b"content-length", str(len(body)).encode()), _TEXT_PLAIN]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


RESULT_HEADER = "x-tq-result"
"""Marks a push response whose body is the handler's result (the database queue keeps it)."""


async def _respond_result(send: Send, status: int, body: bytes) -> None:
    headers = [
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/octet-stream"),
        (RESULT_HEADER.encode(), b"1"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
