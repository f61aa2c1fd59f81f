"""Done markers' keys and retention (tq.txn.marker_key and its bounds); no database."""

from __future__ import annotations

import datetime as dt

import pytest

import tq
from tq._execution import ExecutionInfo, executing
from tq._request import eta_header
from tq.txn import _markers

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


def _headers(**extra: str) -> dict[str, str]:
    return {
        "x-cloudtasks-queuename": "projects/p/locations/l/queues/emails",
        "x-cloudtasks-taskname": "projects/p/locations/l/queues/emails/tasks/0f3a",
        "x-tq-expected-eta": eta_header(WHEN),
        **extra,
    }


def test_the_key_is_queue_task_and_expected_eta_the_same_on_every_attempt() -> None:
    keys = {
        tq.txn.marker_key(ExecutionInfo.from_headers("pay", _headers(**retry)))
        for retry in (
            {},
            {"x-cloudtasks-tasketa": "1767323100.0", "x-cloudtasks-taskretrycount": "1"},
            {"x-cloudtasks-tasketa": "1767323999.5", "x-cloudtasks-taskexecutioncount": "7"},
        )
    }  # Cloud Tasks moves its own ETA and counts on each retry; the key stays
    assert keys == {"emails/0f3a/1767323045.678901"}


def test_two_adds_of_one_name_have_two_keys() -> None:
    # A deduplicated task added again after the queue forgot the name.
    later = _headers(**{"x-tq-expected-eta": eta_header(WHEN + dt.timedelta(hours=2))})
    first = tq.txn.marker_key(ExecutionInfo.from_headers("pay", _headers()))
    second = tq.txn.marker_key(ExecutionInfo.from_headers("pay", later))
    assert first != second
    assert first.rsplit("/", 1)[0] == second.rsplit("/", 1)[0]


def test_a_push_tq_did_not_build_is_keyed_by_queue_and_name() -> None:
    headers = _headers()
    del headers["x-tq-expected-eta"]
    assert tq.txn.marker_key(ExecutionInfo.from_headers("pay", headers)) == "emails/0f3a"


def test_the_key_defaults_to_the_running_task() -> None:
    with executing(ExecutionInfo(task_class="c", queue="q", task_id="t")):
        assert tq.txn.marker_key() == "q/t"
    with pytest.raises(LookupError):
        tq.txn.marker_key()


@pytest.mark.parametrize(
    "info",
    [
        ExecutionInfo(task_class="c", queue="q"),
        ExecutionInfo(task_class="c", task_id="t"),
        ExecutionInfo(task_class="c"),
    ],
    ids=["no task name", "no queue", "neither"],
)
def test_a_task_without_a_name_has_no_key(info: ExecutionInfo) -> None:
    with pytest.raises(tq.ConfigError, match="X-CloudTasks-TaskName"):
        tq.txn.marker_key(info)


@pytest.mark.parametrize("key", ["", "x" * (_markers.MAX_KEY_LENGTH + 1)])
def test_keys_given_by_hand_are_checked(key: str) -> None:
    with pytest.raises(tq.ConfigError, match="key"):
        _markers.check_key(key)


def test_the_default_retention_outlives_any_cloud_tasks_task() -> None:
    # Cloud Tasks deletes a task at the latest 31 days after its creation.
    assert dt.timedelta(days=31) < tq.txn.DEFAULT_MARKER_RETENTION <= tq.txn.MAX_MARKER_RETENTION
    assert dt.timedelta(days=1) == tq.txn.MIN_MARKER_RETENTION


@pytest.mark.parametrize(
    "retention",
    [
        tq.txn.MIN_MARKER_RETENTION - dt.timedelta(microseconds=1),
        tq.txn.MAX_MARKER_RETENTION + dt.timedelta(microseconds=1),
        dt.timedelta(0),
        35,
    ],
)
def test_a_retention_out_of_bounds_is_refused(retention: object) -> None:
    with pytest.raises(tq.ConfigError, match="retention"):
        _markers.check_retention(retention)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("style", "marks"),
    [("qmark", "?, ?"), ("format", "%s, %s"), ("pyformat", "%(id)s, %(expires_at)s")],
)
def test_the_marker_insert_speaks_each_driver_style(style: str, marks: str) -> None:
    sql = _markers.insert_marker_sql(style)
    assert sql == (
        f"INSERT INTO tq_done (id, expires_at) VALUES ({marks}) ON CONFLICT (id) DO NOTHING"
    )


def test_sqlite_markers_expire_at_integer_microseconds() -> None:
    params = _markers.insert_marker_params("q/t", WHEN, dialect="sqlite", paramstyle="qmark")
    assert params == ("q/t", 1767323045678901)
    pg = _markers.insert_marker_params("q/t", WHEN, dialect="postgresql", paramstyle="pyformat")
    assert pg == {"id": "q/t", "expires_at": WHEN}


def test_mysql_inserts_ignoring_a_taken_key_with_times_in_microseconds() -> None:
    assert _markers.insert_marker_sql("format", "mysql").startswith("INSERT IGNORE INTO tq_done")
    params = _markers.insert_marker_params("q/t", WHEN, dialect="mysql", paramstyle="format")
    assert params == ("q/t", 1767323045678901)


def test_other_databases_and_naive_times_are_refused() -> None:
    with pytest.raises(tq.ConfigError, match="oracle"):
        _markers.insert_marker_params("q/t", WHEN, dialect="oracle", paramstyle="format")
    with pytest.raises(tq.ConfigError, match="naive"):
        _markers.insert_marker_params(
            "q/t", WHEN.replace(tzinfo=None), dialect="sqlite", paramstyle="qmark"
        )
    with pytest.raises(tq.ConfigError, match="parameter style"):
        _markers.insert_marker_sql("nonsense")
