"""The Dispatcher: registration, kinds and transactions, add_task and its submitter."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import hashlib
import threading

import grpc
import pytest

import tq
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import FakeStore, RecordingSubmitter, in_txn, submit_error
from tq._reminder import HAPPY_PATH_WINDOW, Reminder
from tqtesting import FakeClock

QUEUE = "projects/proj/locations/us-central1/queues/default"


@pytest.fixture
def sub() -> RecordingSubmitter:
    return RecordingSubmitter()


@pytest.fixture
def disp(sub: RecordingSubmitter) -> tq.Dispatcher:
    return tq.Dispatcher(
        cloud_project="proj",
        cloud_region="us-central1",
        default_target_host="app.example.com",
        submitter=sub,
    )


def cls(
    class_id: str = "greet",
    prototype: type = pb.Greet,
    kind: tq.Kind = tq.Kind.NON_TRANSACTIONAL,
    queue: str = "default",
    **kw: object,
) -> tq.TaskClass:
    return tq.TaskClass(id=class_id, prototype=prototype, kind=kind, queue=queue, **kw)  # type: ignore[arg-type]


# Registration.


@pytest.mark.parametrize("bad_id", ["", "has space", "slash/y", "x" * 101, "é"])
def test_invalid_class_id_is_refused_with_the_rule(disp: tq.Dispatcher, bad_id: str) -> None:
    with pytest.raises(tq.ConfigError, match=r"1 to 100 characters"):
        disp.register_task_class(cls(bad_id))


def test_longest_class_id_is_accepted(disp: tq.Dispatcher) -> None:
    disp.register_task_class(cls("a-Z_0." + "x" * 94))


def test_duplicate_class_id_is_refused(disp: tq.Dispatcher) -> None:
    disp.register_task_class(cls("greet"))
    with pytest.raises(tq.ConfigError, match="registered already"):
        disp.register_task_class(cls("greet", pb.Count))


def test_duplicate_prototype_is_refused_naming_the_other_class(disp: tq.Dispatcher) -> None:
    disp.register_task_class(cls("greet"))
    with pytest.raises(tq.ConfigError, match=r"tq.tests.Greet is used by class 'greet'"):
        disp.register_task_class(cls("greet2"))


def test_missing_kind_is_refused(disp: tq.Dispatcher) -> None:
    with pytest.raises(tq.ConfigError, match="kind is required"):
        disp.register_task_class(cls(kind=None))  # type: ignore[arg-type]


def test_prototype_must_be_a_message_class(disp: tq.Dispatcher) -> None:
    with pytest.raises(tq.ConfigError, match="protobuf message class"):
        disp.register_task_class(cls(prototype=dict))
    with pytest.raises(tq.ConfigError, match="protobuf message class"):
        disp.register_task_class(cls(prototype=pb.Greet()))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "queue",
    [
        "emails",
        "e-1",
        "projects/my-proj/locations/europe-west1/queues/emails",
        "projects/example.com:proj/locations/us-central1/queues/Q-1",
    ],
)
def test_short_and_full_queue_names_are_accepted(disp: tq.Dispatcher, queue: str) -> None:
    disp.register_task_class(cls(queue=queue))


@pytest.mark.parametrize(
    "queue",
    [
        "",
        "with_underscore",
        "has space",
        "q" * 101,
        "projects/p/locations/l/queues/",
        "projects/p/queues/q",
        "projects/P/locations/l/queues/q",
        "projects/p/locations/l/queues/q/tasks/t",
    ],
)
def test_bad_queue_names_are_refused(disp: tq.Dispatcher, queue: str) -> None:
    with pytest.raises(tq.ConfigError, match=r"queue .* is invalid"):
        disp.register_task_class(cls(queue=queue))


@pytest.mark.parametrize("prefix", ["internal/tasks/", "/internal/tasks", "/a b/", ""])
def test_routing_prefix_must_start_and_end_with_a_slash(disp: tq.Dispatcher, prefix: str) -> None:
    with pytest.raises(tq.ConfigError, match="routing_prefix"):
        disp.register_task_class(cls(routing_prefix=prefix))


@pytest.mark.parametrize("host", ["https://app.example.com", "app.example.com/x", "a b", ""])
def test_target_host_must_be_a_bare_host(disp: tq.Dispatcher, host: str) -> None:
    with pytest.raises(tq.ConfigError, match="target_host"):
        disp.register_task_class(cls(target_host=host))


@pytest.mark.parametrize("deadline", [14, 1801])
def test_dispatch_deadline_out_of_range_is_refused(disp: tq.Dispatcher, deadline: int) -> None:
    with pytest.raises(tq.ConfigError, match="dispatch_deadline_s"):
        disp.register_task_class(cls(dispatch_deadline_s=deadline))


def test_handler_attaches_once(disp: tq.Dispatcher) -> None:
    disp.register_task_class(cls())
    disp.attach_handler("greet", lambda p: None)
    with pytest.raises(tq.ConfigError, match="has a handler already"):
        disp.attach_handler("greet", lambda p: None)


def test_handler_of_an_unknown_class_or_not_callable_is_refused(disp: tq.Dispatcher) -> None:
    with pytest.raises(tq.ConfigError, match="register it first"):
        disp.attach_handler("nope", lambda p: None)
    disp.register_task_class(cls())
    with pytest.raises(tq.ConfigError, match="callable"):
        disp.attach_handler("greet", "not a function")  # type: ignore[arg-type]


def test_task_class_decorator_registers_and_attaches(disp: tq.Dispatcher) -> None:
    @disp.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    def handler(p: pb.Greet) -> None:
        pass

    c = disp.task_class_by_id("greet")
    assert c is not None
    assert c.handler is handler
    assert disp.task_class_for(pb.Greet()) is c
    assert disp.task_class_for(pb.Greet) is c
    assert disp.task_class_for(pb.Count()) is None
    assert [x.id for x in disp.task_classes()] == ["greet"]


def test_failed_registration_leaves_the_registry_unchanged(disp: tq.Dispatcher) -> None:
    with pytest.raises(tq.ConfigError):
        disp.register_task_class(cls(queue="bad_queue"))
    disp.register_task_class(cls())  # same ID and prototype: now fine


# Dispatcher options.


@pytest.mark.parametrize("ns", ["", "a", "_", "Prod_2", "a" + "b" * 49])
def test_valid_namespaces(ns: str) -> None:
    assert tq.Dispatcher(namespace=ns).namespace == ns


@pytest.mark.parametrize("ns", ["1abc", "a-b", "a b", "a" + "b" * 50, "é"])
def test_invalid_namespaces_are_refused(ns: str) -> None:
    with pytest.raises(tq.ConfigError, match="namespace"):
        tq.Dispatcher(namespace=ns)


def test_unknown_option_and_bad_scheme_are_refused() -> None:
    with pytest.raises(tq.ConfigError, match="unknown dispatcher options"):
        tq.Dispatcher().configure(colour="blue")
    with pytest.raises(tq.ConfigError, match="target_scheme"):
        tq.Dispatcher(target_scheme="ftp")


def test_no_submitter_and_no_project_is_a_config_error() -> None:
    d = tq.Dispatcher(cloud_region="r", default_target_host="h")
    d.register_task_class(cls(queue="projects/p/locations/l/queues/q"))
    with pytest.raises(tq.ConfigError, match="no submitter"):
        d.add_task(tq.Task(payload=pb.Greet()))


def test_sweep_without_a_sweeper_is_a_config_error(disp: tq.Dispatcher) -> None:
    with pytest.raises(tq.ConfigError, match="no sweeper"):
        disp.sweep()


# Adding tasks outside a transaction.


def test_add_task_submits_to_the_dispatchers_submitter(
    disp: tq.Dispatcher, sub: RecordingSubmitter, clock: FakeClock
) -> None:
    disp.register_task_class(cls())
    disp.add_task(tq.Task(payload=pb.Greet(name="x")))
    (s,) = sub.submitted
    assert s.task_class == "greet"
    assert s.payload == pb.Greet(name="x")
    assert s.created == clock.now()
    assert s.reminder_id is None
    assert s.task_name == ""  # Cloud Tasks names it
    assert s.request.parent == QUEUE  # type: ignore[attr-defined]


def test_unregistered_payload_type_is_refused(disp: tq.Dispatcher) -> None:
    with pytest.raises(tq.ValidationError, match=r"payload type tq\.tests\.Greet"):
        disp.add_task(tq.Task(payload=pb.Greet()))


def test_add_task_takes_task_objects_only(disp: tq.Dispatcher) -> None:
    disp.register_task_class(cls())
    with pytest.raises(tq.ValidationError, match=r"tq\.Task objects"):
        disp.add_task(pb.Greet())  # type: ignore[arg-type]


def test_dedup_key_names_the_task_with_sha256_of_namespace_class_and_key(
    sub: RecordingSubmitter,
) -> None:
    d = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="h",
        namespace="staging", submitter=sub,
    )  # fmt: skip
    d.register_task_class(cls())
    d.add_task(tq.Task(payload=pb.Greet(), deduplication_key="order-42"))
    want = hashlib.sha256(b"staging\x00greet\x00order-42").hexdigest()
    assert len(want) == 64
    assert sub.submitted[0].task_name == f"{QUEUE}/tasks/{want}"


def test_namespace_changes_the_dedup_name(sub: RecordingSubmitter) -> None:
    names = []
    for ns in ("", "other"):
        d = tq.Dispatcher(
            cloud_project="p", cloud_region="r", default_target_host="h", namespace=ns,
            submitter=sub,
        )  # fmt: skip
        d.register_task_class(cls())
        d.add_task(tq.Task(payload=pb.Greet(), deduplication_key="k"))
        names.append(sub.submitted[-1].task_name)
    assert names[0] != names[1]


def test_batch_is_validated_whole_before_anything_is_submitted(
    disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    disp.register_task_class(cls())
    with pytest.raises(tq.ValidationError, match="title"):
        disp.add_task(
            tq.Task(payload=pb.Greet(name="ok")), tq.Task(payload=pb.Greet(), title="a b")
        )
    with pytest.raises(tq.PayloadTooLarge):
        disp.add_task(
            tq.Task(payload=pb.Greet(name="ok")), tq.Task(payload=pb.Greet(name="x" * 1_100_000))
        )
    with pytest.raises(tq.ValidationError, match="no task class"):
        disp.add_task(tq.Task(payload=pb.Greet()), tq.Task(payload=pb.Count()))
    assert sub.submitted == []
    assert sub.calls == 0


def test_batch_over_the_limit_is_refused(disp: tq.Dispatcher, sub: RecordingSubmitter) -> None:
    disp.register_task_class(cls())
    with pytest.raises(tq.ValidationError, match="at most 1000"):
        disp.add_task(*(tq.Task(payload=pb.Greet()) for _ in range(1001)))
    disp.add_task()  # nothing to do
    assert sub.calls == 0


def test_payload_over_1mb_is_refused_before_submitting(
    disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    disp.register_task_class(cls("blob", pb.Blob))
    with pytest.raises(tq.PayloadTooLarge, match="1048576"):
        disp.add_task(tq.Task(payload=pb.Blob(data=b"x" * (800 * 1024))))  # base64 grows it
    assert sub.calls == 0
    disp.add_task(tq.Task(payload=pb.Blob(data=b"x" * (700 * 1024))))
    assert sub.calls == 1


def test_submit_error_reaches_the_caller_but_already_exists_does_not(
    disp: tq.Dispatcher,
) -> None:
    disp.register_task_class(cls())
    failing = RecordingSubmitter(submit_error(grpc.StatusCode.PERMISSION_DENIED))
    with tq.use_submitter(failing), pytest.raises(tq.SubmitError) as err:
        disp.add_task(tq.Task(payload=pb.Greet()))
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert not err.value.transient
    exists = RecordingSubmitter(submit_error(grpc.StatusCode.ALREADY_EXISTS))
    with tq.use_submitter(exists):
        disp.add_task(tq.Task(payload=pb.Greet()))


async def test_add_task_async_uses_submit_async(disp: tq.Dispatcher) -> None:
    disp.register_task_class(cls())
    s = RecordingSubmitter(None, submit_error(grpc.StatusCode.ALREADY_EXISTS))
    with tq.use_submitter(s):
        await disp.add_task_async(tq.Task(payload=pb.Greet(name="1")), tq.Task(payload=pb.Greet()))
    assert (s.calls, s.async_calls) == (0, 2)
    assert [x.payload for x in s.submitted] == [pb.Greet(name="1")]
    failing = RecordingSubmitter(submit_error(grpc.StatusCode.UNAVAILABLE))
    with tq.use_submitter(failing), pytest.raises(tq.SubmitError) as err:
        await disp.add_task_async(tq.Task(payload=pb.Greet()))
    assert err.value.transient


async def test_add_task_async_validates_like_add_task(
    disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    disp.register_task_class(cls())
    with pytest.raises(tq.ValidationError):
        await disp.add_task_async(tq.Task(payload=pb.Greet(), delay=dt.timedelta(days=31)))
    assert sub.async_calls == 0


# use_submitter.


def test_use_submitter_wins_over_the_dispatchers_and_is_restored(
    disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    disp.register_task_class(cls())
    other = RecordingSubmitter()
    with tq.use_submitter(other) as s:
        assert s is other
        assert tq.current_submitter() is other
        disp.add_task(tq.Task(payload=pb.Greet()))
    assert tq.current_submitter() is None
    disp.add_task(tq.Task(payload=pb.Greet()))
    assert (len(other.submitted), len(sub.submitted)) == (1, 1)


def test_use_submitter_follows_threads_run_in_a_copied_context(
    disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    disp.register_task_class(cls())
    other = RecordingSubmitter()
    with tq.use_submitter(other):
        ctx = contextvars.copy_context()
        copied = threading.Thread(
            target=ctx.run, args=(disp.add_task, tq.Task(payload=pb.Greet(name="copied")))
        )
        plain = threading.Thread(
            target=disp.add_task, args=(tq.Task(payload=pb.Greet(name="plain")),)
        )
        for t in (copied, plain):
            t.start()
            t.join()
    assert [s.payload for s in other.submitted] == [pb.Greet(name="copied")]
    assert [s.payload for s in sub.submitted] == [pb.Greet(name="plain")]


async def test_use_submitter_follows_asyncio_tasks_and_to_thread(disp: tq.Dispatcher) -> None:
    disp.register_task_class(cls())
    other = RecordingSubmitter()
    with tq.use_submitter(other):
        await asyncio.gather(
            asyncio.create_task(disp.add_task_async(tq.Task(payload=pb.Greet(name="task")))),
            asyncio.to_thread(disp.add_task, tq.Task(payload=pb.Greet(name="thread"))),
        )
    assert sorted(s.payload.name for s in other.submitted) == ["task", "thread"]  # type: ignore[union-attr]


async def test_use_submitter_in_one_task_does_not_leak_into_another(
    disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    disp.register_task_class(cls())
    other = RecordingSubmitter()
    inside = asyncio.Event()
    release = asyncio.Event()

    async def with_other() -> None:
        with tq.use_submitter(other):
            inside.set()
            await release.wait()

    t = asyncio.create_task(with_other())
    await asyncio.wait_for(inside.wait(), timeout=60)
    await disp.add_task_async(tq.Task(payload=pb.Greet()))
    release.set()
    await t
    assert (len(other.submitted), len(sub.submitted)) == (0, 1)


# Kinds and transactions.


def test_non_transactional_task_in_a_transaction_is_refused(disp: tq.Dispatcher) -> None:
    disp.register_task_class(cls(kind=tq.Kind.NON_TRANSACTIONAL))
    store = FakeStore()
    with in_txn(store) as txn, pytest.raises(tq.TransactionError, match="NON_TRANSACTIONAL"):
        disp.add_task(tq.Task(payload=pb.Greet()))
    assert txn.saved == []


def test_transactional_task_outside_a_transaction_names_the_helpers(
    disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    disp.register_task_class(cls(kind=tq.Kind.TRANSACTIONAL))
    with pytest.raises(tq.TransactionError, match=r"tq\.txn\.sql\.transaction") as err:
        disp.add_task(tq.Task(payload=pb.Greet()))
    assert "tq.txn.spanner" in str(err.value)
    assert sub.calls == 0


@pytest.mark.parametrize("kind", [tq.Kind.TRANSACTIONAL, tq.Kind.FOLLOWS_CONTEXT])
def test_task_in_a_transaction_is_saved_as_a_reminder_not_submitted(
    disp: tq.Dispatcher, sub: RecordingSubmitter, clock: FakeClock, kind: tq.Kind
) -> None:
    disp.register_task_class(cls(kind=kind))
    with in_txn(FakeStore()) as txn:
        disp.add_task(tq.Task(payload=pb.Greet(name="t")))
    assert sub.calls == 0
    (p,) = txn.saved
    rid = p.reminder.id
    assert len(rid) == 32
    assert rid == f"{int(rid, 16):032x}"
    assert p.submission.reminder_id == rid
    assert p.submission.task_name == f"{QUEUE}/tasks/{rid}"
    assert p.reminder.fresh_until == clock.now() + HAPPY_PATH_WINDOW
    assert p.submitter is sub
    # The reminder's payload is the whole request: it decodes back to it.
    back = p.reminder.submission()
    assert back.request == p.submission.request
    assert (back.task_class, back.created, back.reminder_id) == ("greet", clock.now(), rid)


def test_a_task_of_its_own_queue_is_named_in_that_queue_in_a_transaction_too(
    disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    disp.register_task_class(cls(kind=tq.Kind.FOLLOWS_CONTEXT))
    emails = "projects/proj/locations/us-central1/queues/emails"
    with in_txn(FakeStore()) as txn:
        disp.add_task(tq.Task(payload=pb.Greet(), queue="emails"))
    (p,) = txn.saved
    assert p.submission.task_name == f"{emails}/tasks/{p.reminder.id}"
    assert p.reminder.submission().request.parent == emails  # type: ignore[attr-defined]
    disp.add_task(tq.Task(payload=pb.Greet(), queue="emails"))
    assert sub.submitted[0].request.parent == emails  # type: ignore[attr-defined]


def test_follows_context_task_outside_a_transaction_is_submitted(
    disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    disp.register_task_class(cls(kind=tq.Kind.FOLLOWS_CONTEXT))
    disp.add_task(tq.Task(payload=pb.Greet()))
    assert sub.submitted[0].reminder_id is None


def test_reminder_fresh_until_is_capped_by_the_request_deadline(
    disp: tq.Dispatcher, clock: FakeClock
) -> None:
    disp.register_task_class(cls(kind=tq.Kind.TRANSACTIONAL))
    deadline = clock.now() + dt.timedelta(seconds=10)
    with in_txn(FakeStore(), deadline=deadline) as txn:
        disp.add_task(tq.Task(payload=pb.Greet()))
    assert txn.saved[0].reminder.fresh_until == deadline


def test_reminder_ids_come_from_the_random_source(sub: RecordingSubmitter) -> None:
    d = tq.Dispatcher(
        cloud_project="p", cloud_region="r", default_target_host="h", submitter=sub,
        random_bytes=lambda n: bytes(range(n)),
    )  # fmt: skip
    d.register_task_class(cls(kind=tq.Kind.TRANSACTIONAL))
    with in_txn(FakeStore()) as txn:
        d.add_task(tq.Task(payload=pb.Greet()))
    assert txn.saved[0].reminder.id == bytes(range(16)).hex()


def test_dedup_key_in_a_transaction_is_refused(disp: tq.Dispatcher) -> None:
    disp.register_task_class(cls(kind=tq.Kind.FOLLOWS_CONTEXT))
    with in_txn(FakeStore()) as txn, pytest.raises(tq.ValidationError, match="deduplication key"):
        disp.add_task(tq.Task(payload=pb.Greet(), deduplication_key="k"))
    assert txn.saved == []


def test_mixed_batch_in_a_transaction_saves_nothing(disp: tq.Dispatcher) -> None:
    disp.register_task_class(cls(kind=tq.Kind.TRANSACTIONAL))
    disp.register_task_class(cls("count", pb.Count, kind=tq.Kind.NON_TRANSACTIONAL))
    with in_txn(FakeStore()) as txn, pytest.raises(tq.TransactionError):
        disp.add_task(tq.Task(payload=pb.Greet()), tq.Task(payload=pb.Count()))
    assert txn.saved == []


def test_reminder_over_the_store_limit_is_refused_before_anything_is_saved(
    disp: tq.Dispatcher,
) -> None:
    disp.register_task_class(cls(kind=tq.Kind.TRANSACTIONAL))
    with in_txn(FakeStore(max_payload_size=600)) as txn:
        with pytest.raises(tq.PayloadTooLarge, match="store 'fake'"):
            disp.add_task(
                tq.Task(payload=pb.Greet(name="small")), tq.Task(payload=pb.Greet(name="x" * 600))
            )
        assert txn.saved == []
        disp.add_task(tq.Task(payload=pb.Greet(name="small")))
        assert len(txn.saved) == 1


def test_reminder_over_cloud_tasks_limit_is_refused_whatever_the_store_takes(
    disp: tq.Dispatcher,
) -> None:
    # The 1 MB limit is Cloud Tasks' on the task (not the request around it).
    disp.register_task_class(cls("blob", pb.Blob, kind=tq.Kind.TRANSACTIONAL))
    with in_txn(FakeStore(max_payload_size=4 << 20)) as txn:
        with pytest.raises(tq.PayloadTooLarge, match="1048576"):
            disp.add_task(tq.Task(payload=pb.Blob(data=b"x" * (800 * 1024))))
        assert txn.saved == []
        # A task just under the limit, in a request just over it, goes in.
        data = b"x" * (1024 * 1024 * 3 // 4 - 228)
        disp.add_task(tq.Task(payload=pb.Blob(data=data)))
        (saved,) = txn.saved
    req = saved.submission.request
    assert req.task.ByteSize() <= 1024 * 1024 < req.ByteSize()
    assert Reminder(saved.reminder.id, saved.reminder.fresh_until,
                    saved.reminder.payload).submission().request == req  # fmt: skip


async def test_add_task_async_in_a_transaction_saves_reminders(
    disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    disp.register_task_class(cls(kind=tq.Kind.TRANSACTIONAL))
    with in_txn(FakeStore()) as txn:
        await disp.add_task_async(tq.Task(payload=pb.Greet()), tq.Task(payload=pb.Greet()))
    assert len(txn.saved) == 2
    assert len({p.reminder.id for p in txn.saved}) == 2
    assert sub.async_calls == 0
