"""ASGI apps that database-queue worker subprocesses push into, in tests.

Each push is appended as a line "<task name> <pid>" to the file named by
the TQ_TEST_PUSHES environment variable plus ".<pid>" (one file per
process, so lines never interleave).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any


def _record(scope: dict[str, Any]) -> None:
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    line = f"{headers.get('x-cloudtasks-taskname', '?')} {os.getpid()}\n"
    with open(f"{os.environ['TQ_TEST_PUSHES']}.{os.getpid()}", "a") as f:
        f.write(line)
        f.flush()


async def _drain(receive: Any) -> None:
    while (await receive()).get("more_body"):
        pass


async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Records the push and answers 200."""
    if scope["type"] != "http":
        return
    await _drain(receive)
    _record(scope)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def hanging(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Records the push and never answers."""
    if scope["type"] != "http":
        return
    await _drain(receive)
    _record(scope)
    await asyncio.Event().wait()


def pushes(base: str) -> list[tuple[str, int]]:
    """Every (task name, pid) recorded under `base` by any process."""
    import glob

    out = []
    for path in glob.glob(f"{glob.escape(base)}.*"):
        with open(path) as f:
            for line in f:
                name, pid = line.split()
                out.append((name, int(pid)))
    return out
