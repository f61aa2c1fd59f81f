"""`python -m tq.pubsub subscribe`: run a pull worker (`Subscriber`) in the foreground.

    python -m tq.pubsub subscribe --dispatcher myapp.tasks:disp \\
        --subscription projects/P/subscriptions/S [--max-messages 100] [--concurrency 10]

`--dispatcher` names a `tq.Dispatcher` ("module:attribute"; importing the
module registers its task classes and handlers). SIGTERM or SIGINT stops the
worker gracefully (the handlers running finish and their messages are acked
or nacked); exit 0. `--endpoint` (or `$PUBSUB_EMULATOR_HOST`) points it at
an emulator.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from tq._dispatcher import Dispatcher
from tq.pubsub._subscriber import Subscriber


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise SystemExit(f"--dispatcher must look like 'package.module:disp', not {spec!r}")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tq.pubsub", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("subscribe", help="receive a subscription's messages (pull)")
    s.add_argument("--dispatcher", required=True, metavar="MODULE:ATTR")
    s.add_argument("--subscription", required=True, help="projects/P/subscriptions/S, or an ID")
    s.add_argument("--endpoint", default=None, help="host:port of a Pub/Sub emulator")
    s.add_argument("--max-messages", type=int, default=100)
    s.add_argument("--max-bytes", type=int, default=100 * 1024 * 1024)
    s.add_argument("--concurrency", type=int, default=10)
    s.add_argument("--log-level", default="INFO")
    return p


async def _run(worker: Subscriber) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    await worker.run()


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    disp = _load(a.dispatcher)
    if not isinstance(disp, Dispatcher):
        raise SystemExit(f"--dispatcher {a.dispatcher!r} is not a tq.Dispatcher: {disp!r}")
    worker = Subscriber(
        disp, a.subscription, endpoint=a.endpoint, max_messages=a.max_messages,
        max_bytes=a.max_bytes, concurrency=a.concurrency,
    )  # fmt: skip
    asyncio.run(_run(worker))
    return 0
