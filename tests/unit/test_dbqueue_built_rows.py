"""A task row from the parts add_task builds a request from equals the row read from it.

The database queue writes the rows of `add_task`'s tasks from the parts
their requests are made of (`tq._submitter.BuiltSubmission`), whose request
is built only when something reads it; any other submission is read back
from its request (`task_row`). Both must give the same row for every kind
of task (title, ETA or delay, priority, tag, its own queue, a deduplicated
name, OIDC, App Engine, a dispatch deadline), and the request built when
read must be the one add_task builds for any other submitter.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import pytest

import tq
from tests._dbqueue import clock_fixture  # noqa: F401
from tests.testpb import payloads_pb2 as pb
from tq._submitter import BuiltSubmission
from tq.dbqueue._taskrow import built_row, task_row
from tqtesting import FakeClock

NOW_US = 1_800_000_000_123_456


class Capture:
    """A submitter that keeps the submissions of batches and says it takes parts."""

    takes_parts = True

    def __init__(self) -> None:
        self.got: list[tq.Submission] = []

    def submit(self, submission: tq.Submission) -> str | None:
        self.got.append(submission)
        return None

    async def submit_async(self, submission: tq.Submission) -> str | None:
        return self.submit(submission)

    def submit_batch(self, submissions: Sequence[tq.Submission]) -> list[str | None]:
        self.got.extend(submissions)
        return [None] * len(submissions)


def dispatcher(capture: Capture, **options: Any) -> tq.Dispatcher:
    disp = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="app.example.com",
        submitter=capture, **options,
    )  # fmt: skip
    disp.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    )
    disp.register_task_class(
        tq.TaskClass(
            id="count", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="q",
            dispatch_deadline_s=60,
        )
    )  # fmt: skip
    return disp


def tasks() -> list[tq.Task]:
    later = tq.clock.now().replace(microsecond=678_901) + dt.timedelta(days=2)
    return [
        tq.Task(payload=pb.Greet(name="plain")),
        tq.Task(payload=pb.Greet(name="titled"), title="a/b:c~d"),
        tq.Task(payload=pb.Greet(name="eta"), eta=later),
        tq.Task(payload=pb.Greet(name="delay"), delay=dt.timedelta(minutes=5)),
        tq.Task(payload=pb.Greet(name="priority"), priority=7),
        tq.Task(payload=pb.Greet(name="negative"), priority=-3, eta=later),
        tq.Task(payload=pb.Greet(name="tag"), tag='say "hi" \\'),
        tq.Task(payload=pb.Greet(name="both"), priority=1000, tag="t"),
        tq.Task(payload=pb.Greet(name="own queue"), queue="other"),
        tq.Task(payload=pb.Greet(name="full queue"), queue="projects/p/locations/l/queues/x"),
        tq.Task(payload=pb.Greet(name="dedup"), deduplication_key="k1"),
        tq.Task(payload=pb.Count(n=5)),
        tq.Task(payload=pb.Greet(name="café ☕")),
    ]


def rows_both_ways(sub: tq.Submission) -> tuple[dict[str, Any], dict[str, Any]]:
    assert isinstance(sub, BuiltSubmission)
    names = iter(["gen1", "gen1"])
    kw: dict[str, Any] = {
        "now_us": NOW_US, "reserve_us": 3_600_000_000, "generated_name": lambda: next(names),
        "priority_step_us": 2_000_000,
    }  # fmt: skip
    read = task_row(sub.request, sub.task_class, **kw)
    built = built_row(sub.task_class, sub.parts, {}, **kw)
    read["headers"], built["headers"] = json.loads(read["headers"]), json.loads(built["headers"])
    return built, read


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"push_as": "sa@proj.iam.gserviceaccount.com"},
        {"push_as": "sa@proj.iam.gserviceaccount.com", "push_audience": "https://aud"},
        {"app_engine": True},
        {"target_scheme": "http"},
    ],
)
def test_a_row_from_built_parts_is_the_row_read_from_the_request(options: dict[str, Any]) -> None:
    capture = Capture()
    disp = dispatcher(capture, **options)
    all_tasks = tasks()
    disp.add_task(*all_tasks)
    disp.add_task(tq.Task(payload=pb.Greet(name="alone"), title="t"))  # submit, not a batch
    assert len(capture.got) == len(all_tasks) + 1
    for sub in capture.got:
        built, read = rows_both_ways(sub)
        assert built == read


def test_a_submitter_that_does_not_take_parts_gets_plain_submissions() -> None:
    capture = Capture()
    capture.takes_parts = False  # type: ignore[misc]
    disp = dispatcher(capture)
    disp.add_task(*tasks()[:3])
    assert capture.got
    assert not any(isinstance(s, BuiltSubmission) for s in capture.got)


def test_a_request_built_when_read_is_the_one_built_for_other_submitters(
    clock: FakeClock,
) -> None:
    lazy, eager = Capture(), Capture()
    eager.takes_parts = False  # type: ignore[misc]
    for capture in (lazy, eager):
        dispatcher(capture, push_as="sa@proj.iam.gserviceaccount.com").add_task(*tasks())
    assert all(isinstance(s, BuiltSubmission) for s in lazy.got)
    for a, b in zip(lazy.got, eager.got, strict=True):
        assert a.destination == b.destination == b.request.parent  # type: ignore[attr-defined]
        assert a.request == b.request
        assert a.request is a.request  # built once


def test_a_task_near_the_size_limit_has_its_request_built_and_its_size_checked() -> None:
    capture = Capture()
    disp = dispatcher(capture)
    with pytest.raises(tq.PayloadTooLarge):
        disp.add_task(tq.Task(payload=pb.Greet(name="x" * (1024 * 1024))))
    disp.add_task(tq.Task(payload=pb.Greet(name="x" * (1024 * 1024 - 200))))
    (sub,) = capture.got
    assert not isinstance(sub, BuiltSubmission)
