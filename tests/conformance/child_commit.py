"""A child process that commits a transaction with a task, then dies hard.

Usage: python -m tests.conformance.child_commit FACTORY ARG REMINDER_ID

Opens a harness with FACTORY(ARG) (see harness.ChildSpec), commits a
business row and one task whose reminder ID is REMINDER_ID, and exits with
status 17 from inside the submitter: the commit is done, the happy path has
not deleted the reminder. Exits 3 if the transaction returns normally.
"""

from __future__ import annotations

import importlib
import os
import sys

import tq
from tests.conformance.harness import RowWriter, StoreHarness
from tests.conformance.support import IdSource, make_dispatcher
from tests.testpb import payloads_pb2 as pb
from tq._submitter import Submission


class DyingSubmitter:
    def submit(self, submission: Submission) -> None:
        os._exit(17)

    async def submit_async(self, submission: Submission) -> None:
        os._exit(17)


def main() -> None:
    factory, arg, reminder_id = sys.argv[1:4]
    module, _, function = factory.partition(":")
    harness: StoreHarness = getattr(importlib.import_module(module), function)(arg)
    ids = IdSource()
    ids.push([reminder_id])
    disp = make_dispatcher(DyingSubmitter(), ids)  # type: ignore[arg-type]

    def body(rows: RowWriter) -> None:
        rows.insert_row("child-row")
        disp.add_task(tq.Task(payload=pb.Greet(name="from-child")))

    harness.run_in_transaction(body)
    sys.exit(3)


if __name__ == "__main__":
    main()
