"""6. tqtesting.Scheduler: tasks per second through the real push path in memory.

  tq          N tasks added with add_task inside `testing_context()` (the
              Scheduler takes them), then `scheduler.run()` until drained:
              each task goes through tq's push path (envelope, headers,
              handler, outcome) on the fake clock. Counted: N / (add + run).
  chain       one task whose `async def` handler adds the next, N times
              (how tests of task chains use it).
  baseline    the push path alone: `handle_push` called N times in a loop
              on prebuilt envelopes and headers (no scheduling, no add_task),
              the bound of any in-memory runner built on it.

Also measured, to say what bounds the figure (printed as CPU per task):
  add_task    `add_task` alone, into a submitter that only keeps the
              submissions (building the request, validation, metrics).
  own         the Scheduler alone: the same submissions handed to
              `Scheduler.submit`, then `run()` with `handle_push` replaced by
              a stub that answers 200 (records, heap, headers, the loop).

Goal: >= 10,000 tasks/s (absolute, so a busy machine reads low: compare
with the baseline measured in the same run).

Usage: python -m bench.scheduler [--n 5000] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import tq
import tqtesting
from bench import _common as c
from tests.testpb import payloads_pb2 as pb
from tq import _envelope, _push

# CPU seconds of this process: everything measured here runs in it, and on a
# shared machine wall time mostly measures the other processes.
CLOCK = time.process_time


def dispatcher() -> tuple[tq.Dispatcher, list[int]]:
    disp = tq.Dispatcher(
        cloud_project="bench", cloud_region="us-central1", default_target_host="app.example.com"
    )
    seen = [0]

    @disp.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q")
    async def greet(payload: pb.Greet) -> None:
        seen[0] += 1

    @disp.task_class(id="count", prototype=pb.Count, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q")
    async def count(payload: pb.Count) -> None:
        seen[0] += 1
        if payload.n > 1:
            await disp.add_task_async(tq.Task(payload=pb.Count(n=payload.n - 1)))

    return disp, seen


def batch(n: int) -> float:
    disp, seen = dispatcher()
    task = tq.Task(payload=pb.Greet(name="ann"))
    t0 = CLOCK()
    with tqtesting.testing_context(disp) as sched:
        for _ in range(n):
            disp.add_task(task)
        sched.run(tqtesting.stop_when_drained(), tqtesting.max_executions(n))
    took = CLOCK() - t0
    assert seen[0] == n, seen
    return n / took


def chain(n: int) -> float:
    disp, seen = dispatcher()
    t0 = CLOCK()
    with tqtesting.testing_context(disp) as sched:
        disp.add_task(tq.Task(payload=pb.Count(n=n)))
        sched.run(tqtesting.stop_when_drained(), tqtesting.max_executions(n))
    took = CLOCK() - t0
    assert seen[0] == n, seen
    return n / took


def push_path(n: int) -> float:
    disp, seen = dispatcher()
    body = _envelope.encode("greet", pb.Greet(name="ann"))
    headers = {
        "content-type": "application/json", "x-cloudtasks-queuename": "q",
        "x-cloudtasks-taskname": "1", "x-cloudtasks-taskretrycount": "0",
        "x-cloudtasks-taskexecutioncount": "0", "x-cloudtasks-tasketa": "1767225600.0",
    }  # fmt: skip

    async def go() -> float:
        t0 = CLOCK()
        for _ in range(n):
            r = await _push.handle_push(disp, "greet", headers, body)
            assert r.status == 200
        return n / (CLOCK() - t0)

    r = asyncio.run(go())
    assert seen[0] == n
    return r


class _Keep:
    """A submitter that only keeps what it is given."""

    def __init__(self) -> None:
        self.submissions: list[tq.Submission] = []

    def submit(self, sub: tq.Submission) -> None:
        self.submissions.append(sub)

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submissions.append(sub)


def _added(n: int) -> tuple[tq.Dispatcher, list[tq.Submission], float]:
    disp, _ = dispatcher()
    task = tq.Task(payload=pb.Greet(name="ann"))
    keep = _Keep()
    with tq.use_submitter(keep), tq.clock.use_clock(tqtesting.FakeClock()):
        t0 = CLOCK()
        for _ in range(n):
            disp.add_task(task)
        took = CLOCK() - t0
    return disp, keep.submissions, took


def add_only(n: int) -> float:
    return n / _added(n)[2]


async def _answer_ok(
    disp: tq.Dispatcher, class_id: str | None, headers: Mapping[str, str], body: bytes
) -> _push.PushResult:
    return _push.PushResult(200, "ok", class_id or "")


def scheduler_only(n: int) -> float:
    disp, subs, _ = _added(n)
    real = _push.handle_push
    _push.handle_push = _answer_ok  # the Scheduler calls it through the module
    try:
        t0 = CLOCK()
        with tqtesting.testing_context(disp) as sched:
            for sub in subs:
                sched.submit(sub)
            sched.run(tqtesting.stop_when_drained(), tqtesting.max_executions(n))
        took = CLOCK() - t0
    finally:
        _push.handle_push = real
    assert len(sched.tasks().finished()) == n
    return n / took


def main() -> None:
    ap = c.args(__doc__)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--wall", action="store_true", help="count wall time, not CPU time")
    a = ap.parse_args()
    global CLOCK
    if a.wall:
        CLOCK = time.perf_counter
    n, rounds = (50, 1) if a.tiny else (a.n, a.rounds)
    batch(min(n, 500))  # warm up
    res = c.interleaved(
        {
            "tq": lambda: batch(n),
            "chain": lambda: chain(n),
            "baseline": lambda: push_path(n),
            "add": lambda: add_only(n),
            "own": lambda: scheduler_only(n),
        },
        rounds,
    )
    us = {k: 1e6 / c.median(v) for k, v in res.items()}
    table = c.Table("6. tqtesting.Scheduler: tasks/s through the real push path in memory")
    for key, case in (("tq", "Scheduler, N tasks added then run"), ("chain", "Scheduler, chain")):
        row = table.ratio_row(case, res[key], res["baseline"], unit=" tasks/s")
        row.goal, row.met = ">= 10,000 tasks/s", row.tq >= 10_000
    table.notes.append(
        f"Tasks per {'wall' if a.wall else 'CPU'}-second of the benchmark process. "
        f"N = {n}. Baseline: handle_push alone in a loop (the push path every in-memory "
        f"runner shares), measured in the same run; the goal is absolute. Load average "
        f"{c.load_average()}."
    )
    table.notes.append(
        f"CPU per task: N tasks added then run {us['tq']:.0f} us = add_task "
        f"{us['add']:.0f} us + push path {us['baseline']:.0f} us + the Scheduler's own "
        f"(submit, records, headers, loop; push stubbed) {us['own']:.0f} us "
        f"(sum {us['add'] + us['baseline'] + us['own']:.0f} us). add_task plus the push path "
        f"alone allow {1e6 / (us['add'] + us['baseline']):,.0f} tasks/s."
    )
    table.print()


if __name__ == "__main__":
    main()
