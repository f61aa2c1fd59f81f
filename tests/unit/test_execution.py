"""ExecutionInfo: what the push headers say about the running attempt."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

import tq
from tq._execution import ExecutionInfo, executing
from tq._request import eta_header

ETA = dt.datetime(2026, 1, 1, 12, 30, 15, 250000, tzinfo=dt.UTC)


def test_cloud_tasks_headers_are_read() -> None:
    info = ExecutionInfo.from_headers(
        "greet",
        {
            "x-cloudtasks-queuename": "emails",
            "x-cloudtasks-taskname": "abc123",
            "x-cloudtasks-taskretrycount": "3",
            "x-cloudtasks-taskexecutioncount": "2",
            "x-cloudtasks-tasketa": f"{ETA.timestamp():.6f}",
            "x-cloudtasks-taskpreviousresponse": "500",
            "x-cloudtasks-taskretryreason": "HTTP 500",
        },
    )
    assert info == ExecutionInfo(
        task_class="greet",
        execution_count=2,
        retry_count=3,
        task_id="abc123",
        queue="emails",
        eta=ETA,
        retry_reason="HTTP 500",
        previous_response=500,
    )


def test_missing_headers_give_a_first_attempt() -> None:
    info = ExecutionInfo.from_headers("greet", {})
    assert info == ExecutionInfo(task_class="greet")
    assert (info.execution_count, info.retry_count, info.eta, info.previous_response) == (
        0,
        0,
        None,
        None,
    )


@pytest.mark.parametrize("value", ["", "x", "-4", "1.5"])
def test_garbage_counts_read_as_zero(value: str) -> None:
    info = ExecutionInfo.from_headers(
        "c", {"x-cloudtasks-taskexecutioncount": value, "x-cloudtasks-taskretrycount": value}
    )
    assert (info.execution_count, info.retry_count) == (0, 0)


@pytest.mark.parametrize("value", ["soon", "1e400", "-1e20"])
def test_garbage_eta_reads_as_none(value: str) -> None:
    assert ExecutionInfo.from_headers("c", {"x-cloudtasks-tasketa": value}).eta is None


def test_expected_eta_is_read_to_the_microsecond_on_both_platforms() -> None:
    when = dt.datetime(2026, 5, 4, 3, 2, 1, 987654, tzinfo=dt.UTC)
    header = {"x-tq-expected-eta": eta_header(when)}
    assert ExecutionInfo.from_headers("c", header).expected_eta == when
    assert ExecutionInfo.from_headers("c", header, app_engine=True).expected_eta == when


@pytest.mark.parametrize("value", ["", "soon", "1e400", "12.3456789"])
def test_garbage_expected_eta_reads_as_none_or_a_float_time(value: str) -> None:
    got = ExecutionInfo.from_headers("c", {"x-tq-expected-eta": value}).expected_eta
    if value == "12.3456789":  # not tq's form: read as a float, like the ETA header
        assert got == dt.datetime.fromtimestamp(12.3456789, dt.UTC)
    else:
        assert got is None


def test_full_queue_and_task_paths_are_shortened() -> None:
    # The emulator sends full paths where Cloud Tasks sends IDs.
    info = ExecutionInfo.from_headers(
        "c",
        {
            "x-cloudtasks-queuename": "projects/p/locations/l/queues/emails",
            "x-cloudtasks-taskname": "projects/p/locations/l/queues/emails/tasks/t1",
        },
    )
    assert (info.queue, info.task_id) == ("emails", "t1")


def test_app_engine_headers_count_only_on_app_engine() -> None:
    headers = {
        "x-appengine-queuename": "gae",
        "x-appengine-taskname": "t9",
        "x-appengine-taskexecutioncount": "4",
    }
    assert ExecutionInfo.from_headers("c", headers).queue == ""
    info = ExecutionInfo.from_headers("c", headers, app_engine=True)
    assert (info.queue, info.task_id, info.execution_count) == ("gae", "t9", 4)


def test_cloud_tasks_headers_win_over_app_engine_ones() -> None:
    headers = {"x-cloudtasks-queuename": "ct", "x-appengine-queuename": "gae"}
    assert ExecutionInfo.from_headers("c", headers, app_engine=True).queue == "ct"


def test_execution_info_outside_a_handler_raises() -> None:
    with pytest.raises(LookupError, match="only available inside a task handler"):
        tq.execution_info()


def test_executing_sets_the_info_for_the_block() -> None:
    info = ExecutionInfo(task_class="c", execution_count=1)
    with executing(info):
        assert tq.execution_info() is info
    with pytest.raises(LookupError):
        tq.execution_info()


async def test_execution_info_is_per_asyncio_task() -> None:
    async def run(n: int) -> int:
        with executing(ExecutionInfo(task_class="c", execution_count=n)):
            await asyncio.sleep(0)
            return tq.execution_info().execution_count

    assert await asyncio.gather(*(run(n) for n in range(5))) == list(range(5))
