"""Metrics and spans of the outbox through the real SQL store (SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

import tq
import tq.txn.sql
from tests.conformance.harness_sql import make_engine
from tests.conformance.support import GREET, RecordingSubmitter, make_dispatcher
from tests.testpb import payloads_pb2 as pb
from tests.unit._otel import Telemetry, otel_fixture  # noqa: F401 (otel_fixture)
from tq.txn.sql import SQLStore


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path}/app.db")
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: Engine) -> Iterator[SQLStore]:
    s = SQLStore(engine, name="sql-telemetry")
    s.create_schema()
    yield s
    s.close()


def test_committed_reminders_are_counted_and_submitted_in_a_post_commit_span(
    engine: Engine, store: SQLStore, otel: Telemetry
) -> None:
    sub = RecordingSubmitter()
    disp = make_dispatcher(sub)
    with (
        otel.tracer.start_as_current_span("request"),
        tq.txn.sql.transaction(sessionmaker(engine)),
    ):
        disp.add_task(tq.Task(payload=pb.Greet(name="a")), tq.Task(payload=pb.Greet(name="b")))

    assert len(sub.submitted) == 2
    assert store.count_reminders() == (0, 0)
    assert otel.value("tq_reminders_created", task_class=GREET, staleness="fresh") == 2
    assert otel.value("tq_reminders_processed", task_class=GREET, path="happy") == 2
    assert otel.point("tq_reminders_latency", task_class=GREET, path="happy").count == 2
    assert otel.value("tq_submits", task_class=GREET, path="happy", code="OK") == 2
    post = otel.span("tq.post_commit")
    assert dict(post.attributes or {}) == {"tq.store": "sql-telemetry", "tq.reminders": 2}
    submits = otel.spans("tq.submit")
    assert len(submits) == 2
    assert all(s.parent is not None for s in submits)
    assert {s.parent.span_id for s in submits if s.parent} == {post.context.span_id}


def test_rolled_back_transaction_counts_no_reminder(
    engine: Engine, store: SQLStore, otel: Telemetry
) -> None:
    sub = RecordingSubmitter()
    disp = make_dispatcher(sub)

    def add_then_fail() -> None:
        with tq.txn.sql.transaction(sessionmaker(engine)):
            disp.add_task(tq.Task(payload=pb.Greet(name="a")))
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        add_then_fail()

    assert sub.submitted == []
    assert otel.points("tq_reminders_created") == []
    assert otel.spans("tq.post_commit") == []
    assert len(otel.spans("tq.add_task")) == 1
