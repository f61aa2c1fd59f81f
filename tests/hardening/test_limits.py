"""Limits at add_task: a clear error, and nothing written or submitted.

Each bad task is added in one call after a good one, outside a transaction
(nothing may be submitted) and inside one, on every store (no reminder row
may be written, not even the good task's: the caller catches the error and
commits, and the store must hold nothing). Then the limits' edges: a task
exactly at a limit is taken. Then properties over any class ID, title,
deduplication key, namespace, delay and ETA (Hypothesis).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import string
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.protobuf import timestamp_pb2
from hypothesis import example, given
from hypothesis import strategies as st

import tq
from tests._longmode import fuzz_settings, record_figure
from tests.conformance.harness import RowWriter, StoreHarness
from tests.conformance.harness_sql import postgres_harness, sqlite_harness
from tests.conformance.support import RecordingSubmitter
from tests.testpb import payloads_pb2 as pb
from tq import _request
from tq._add_path import MAX_BATCH
from tq._task import MAX_ETA_AHEAD, MAX_URI_LENGTH
from tqtesting import FakeClock, MemoryStore

try:
    from tests.conformance.harness_spanner import spanner_harness
except ImportError:  # the Spanner client is an optional extra
    spanner_harness = None  # type: ignore[assignment]

__all__ = ["postgres_harness", "spanner_harness", "sqlite_harness"]  # fixtures used by name

HOST = "app.example.com"
NOW = dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.UTC)


def make_dispatcher(sub: RecordingSubmitter, **options: Any) -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project="p",
        cloud_region="us-central1",
        default_target_host=HOST,
        submitter=sub,
        **options,
    )
    for class_id, proto, kind in (
        ("greet", pb.Greet, tq.Kind.TRANSACTIONAL),
        ("count", pb.Count, tq.Kind.FOLLOWS_CONTEXT),
        ("blob", pb.Blob, tq.Kind.FOLLOWS_CONTEXT),
        ("fail", pb.Fail, tq.Kind.NON_TRANSACTIONAL),
    ):
        d.register_task_class(tq.TaskClass(id=class_id, prototype=proto, kind=kind, queue="q"))
    return d


# What is refused.


@dataclasses.dataclass(frozen=True)
class Bad:
    make: Callable[[int], list[Any]]  # store's max payload size -> the tasks after the good one
    error: type[Exception]
    says: str  # a regex the message must match
    where: str = "both"  # "both", "txn" or "outside"
    # Whether the case applies to a store taking payloads up to this size.
    applies: Callable[[int], bool] = lambda _max: True


def one(**task: Any) -> Callable[[int], list[Any]]:
    return lambda _max: [tq.Task(**task)]


BAD: dict[str, Bad] = {
    "payload_over_cloud_tasks_limit": Bad(
        one(payload=pb.Blob(data=b"x" * (1 << 20))), tq.PayloadTooLarge, r"over Cloud Tasks' limit"
    ),
    "payload_over_store_limit": Bad(
        lambda max_size: [tq.Task(payload=pb.Blob(data=b"x" * (max_size + 1)))],
        tq.PayloadTooLarge,
        r"as a reminder, over the \d+ bytes store",
        where="txn",
        # Stores that take whole Cloud Tasks tasks (SQL) refuse nothing more.
        applies=lambda max_size: max_size < _request.MAX_TASK_SIZE,
    ),
    "title_with_space": Bad(one(payload=pb.Count(), title="a b"), tq.ValidationError, "title"),
    "title_with_query": Bad(one(payload=pb.Count(), title="a?b=1"), tq.ValidationError, "title"),
    "title_with_newline": Bad(one(payload=pb.Count(), title="a\nb"), tq.ValidationError, "title"),
    "title_with_surrogate": Bad(
        one(payload=pb.Count(), title="a\ud800"), tq.ValidationError, "title"
    ),
    "title_over_url_limit": Bad(
        one(payload=pb.Count(), title="x" * MAX_URI_LENGTH), tq.ValidationError, r"over the 2083"
    ),
    "title_not_a_string": Bad(one(payload=pb.Count(), title=5), tq.ValidationError, "title"),
    "eta_beyond_30_days": Bad(
        one(payload=pb.Count(), eta=NOW + MAX_ETA_AHEAD + dt.timedelta(seconds=1)),
        tq.ValidationError,
        "more than 30 days",
    ),
    "delay_beyond_30_days": Bad(
        one(payload=pb.Count(), delay=MAX_ETA_AHEAD + dt.timedelta(microseconds=1)),
        tq.ValidationError,
        "more than 30 days",
    ),
    "delay_of_a_million_years": Bad(
        one(payload=pb.Count(), delay=dt.timedelta.max), tq.ValidationError, "more than 30 days"
    ),
    "negative_delay": Bad(
        one(payload=pb.Count(), delay=dt.timedelta(seconds=-1)), tq.ValidationError, "negative"
    ),
    "naive_eta": Bad(
        one(payload=pb.Count(), eta=dt.datetime(2026, 11, 3)), tq.ValidationError, "timezone"
    ),
    "eta_and_delay": Bad(
        one(payload=pb.Count(), eta=NOW, delay=dt.timedelta(1)), tq.ValidationError, "not both"
    ),
    "delay_not_a_timedelta": Bad(one(payload=pb.Count(), delay=60), tq.ValidationError, "delay"),
    "dedup_key_in_a_transaction": Bad(
        one(payload=pb.Count(), deduplication_key="k"),
        tq.ValidationError,
        "deduplication key cannot be used",
        where="txn",
    ),
    "dedup_key_not_a_string": Bad(
        one(payload=pb.Count(), deduplication_key=7), tq.ValidationError, "deduplication_key"
    ),
    "batch_over_the_limit": Bad(
        lambda _max: [tq.Task(payload=pb.Count(n=i)) for i in range(MAX_BATCH)],
        tq.ValidationError,
        f"at most {MAX_BATCH} tasks",
    ),
    "unregistered_payload_type": Bad(
        one(payload=timestamp_pb2.Timestamp()), tq.ValidationError, "no task class for payload"
    ),
    "not_a_task": Bad(lambda _max: [pb.Count()], tq.ValidationError, "takes tq.Task"),
    "payload_not_a_message": Bad(one(payload="hi"), tq.ValidationError, "protobuf message"),
    "transactional_outside_a_transaction": Bad(
        one(payload=pb.Greet()), tq.TransactionError, "TRANSACTIONAL", where="outside"
    ),
    "non_transactional_inside_a_transaction": Bad(
        one(payload=pb.Fail()), tq.TransactionError, "NON_TRANSACTIONAL", where="txn"
    ),
}


@pytest.fixture
def fake_now() -> Iterator[FakeClock]:
    clock = FakeClock(NOW)
    with tq.clock.use_clock(clock):
        yield clock


@pytest.mark.parametrize("case", [k for k, b in BAD.items() if b.where != "txn"])
def test_bad_task_outside_a_transaction_is_refused_and_nothing_is_submitted(
    fake_now: FakeClock, case: str
) -> None:
    bad = BAD[case]
    sub = RecordingSubmitter()
    d = make_dispatcher(sub)
    with pytest.raises(bad.error, match=bad.says):
        d.add_task(tq.Task(payload=pb.Count(n=-1)), *bad.make(0))
    assert sub.attempts == 0


# Inside a transaction, on every store.


class MemoryHarness:
    """tqtesting.MemoryStore as a conformance StoreHarness (rows kept beside it)."""

    kind = "memory"

    def __init__(self) -> None:
        self.store = MemoryStore("hardening-memory")
        self._rows: set[str] = set()

    def run_in_transaction(self, body: Callable[[RowWriter], None]) -> None:
        pending: set[str] = set()

        class Rows:
            def insert_row(self, key: str) -> None:
                pending.add(key)

        with self.store.transaction():
            body(Rows())
        self._rows |= pending

    def row_keys(self) -> set[str]:
        return set(self._rows)


STORES = [
    pytest.param("memory"),
    pytest.param("sqlite"),
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("spanner", marks=pytest.mark.spanner),
]


@pytest.fixture(params=STORES)
def harness(request: pytest.FixtureRequest) -> StoreHarness:
    kind: str = request.param
    if kind == "memory":
        return MemoryHarness()  # type: ignore[return-value]
    if kind == "spanner" and spanner_harness is None:
        pytest.skip("the Spanner client is not installed (tq[spanner])")
    h: StoreHarness = request.getfixturevalue(f"{kind}_harness")
    return h


def test_bad_tasks_in_a_transaction_write_no_reminder(
    fake_now: FakeClock, harness: StoreHarness
) -> None:
    """One transaction per case; the caller catches the error and commits."""
    max_size = harness.store.max_payload_size
    failures: list[str] = []
    tried = 0
    for n, (case, bad) in enumerate(BAD.items()):
        if bad.where == "outside" or not bad.applies(max_size):
            continue
        tried += 1
        sub = RecordingSubmitter()
        d = make_dispatcher(sub)
        raised: list[BaseException] = []

        def body(
            rows: RowWriter,
            bad: Bad = bad,
            d: tq.Dispatcher = d,
            n: int = n,
            raised: list[BaseException] = raised,
        ) -> None:
            raised.clear()
            rows.insert_row(f"row-{n}")
            try:
                d.add_task(tq.Task(payload=pb.Count(n=-1)), *bad.make(max_size))
            except Exception as e:
                raised.append(e)

        harness.run_in_transaction(body)
        got = raised[0] if raised else None
        if not isinstance(got, bad.error) or not re.search(bad.says, str(got)):
            failures.append(f"{case}: raised {got!r}")
        if sub.attempts or harness.store.count_reminders() != (0, 0):
            failures.append(
                f"{case}: {sub.attempts} submits, reminders {harness.store.count_reminders()}"
            )
        if f"row-{n}" not in harness.row_keys():
            failures.append(f"{case}: the caller's transaction did not commit")
    assert failures == []
    record_figure("limits_in_a_transaction", store=harness.kind, cases=tried)


# The edges: exactly at a limit is taken.


def test_eta_exactly_30_days_ahead_is_taken(fake_now: FakeClock) -> None:
    sub = RecordingSubmitter()
    d = make_dispatcher(sub)
    d.add_task(
        tq.Task(payload=pb.Count(n=1), eta=NOW + MAX_ETA_AHEAD),
        tq.Task(payload=pb.Count(n=2), delay=MAX_ETA_AHEAD),
    )
    times = [s.request.task.schedule_time.ToDatetime(dt.UTC) for s in sub.submitted]
    assert times == [NOW + MAX_ETA_AHEAD] * 2


def test_url_exactly_at_the_limit_is_taken() -> None:
    sub = RecordingSubmitter()
    d = make_dispatcher(sub)
    base = len(f"https://{HOST}/internal/tasks/t/count/")
    d.add_task(tq.Task(payload=pb.Count(), title="x" * (MAX_URI_LENGTH - base)))
    with pytest.raises(tq.ValidationError):
        d.add_task(tq.Task(payload=pb.Count(), title="x" * (MAX_URI_LENGTH - base + 1)))
    [s] = sub.submitted
    assert len(s.request.task.http_request.url) == MAX_URI_LENGTH


def test_batch_of_exactly_the_limit_is_taken() -> None:
    sub = RecordingSubmitter()
    make_dispatcher(sub).add_task(*(tq.Task(payload=pb.Count(n=i)) for i in range(MAX_BATCH)))
    assert len(sub.submitted) == MAX_BATCH


def _largest_blob(fits: Callable[[int], bool], high: int) -> int:
    """The largest Blob data size for which `fits` holds (it holds at 0)."""
    low = 0
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def test_task_exactly_at_the_cloud_tasks_limit_is_taken() -> None:
    sub = RecordingSubmitter()
    d = make_dispatcher(sub)

    def fits(n: int) -> bool:
        try:
            d.add_task(tq.Task(payload=pb.Blob(data=b"x" * n)))
        except tq.PayloadTooLarge:
            return False
        return True

    n = _largest_blob(fits, 1 << 20)
    assert sub.submitted[-1].request.task.ByteSize() <= _request.MAX_TASK_SIZE
    assert n > _request.MAX_TASK_SIZE * 0.7  # base64 in the JSON envelope costs a third
    assert not fits(n + 1)


def test_reminder_exactly_at_the_store_limit_is_taken() -> None:
    sub = RecordingSubmitter()
    d = make_dispatcher(sub)
    store = MemoryStore("hardening-edge", max_payload_size=50_000)

    def fits(n: int) -> bool:
        try:
            with store.transaction():
                d.add_task(tq.Task(payload=pb.Blob(data=b"x" * n)))
        except tq.PayloadTooLarge:
            return False
        return True

    n = _largest_blob(fits, 50_000)
    submitted = len(sub.submitted)
    assert submitted > 0
    assert not fits(n + 1)
    assert len(sub.submitted) == submitted
    assert store.count_reminders() == (0, 0)


# Properties.

ID_CHARS = string.ascii_letters + string.digits + "_-."
tricky_text = st.text(max_size=120) | st.text(alphabet=ID_CHARS + "\n /é", max_size=110)


@given(class_id=tricky_text)
@example(class_id="send-email\n")
@fuzz_settings(ci=150, long=10_000)
def test_class_id_is_taken_exactly_when_it_matches_the_documented_pattern(class_id: str) -> None:
    valid = 1 <= len(class_id) <= 100 and all(c in ID_CHARS for c in class_id)
    d = tq.Dispatcher()
    cls = tq.TaskClass(id=class_id, prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q")
    if valid:
        d.register_task_class(cls)
        assert d.task_class_by_id(class_id) is cls
    else:
        with pytest.raises(tq.ConfigError, match="task class ID"):
            d.register_task_class(cls)


NS_HEAD = string.ascii_letters + "_"
NS_CHARS = NS_HEAD + string.digits


@given(namespace=st.text(max_size=60) | st.text(alphabet=NS_CHARS + "-é", max_size=55))
@fuzz_settings(ci=150, long=10_000)
def test_namespace_is_taken_exactly_when_it_matches_the_documented_pattern(
    namespace: str,
) -> None:
    valid = namespace == "" or (
        len(namespace) <= 50 and namespace[0] in NS_HEAD and all(c in NS_CHARS for c in namespace)
    )
    if valid:
        assert tq.Dispatcher(namespace=namespace).namespace == namespace
    else:
        with pytest.raises(tq.ConfigError, match="namespace"):
            tq.Dispatcher(namespace=namespace)


FORBIDDEN_IN_TITLE = ' \t\r\n\v\f?#%"<>\\^`{|}'


# Titles around the URL limit, made cheaply (drawing 2,000 characters one by
# one would cost Hypothesis more than the rest of the test).
long_titles = st.builds(
    lambda n, c, tail: c * n + tail,
    st.integers(1000, 2100),
    st.sampled_from(["a", "/", "é", "ab", "%"]),
    st.text(max_size=5),
)


@given(title=st.text(max_size=60) | long_titles)
@fuzz_settings(ci=150, long=10_000)
def test_title_is_taken_iff_clean_and_short_enough_and_comes_back_from_the_url(
    title: str,
) -> None:
    sub = RecordingSubmitter()
    d = make_dispatcher(sub)
    clean = not any(
        c in FORBIDDEN_IN_TITLE or ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in title
    )
    prefix = f"https://{HOST}/internal/tasks/t/count"
    url = prefix + ("/" + urllib.parse.quote(title, safe="-_.~:@!$&'()*+,;=/") if title else "")
    if clean and len(url) <= MAX_URI_LENGTH:
        d.add_task(tq.Task(payload=pb.Count(), title=title))
        [s] = sub.submitted
        got = s.request.task.http_request.url
        assert got == url
        assert urllib.parse.unquote(got[len(prefix) + 1 :]) == title
    else:
        with pytest.raises(tq.ValidationError, match=r"title|URL"):
            d.add_task(tq.Task(payload=pb.Count(), title=title))
        assert sub.attempts == 0


@given(
    key=st.text(min_size=1) | st.integers(10_000, 100_000).map(lambda n: "é" * n),
    other=st.text(),
)
@fuzz_settings(ci=150, long=10_000)
def test_any_dedup_key_makes_a_valid_cloud_tasks_name_of_its_own(key: str, other: str) -> None:
    sub = RecordingSubmitter()
    names: dict[tuple[str, str], str] = {}
    for ns in ("", "other_ns"):
        d = make_dispatcher(sub, namespace=ns)
        for k in {key, other} - {""}:
            d.add_task(tq.Task(payload=pb.Count(), deduplication_key=k))
            names[ns, k] = sub.submitted[-1].request.task.name
    parent = "projects/p/locations/us-central1/queues/q/tasks/"
    for name in names.values():
        assert name.startswith(parent)
        assert re.fullmatch(r"[0-9a-f]{64}", name[len(parent) :])  # Cloud Tasks: <= 500 chars
    assert len(set(names.values())) == len(names)  # namespaces and keys never collide


@given(delay=st.timedeltas())
@fuzz_settings(ci=150, long=10_000)
def test_any_delay_is_taken_within_30_days_and_refused_clearly_beyond(
    delay: dt.timedelta,
) -> None:
    sub = RecordingSubmitter()
    d = make_dispatcher(sub)
    task = tq.Task(payload=pb.Count(), delay=delay)
    with tq.clock.use_clock(FakeClock(NOW)):
        if dt.timedelta(0) <= delay <= MAX_ETA_AHEAD:
            d.add_task(task)
            t = sub.submitted[0].request.task
            if delay:
                when = t.schedule_time.ToDatetime(dt.UTC)
                assert abs(when - (NOW + delay)) < dt.timedelta(microseconds=1)
            else:
                assert not t.HasField("schedule_time")  # as soon as possible
        else:
            with pytest.raises(tq.ValidationError, match=r"negative|30 days"):
                d.add_task(task)
            assert sub.attempts == 0


fixed_offsets = st.timedeltas(
    min_value=dt.timedelta(hours=-23, minutes=-59), max_value=dt.timedelta(hours=23, minutes=59)
).map(dt.timezone)


@given(eta=st.datetimes(timezones=fixed_offsets | st.just(dt.UTC)))
@example(eta=dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=5))))
@fuzz_settings(ci=150, long=10_000)
def test_any_eta_is_taken_within_30_days_and_refused_clearly_beyond(eta: dt.datetime) -> None:
    sub = RecordingSubmitter()
    d = make_dispatcher(sub)
    with tq.clock.use_clock(FakeClock(NOW)):
        try:
            ahead = eta - NOW
        except OverflowError:
            ahead = dt.timedelta.max
        try:
            utc: dt.datetime | None = eta.astimezone(dt.UTC)
        except OverflowError:
            utc = None  # before year 1 in UTC
        if ahead <= MAX_ETA_AHEAD and utc is not None:
            d.add_task(tq.Task(payload=pb.Count(), eta=eta))
            [s] = sub.submitted
            assert s.request.task.schedule_time.ToDatetime(dt.UTC) == utc
        else:
            with pytest.raises(tq.ValidationError, match=r"30 days|out of range"):
                d.add_task(tq.Task(payload=pb.Count(), eta=eta))
            assert sub.attempts == 0
