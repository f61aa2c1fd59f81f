"""tq.Task: its options, their validation, ETAs and deduplicated names."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

import tq
from tests.testpb import payloads_pb2 as pb
from tq._task import deduplicated_task_id

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_plain_task_is_valid_and_runs_as_soon_as_possible() -> None:
    t = tq.Task(payload=pb.Greet())
    t.validate()
    assert t.resolve_eta(NOW) is None


def test_payload_must_be_a_message() -> None:
    with pytest.raises(tq.ValidationError, match="protobuf message"):
        tq.Task(payload={"name": "x"}).validate()  # type: ignore[arg-type]


def test_delay_and_eta_are_exclusive() -> None:
    with pytest.raises(tq.ValidationError, match="delay or eta, not both"):
        tq.Task(payload=pb.Greet(), delay=dt.timedelta(seconds=1), eta=NOW).validate()


def test_negative_delay_is_refused() -> None:
    with pytest.raises(tq.ValidationError, match="negative"):
        tq.Task(payload=pb.Greet(), delay=dt.timedelta(seconds=-1)).validate()


def test_naive_eta_is_refused() -> None:
    with pytest.raises(tq.ValidationError, match="timezone-aware"):
        tq.Task(payload=pb.Greet(), eta=dt.datetime(2026, 1, 1)).validate()


def test_delay_resolves_from_now_and_eta_as_given() -> None:
    assert tq.Task(payload=pb.Greet(), delay=dt.timedelta(hours=1)).resolve_eta(NOW) == (
        NOW + dt.timedelta(hours=1)
    )
    eta = NOW + dt.timedelta(days=2)
    assert tq.Task(payload=pb.Greet(), eta=eta).resolve_eta(NOW) == eta
    past = NOW - dt.timedelta(days=2)
    assert tq.Task(payload=pb.Greet(), eta=past).resolve_eta(NOW) == past


def test_eta_at_most_30_days_ahead() -> None:
    tq.Task(payload=pb.Greet(), delay=dt.timedelta(days=30)).resolve_eta(NOW)
    with pytest.raises(tq.ValidationError, match="more than 30 days ahead"):
        tq.Task(payload=pb.Greet(), eta=NOW + dt.timedelta(days=30, microseconds=1)).resolve_eta(
            NOW
        )


@pytest.mark.parametrize("title", ["", "welcome", "user:42", "a/b", "x-y_z.~!$&'()*+,;=@"])
def test_url_safe_titles_are_accepted(title: str) -> None:
    tq.Task(payload=pb.Greet(), title=title).validate()


@pytest.mark.parametrize("title", [" ", "a b", "a?b", "a#b", "a%b", 'a"b', "a<b", "a\x01b"])
def test_titles_with_spaces_or_reserved_characters_are_refused(title: str) -> None:
    with pytest.raises(tq.ValidationError, match="title"):
        tq.Task(payload=pb.Greet(), title=title).validate()


def test_dedup_task_id_is_sha256_of_namespace_nul_class_nul_key() -> None:
    got = deduplicated_task_id("ns", "send-email", "order-1")
    assert got == hashlib.sha256(b"ns\x00send-email\x00order-1").hexdigest()
    assert len(got) == 64
    assert got == got.lower()


def test_dedup_task_id_keeps_its_parts_apart() -> None:
    ids = {
        deduplicated_task_id("", "ab", "c"),
        deduplicated_task_id("", "a", "bc"),
        deduplicated_task_id("a", "b", "c"),
        deduplicated_task_id("", "a", "b\x00c"),
    }
    assert len(ids) == 4
    assert deduplicated_task_id("", "a", "k") == deduplicated_task_id("", "a", "k")


def test_dedup_key_may_be_any_unicode() -> None:
    assert len(deduplicated_task_id("", "c", "ключ 🔑")) == 64
