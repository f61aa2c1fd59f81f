"""Which tasks add_task refuses where: a class's kind against the transaction
(or its absence), its destination against the submitter, and any transaction
open that tq was not told about."""

from __future__ import annotations

from tq._errors import ConfigError, TransactionError, ValidationError
from tq._submitter import Submitter, takes_queues, takes_topics
from tq._task import Task
from tq._taskclass import Kind, TaskClass
from tq.txn._store import Transaction, UntoldTransaction


def check_kind(cls: TaskClass, txn: Transaction | None) -> None:
    """Raises if a task of `cls` cannot be added here (in `txn`, or outside any)."""
    kind = cls.kind
    if kind is Kind.TRANSACTIONAL and txn is None:
        raise TransactionError(
            f"task class {cls.id!r} is TRANSACTIONAL: add it inside a transaction opened "
            "with tq.txn.sql.transaction(...), tq.txn.sql.bind(session), a sessionmaker or "
            "engine made transaction-aware with tq.txn.sql.instrument(...), or "
            "tq.txn.spanner.run_in_transaction(...)"
        )
    if kind is Kind.NON_TRANSACTIONAL and txn is not None:
        raise TransactionError(
            f"task class {cls.id!r} is NON_TRANSACTIONAL: add it outside the transaction "
            "(e.g. inside tq.txn.outside_transaction()), or make the class FOLLOWS_CONTEXT"
        )


def check_destination(cls: TaskClass, task: Task, submitter: Submitter) -> None:
    """Raises if a task of `cls` cannot go where its class says through `submitter`."""
    if cls.topic:
        if task.queue is not None:
            raise ValidationError(
                f"task of class {cls.id!r}: queue is for queue classes (Cloud Tasks); this "
                f"class publishes to Pub/Sub topic {cls.topic!r}"
            )
        if task.deduplication_key:
            raise ValidationError(
                f"task of class {cls.id!r}: Pub/Sub does not deduplicate, so a topic class "
                "takes no deduplication key (subscribers drop duplicates by the tq_task_id "
                "attribute, see docs/pubsub.md)"
            )
        if not takes_topics(submitter):
            raise ConfigError(
                f"task class {cls.id!r} publishes to Pub/Sub topic {cls.topic!r}, but the "
                f"submitter {submitter!r} takes no topics: use tq.Router(queues=..., "
                "topics=tq.pubsub.Publisher(...)), the database queue or tqtesting"
            )
        return
    if task.ordering_key:
        raise ValidationError(
            f"task of class {cls.id!r}: ordering_key is for topic classes (Pub/Sub); "
            "Cloud Tasks has none"
        )
    if not takes_queues(submitter):
        raise ConfigError(
            f"task class {cls.id!r} goes to Cloud Tasks queue {cls.queue!r}, but the "
            f"submitter {submitter!r} takes no queues: use tq.Router(queues=..., topics=...)"
        )


def refuse_untold(cls: TaskClass, untold: UntoldTransaction) -> None:
    """Raises for a task added while a transaction tq was not told about is open."""
    head = f"task of class {cls.id!r}: {untold.what} is open and tq was not told about it"
    if cls.kind is Kind.TRANSACTIONAL:
        raise TransactionError(f"{head}, so the task cannot be written into it. {untold.fix}")
    if cls.kind is Kind.NON_TRANSACTIONAL:
        then = "it would be submitted now, as if it were outside that transaction"
    else:
        then = "it would be submitted now, and run even if that transaction rolled back"
    raise TransactionError(
        f"{head}, so {then}. {untold.fix}; or, to submit it now regardless, add it "
        "inside tq.txn.outside_transaction()"
    )
