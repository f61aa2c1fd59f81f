"""Serves tests._once_apps under uvicorn on a given port, when told to.

Usage: python -m tests._once_serve PORT

Builds the app from the environment (see tests/_once_apps.py), prints
"ready" once everything is imported, waits for a line on stdin, then binds
127.0.0.1:PORT and serves until killed. A test starts the replacement of a
process it expects to die ahead of time, and lets it bind the moment the
first one is gone.
"""

from __future__ import annotations

import socket
import sys

import uvicorn

from tests import _once_apps


def main() -> None:
    port = int(sys.argv[1])
    app = _once_apps.app
    print("ready", flush=True)
    sys.stdin.readline()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
