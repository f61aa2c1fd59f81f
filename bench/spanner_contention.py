"""Read-modify-write transactions under contention on the Cloud Spanner emulator.

THREADS threads each run TXNS transactions through
`tq.txn.spanner.run_in_transaction`, every one reading the same counter row,
writing it back plus one, and adding a transactional task: the emulator runs
one read-write transaction at a time and aborts the others, so the time the
run takes is the retry policy's. Each policy runs on a fresh database in the
same emulator, alternating, and the counter must end at THREADS x TXNS.

    .venv/bin/python -m bench.spanner_contention [--threads 8] [--txns 25] [--rounds 3]
        [--policy default] [--policy client] [--policy fixed-0.1]

Policies: `default` (the store's default: jittered exponential backoff),
`client` (`retry=None`: the Spanner client's own pause, 2**n seconds
plus up to 1 s when the server suggests none, as the emulator never does),
`fixed-S` (`default_retry_delay=S`: the same pause before every retry),
`backoff-FIRST-MAX` (`retry=Backoff(FIRST, MAX)`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import tq
from tests._services.spanner import find_emulator, running_emulator, start
from tests.testpb import payloads_pb2 as pb
from tq.txn.spanner import DEFAULT, Backoff, SpannerStore

_COUNTER = "CREATE TABLE Counter (ID STRING(MAX) NOT NULL, N INT64) PRIMARY KEY (ID)"


class _NullSubmitter:
    def submit(self, submission: tq.Submission) -> None:
        pass

    async def submit_async(self, submission: tq.Submission) -> None:
        pass


def _store(database: Any, policy: str) -> tuple[SpannerStore, dict[str, Any]]:
    """The store and the extra run_in_transaction options of a policy."""
    name = f"contention-{policy}"
    if policy == "default":
        return SpannerStore(database, name=name), {}
    if policy == "client":
        return SpannerStore(database, name=name, retry=None), {}
    if policy.startswith("backoff-"):
        first, top = (float(x) for x in policy.removeprefix("backoff-").split("-"))
        return SpannerStore(database, name=name, retry=Backoff(first, top)), {}
    if policy.startswith("fixed-"):
        delay = float(policy.removeprefix("fixed-"))
        return SpannerStore(database, name=name), {"default_retry_delay": delay}
    raise SystemExit(f"unknown policy {policy!r}")


def run(emu: Any, policy: str, threads: int, txns: int) -> tuple[float, int]:
    """(seconds, attempts) of one run of `threads` x `txns` transactions."""
    database = emu.create_database([_COUNTER])
    with database.batch() as b:
        b.insert("Counter", ["ID", "N"], [["c", 0]])
    store, options = _store(database, policy)
    disp = tq.Dispatcher(
        cloud_project="p", cloud_region="r", default_target_host="h", submitter=_NullSubmitter()
    )
    disp.register_task_class(
        tq.TaskClass(id="bump", prototype=pb.Count, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    attempts = 0
    lock = threading.Lock()

    def bump(transaction: Any) -> None:
        nonlocal attempts
        with lock:
            attempts += 1
        ((n,),) = list(transaction.execute_sql("SELECT N FROM Counter WHERE ID = 'c'"))
        transaction.update("Counter", ["ID", "N"], [["c", n + 1]])
        disp.add_task(tq.Task(payload=pb.Count(n=n + 1)))

    def worker() -> None:
        for _ in range(txns):
            store.run_in_transaction(bump, **options)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    started = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    took = time.perf_counter() - started
    with database.snapshot() as snap:
        ((n,),) = list(snap.execute_sql("SELECT N FROM Counter WHERE ID = 'c'"))
    if n != threads * txns:
        raise SystemExit(f"{policy}: the counter is {n}, not {threads * txns}")
    tq.txn.unregister_store(store.name)
    emu.drop_database(database)
    return took, attempts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--txns", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--policy", action="append", dest="policies")
    ap.add_argument("--tiny", action="store_true", help="2 threads x 3 transactions, 1 round")
    a = ap.parse_args()
    if a.tiny:
        a.threads, a.txns, a.rounds = 2, 3, 1
    policies = a.policies or ["default", "client", "fixed-0.1"]
    binary = find_emulator()
    if binary is None:
        raise SystemExit("Cloud Spanner emulator not found")
    results: dict[str, list[tuple[float, int]]] = {p: [] for p in policies}
    with running_emulator(binary, Path(tempfile.mkdtemp()) / "emulator.log") as host:
        emu = start(host)
        for _ in range(a.rounds):
            for policy in policies:
                results[policy].append(run(emu, policy, a.threads, a.txns))
    total = a.threads * a.txns
    print(f"{a.threads} threads x {a.txns} read-modify-write transactions, median of {a.rounds}")
    print()
    print("| policy | seconds | transactions/s | attempts per transaction | runs (s) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for policy, runs in results.items():
        secs = statistics.median(r[0] for r in runs)
        tries = statistics.median(r[1] for r in runs) / total
        each = ", ".join(f"{r[0]:.1f}" for r in runs)
        label = f"{policy} ({DEFAULT})" if policy == "default" else policy
        print(f"| {label} | {secs:.2f} | {total / secs:.0f} | {tries:.1f} | {each} |")


if __name__ == "__main__":
    main()
