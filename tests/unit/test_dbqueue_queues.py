"""Queue configuration: backoff and retry limits as Cloud Tasks defines them; queue.yaml."""

from __future__ import annotations

import datetime as dt
import pathlib

import pytest

import tq
from tq.dbqueue import QueueConfig, load_queue_yaml, parse_queue_yaml


def test_backoff_doubles_then_grows_linearly_then_caps_as_documented() -> None:
    # Cloud Tasks' RetryConfig example: min 10 s, max 300 s, 3 doublings
    # -> retries after 10, 20, 40, 80, 160, 240, 300, 300 s.
    cfg = QueueConfig("q", min_backoff_s=10, max_backoff_s=300, max_doublings=3)
    waits = [cfg.backoff(k).total_seconds() for k in range(1, 9)]
    assert waits == [10, 20, 40, 80, 160, 240, 300, 300]


def test_backoff_with_zero_doublings_grows_linearly() -> None:
    cfg = QueueConfig("q", min_backoff_s=2, max_backoff_s=7, max_doublings=0)
    assert [cfg.backoff(k).total_seconds() for k in range(1, 6)] == [2, 4, 6, 7, 7]


def test_default_backoff_starts_at_a_tenth_of_a_second_and_caps_at_an_hour() -> None:
    cfg = QueueConfig("q")
    assert cfg.backoff(1) == dt.timedelta(seconds=0.1)
    assert cfg.backoff(2) == dt.timedelta(seconds=0.2)
    assert cfg.backoff(100) == dt.timedelta(hours=1)


def test_max_attempts_alone_stops_after_that_many_attempts() -> None:
    cfg = QueueConfig("q", max_attempts=3)
    assert not cfg.gives_up(2, dt.timedelta(days=30))
    assert cfg.gives_up(3, dt.timedelta(0))


def test_both_limits_must_be_reached_before_giving_up() -> None:
    cfg = QueueConfig("q", max_attempts=3, max_retry_duration_s=60)
    assert not cfg.gives_up(5, dt.timedelta(seconds=59))  # attempts done, time not
    assert not cfg.gives_up(2, dt.timedelta(seconds=3600))  # time done, attempts not
    assert cfg.gives_up(3, dt.timedelta(seconds=60))


def test_unlimited_attempts_with_a_duration_stop_on_the_duration() -> None:
    cfg = QueueConfig("q", max_attempts=-1, max_retry_duration_s=60)
    assert not cfg.gives_up(1000, dt.timedelta(seconds=59))
    assert cfg.gives_up(1, dt.timedelta(seconds=60))


def test_no_limits_retry_forever() -> None:
    cfg = QueueConfig("q", max_attempts=-1, max_retry_duration_s=0)
    assert not cfg.gives_up(10**6, dt.timedelta(days=365))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "bad name"},
        {"name": "q", "rate_per_s": -1},
        {"name": "q", "bucket_size": 0},
        {"name": "q", "max_attempts": 0},
        {"name": "q", "max_attempts": -2},
        {"name": "q", "min_backoff_s": 5, "max_backoff_s": 1},
        {"name": "q", "max_doublings": -1},
    ],
)
def test_invalid_queue_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(tq.ConfigError):
        QueueConfig(**kwargs)  # type: ignore[arg-type]


QUEUE_YAML = """
queue:
- name: emails
  rate: 10/m
  bucket_size: 3
  max_concurrent_requests: 2
  retry_parameters:
    task_retry_limit: 4
    task_age_limit: 2h
    min_backoff_seconds: 1
    max_backoff_seconds: 30
    max_doublings: 2
- name: defaults
  rate: 5/s
- name: pulled
  mode: pull
"""


def test_queue_yaml_maps_app_engine_settings() -> None:
    emails, defaults, pulled = parse_queue_yaml(QUEUE_YAML)
    assert emails == QueueConfig(
        "emails",
        rate_per_s=10 / 60,
        bucket_size=3,
        max_concurrent=2,
        max_attempts=5,  # task_retry_limit counts retries, not attempts
        max_retry_duration_s=7200,
        min_backoff_s=1,
        max_backoff_s=30,
        max_doublings=2,
    )
    # App Engine defaults: bucket 5, no concurrency cap, unlimited retries.
    assert defaults == QueueConfig(
        "defaults", rate_per_s=5, bucket_size=5, max_concurrent=0, max_attempts=-1
    )
    assert pulled.pull
    assert not emails.pull


def test_queue_yaml_retry_limit_zero_means_one_attempt() -> None:
    (q,) = parse_queue_yaml(
        "queue:\n- name: once\n  rate: 1/s\n  retry_parameters: {task_retry_limit: 0}\n"
    )
    assert q.max_attempts == 1
    assert q.gives_up(1, dt.timedelta(0))


def test_load_queue_yaml_reads_a_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "queue.yaml"
    path.write_text(QUEUE_YAML)
    assert [q.name for q in load_queue_yaml(path)] == ["emails", "defaults", "pulled"]


@pytest.mark.parametrize(
    "text",
    [
        "queue:\n- name: q\n  rate: fast\n",
        "queue:\n- name: q\n  rate: 1/s\n  colour: blue\n",
        "queue:\n- name: q\n  retry_parameters: {task_age_limit: soon}\n",
        "queue:\n- name: q\n  retry_parameters: {task_retry_limit: -1}\n",
        "queue:\n- name: q\n- name: q\n",
        "queue:\n- rate: 1/s\n",
        "queue: [unclosed\n",
        "queue:\n- name: q\n  mode: sideways\n",
    ],
)
def test_bad_queue_yaml_is_refused(text: str) -> None:
    with pytest.raises(tq.ConfigError):
        parse_queue_yaml(text)
