"""The transaction seam: finders, untold transactions and `outside_transaction`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tq
import tqtesting
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import FakeStore, FakeTxn, RecordingSubmitter, in_txn
from tq.txn import (
    UntoldTransaction,
    find_transaction,
    hidden_here,
    new_transaction_scope,
    outside_transaction,
    register_finder,
    transaction_stamp,
    unregister_finder,
)

UNTOLD = UntoldTransaction(what="a test transaction", fix="tell tq with test_bind()")


@pytest.fixture
def sub() -> RecordingSubmitter:
    return RecordingSubmitter()


@pytest.fixture
def disp(sub: RecordingSubmitter) -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project="proj",
        cloud_region="us-central1",
        default_target_host="app.example.com",
        submitter=sub,
    )
    for kind, prototype in (
        (tq.Kind.NON_TRANSACTIONAL, pb.Greet),
        (tq.Kind.FOLLOWS_CONTEXT, pb.Count),
        (tq.Kind.TRANSACTIONAL, pb.Blob),
    ):
        d.register_task_class(
            tq.TaskClass(id=kind.value, prototype=prototype, kind=kind, queue="default")
        )
    return d


class Finder:
    """A finder whose answer the test sets."""

    def __init__(self) -> None:
        self.answer: tq.txn.Transaction | UntoldTransaction | None = None
        self.calls = 0

    def __call__(self) -> tq.txn.Transaction | UntoldTransaction | None:
        self.calls += 1
        return self.answer


@pytest.fixture
def finder() -> Iterator[Finder]:
    f = Finder()
    register_finder(f)
    try:
        yield f
    finally:
        unregister_finder(f)


PAYLOADS = {
    tq.Kind.NON_TRANSACTIONAL: pb.Greet(name="a"),
    tq.Kind.FOLLOWS_CONTEXT: pb.Count(n=1),
    tq.Kind.TRANSACTIONAL: pb.Blob(data=b"x"),
}


@pytest.mark.parametrize("kind", list(tq.Kind))
def test_an_untold_transaction_refuses_every_kind_and_names_the_fix(
    disp: tq.Dispatcher, sub: RecordingSubmitter, finder: Finder, kind: tq.Kind
) -> None:
    finder.answer = UNTOLD
    with pytest.raises(tq.TransactionError) as e:
        disp.add_task(tq.Task(payload=PAYLOADS[kind]))
    assert "a test transaction is open and tq was not told about it" in str(e.value)
    assert "tell tq with test_bind()" in str(e.value)
    assert sub.submitted == []


async def test_an_untold_transaction_refuses_from_async_code(
    disp: tq.Dispatcher, sub: RecordingSubmitter, finder: Finder
) -> None:
    finder.answer = UNTOLD
    with pytest.raises(tq.TransactionError, match=r"tq\.txn\.outside_transaction"):
        await disp.add_task_async(tq.Task(payload=pb.Count(n=1)))
    assert sub.submitted == []


def test_without_an_open_transaction_tasks_are_submitted(
    disp: tq.Dispatcher, sub: RecordingSubmitter, finder: Finder
) -> None:
    disp.add_task(tq.Task(payload=pb.Count(n=1)), tq.Task(payload=pb.Greet(name="a")))
    assert len(sub.submitted) == 2
    assert finder.calls == 1  # asked once per add_task, not per task


def test_a_found_transaction_takes_the_reminders(
    disp: tq.Dispatcher, sub: RecordingSubmitter, finder: Finder
) -> None:
    store = FakeStore()
    txn = FakeTxn(store)
    finder.answer = txn
    disp.add_task(tq.Task(payload=pb.Count(n=1)), tq.Task(payload=pb.Blob(data=b"x")))
    assert sub.submitted == []
    assert [p.submission.task_class for p in txn.commit()] == ["follows-context", "transactional"]
    assert find_transaction() is txn
    assert tq.txn.current_transaction() is txn


def test_an_ambient_transaction_wins_over_finders(
    disp: tq.Dispatcher, sub: RecordingSubmitter, finder: Finder
) -> None:
    finder.answer = UNTOLD
    with in_txn(FakeStore()) as txn:
        disp.add_task(tq.Task(payload=pb.Count(n=1)))
    assert len(txn.commit()) == 1
    assert finder.calls == 0
    assert sub.submitted == []


def test_outside_transaction_submits_now_whatever_is_open(
    disp: tq.Dispatcher, sub: RecordingSubmitter, finder: Finder
) -> None:
    finder.answer = UNTOLD
    with in_txn(FakeStore()) as txn, outside_transaction():
        disp.add_task(tq.Task(payload=pb.Count(n=1)), tq.Task(payload=pb.Greet(name="a")))
        with pytest.raises(tq.TransactionError, match="TRANSACTIONAL"):
            disp.add_task(tq.Task(payload=pb.Blob(data=b"x")))
        assert find_transaction() is None
    assert len(sub.submitted) == 2
    assert txn.commit() == []
    assert finder.calls == 0


def test_a_helper_inside_outside_transaction_is_ambient_again(
    disp: tq.Dispatcher, sub: RecordingSubmitter, finder: Finder
) -> None:
    with outside_transaction(), in_txn(FakeStore()) as txn:
        disp.add_task(tq.Task(payload=pb.Blob(data=b"x")))
    assert len(txn.commit()) == 1
    assert sub.submitted == []


def test_finders_are_asked_in_order_and_the_first_answer_wins(finder: Finder) -> None:
    second = Finder()
    second.answer = UNTOLD
    register_finder(second)
    register_finder(second)  # idempotent
    try:
        assert find_transaction() is UNTOLD
        assert (finder.calls, second.calls) == (1, 1)
        store_txn = FakeTxn(FakeStore())
        finder.answer = store_txn
        assert find_transaction() is store_txn
        assert second.calls == 1
        assert tq.txn.current_transaction() is store_txn
        finder.answer = None
        assert tq.txn.current_transaction() is None  # untold counts as none here
    finally:
        unregister_finder(second)
    assert find_transaction() is None


def test_a_scoped_finder_is_asked_inside_outside_transaction(finder: Finder) -> None:
    scoped = Finder()
    scoped.answer = UNTOLD
    register_finder(scoped, scoped=True)
    try:
        with outside_transaction():
            assert find_transaction() is UNTOLD
        assert finder.calls == 0  # not scoped: never asked inside the block
    finally:
        unregister_finder(scoped)


def test_outside_transaction_hides_what_began_before_it_only() -> None:
    before = transaction_stamp()
    assert not hidden_here(before)
    with outside_transaction():
        inside = transaction_stamp()
        assert hidden_here(before)
        assert not hidden_here(inside)
        with outside_transaction():
            assert hidden_here(inside)  # a block inside the block hides it too
        assert not hidden_here(inside)
    # Once the block ended, nothing is hidden, whenever it began.
    assert not hidden_here(before)
    assert not hidden_here(inside)
    with outside_transaction():
        assert hidden_here(inside)  # it began before this second block


def test_a_new_transaction_scope_hides_what_was_open_and_asks_every_finder(
    finder: Finder,
) -> None:
    finder.answer = UNTOLD
    with in_txn(FakeStore()), new_transaction_scope():
        assert find_transaction() is UNTOLD  # the helper's transaction is not seen
        assert finder.calls == 1  # unlike outside_transaction(), finders are asked
        with in_txn(FakeStore()) as inner:
            assert find_transaction() is inner
    before = transaction_stamp()
    with new_transaction_scope():
        assert hidden_here(before)
        assert not hidden_here(transaction_stamp())


def test_a_handler_does_not_see_the_transaction_of_the_code_that_ran_it() -> None:
    disp = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="app.example.com"
    )
    seen: list[object] = []

    @disp.task_class(id="look", prototype=pb.Count, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q")
    def look(payload: pb.Count) -> None:
        seen.append(find_transaction())
        if payload.n:
            disp.add_task(tq.Task(payload=pb.Count(n=payload.n - 1)))  # submitted now

    with tqtesting.testing_context(disp) as sched:
        disp.add_task(tq.Task(payload=pb.Count(n=1)))
        with in_txn(FakeStore()) as txn:  # a test that runs its tasks inside a transaction
            sched.run()
    assert seen == [None, None]
    assert txn.commit() == []
    assert len(sched.tasks().finished()) == 2
