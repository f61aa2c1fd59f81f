"""Setting telemetry up: Prometheus exposition, the catalogue, gauges, no SDK at all."""

from __future__ import annotations

import datetime as dt
import pathlib
import re
import subprocess
import sys

import httpx
import pytest
import sqlalchemy as sa

import tq
import tq.telemetry
from tests._dbqueue import make_engine, submission
from tests.testpb import payloads_pb2 as pb
from tests.unit._otel import Telemetry, otel_fixture  # noqa: F401 (otel_fixture)
from tq import _envelope, _metrics
from tq._push import handle_push
from tq.dbqueue import DbQueueSubmitter, _gauges
from tqtesting import FakeClock

ROOT = pathlib.Path(__file__).resolve().parents[2]
_S = dt.timedelta(seconds=1)


async def test_prometheus_app_serves_tq_metrics_with_units_in_their_names() -> None:
    disp = tq.Dispatcher()

    @disp.task_class(id="g", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    async def handler(p: pb.Greet) -> None:
        pass

    app = tq.telemetry.prometheus_app()
    try:
        await handle_push(disp, None, {}, b"junk")
        await handle_push(
            disp, "g", {"x-cloudtasks-queuename": "q"}, _envelope.encode("g", pb.Greet())
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            resp = await client.get("/")
    finally:
        tq.telemetry.configure()
    assert resp.status_code == 200
    text = resp.text
    assert re.search(r'tq_pushes_rejected_total\{[^}]*reason="bad_envelope"[^}]*\} 1\.0', text)
    assert re.search(r'tq_pushes_handled_total\{[^}]*result="ok"[^}]*\} 1\.0', text)
    assert "# TYPE tq_push_duration_seconds histogram" in text
    assert re.search(r'tq_push_duration_seconds_bucket\{[^}]*le="0\.001"', text)


def test_every_metric_recorded_in_the_code_is_in_the_catalogue() -> None:
    used: set[str] = set()
    for path in [*ROOT.glob("tq/**/*.py"), *ROOT.glob("sweeper/**/*.py")]:
        calls = r'_metrics\.(?:add|record|observe)(?:_labelled)?\(\s*"(\w+)"'
        used |= set(re.findall(calls, path.read_text()))
    assert "tq_pushes_handled" in used  # the search works
    assert sorted(used - set(_metrics.BY_NAME)) == []


def test_the_docs_list_every_metric_with_its_unit() -> None:
    doc = (ROOT / "docs" / "observability.md").read_text()
    for m in _metrics.CATALOGUE:
        row = [line for line in doc.splitlines() if line.startswith(f"| `{m.name}`")]
        assert len(row) == 1, f"docs/observability.md has no row for {m.name}"
        assert f"| `{m.unit}` |" in row[0], f"{m.name}: unit {m.unit} not in {row[0]}"
        for label in m.labels:
            assert f"`{label}`" in row[0], f"{m.name}: label {label} not in {row[0]}"


def test_catalogue_units_are_seconds_or_count_annotations() -> None:
    for m in _metrics.CATALOGUE:
        assert m.unit == "s" or re.fullmatch(r"\{[a-z]+\}", m.unit), m
        assert (m.buckets is not None) == (m.kind == "histogram"), m


def test_dbqueue_gauges_report_depth_oldest_due_age_and_leases(
    otel: Telemetry, tmp_path: pathlib.Path
) -> None:
    engine = make_engine(tmp_path / "q.db")
    clock = FakeClock()
    try:
        with tq.clock.use_clock(clock):
            submitter = DbQueueSubmitter(engine)
            submitter.submit(submission(queue="mail", name="a"))
            clock.advance(30)
            submitter.submit(submission(queue="mail", name="b"))
            submitter.submit(submission(queue="other", name="c", eta=clock.now() + 60 * _S))
            clock.advance(15)
            undo = _gauges.observe(engine)
            undo_again = _gauges.observe(engine)  # a second worker on the same database
            try:
                assert otel.value("tq_dbqueue_depth", queue="mail") == 2
                assert otel.value("tq_dbqueue_depth", queue="other") == 1
                assert otel.value("tq_dbqueue_oldest_task_age", queue="mail") == 45.0
                assert otel.value("tq_dbqueue_oldest_task_age", queue="other") == 0.0
                assert otel.value("tq_dbqueue_leases", queue="mail") == 0
                assert len(otel.points("tq_dbqueue_depth")) == 2
            finally:
                undo()
                undo_again()
            assert _metrics.observed("tq_dbqueue_depth") == []
    finally:
        engine.dispose()


def test_gauges_only_take_catalogued_gauge_names() -> None:
    with pytest.raises(ValueError, match="not a gauge"):
        _metrics.observe("tq_pushes_handled", "k", list)


def test_failing_gauge_source_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> list[_metrics.Observation]:
        raise sa.exc.OperationalError("select", {}, Exception("database is gone"))

    undo = _metrics.observe("tq_dbqueue_depth", "broken", broken)
    try:
        assert _metrics.observed("tq_dbqueue_depth") == []
    finally:
        undo()
    assert "reading gauge tq_dbqueue_depth failed" in caplog.text


_NO_SDK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        for blocked in ("opentelemetry.sdk", "opentelemetry.exporter", "prometheus_client"):
            if name == blocked or name.startswith(blocked + "."):
                raise ImportError("blocked for the test: " + name)
        return None
sys.meta_path.insert(0, Block())
import asyncio
import tq, tq.telemetry
from tq import _envelope, _request
from tq._push import handle_push
from tests.testpb import payloads_pb2 as pb

class Keep:
    def __init__(self): self.subs = []
    def submit(self, s): self.subs.append(s)
    async def submit_async(self, s): self.subs.append(s)

keep = Keep()
disp = tq.Dispatcher(cloud_project="p", cloud_region="r", default_target_host="h", submitter=keep)
disp.register_task_class(tq.TaskClass(
    id="g", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q", handler=lambda p: None))
disp.add_task(tq.Task(payload=pb.Greet()))
headers = _request.http_parts(keep.subs[0].request)[2]
assert "traceparent" not in {k.lower() for k in headers}, headers
result = asyncio.run(handle_push(disp, "g", {}, _envelope.encode("g", pb.Greet())))
assert result.status == 200
tq.telemetry.configure()
try:
    tq.telemetry.prometheus_app()
except ImportError as e:
    assert "tq[otel]" in str(e)
else:
    raise AssertionError("prometheus_app worked without its extra")
assert "opentelemetry.propagate" not in sys.modules, "propagation loaded with tracing off"
"""


def test_tq_works_without_the_sdk_and_sends_no_trace_headers() -> None:
    subprocess.run([sys.executable, "-c", _NO_SDK], check=True, cwd=ROOT)
