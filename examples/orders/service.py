"""The orders service: placing orders, and the background tasks that follow.

* Placing an order commits the order row and a TRANSACTIONAL
  `send-confirmation` task together: the e-mail goes out if and only if the
  order exists.
* `count-down` is a FOLLOWS_CONTEXT chain: each step records itself and
  adds the next step in the same transaction, until 0.
* `daily-report` has a cron schedule: every day at 00:05 UTC, a report on
  the day before. On the database queue (`tq dev`, the embedded default)
  the workers add it; on Google Cloud, a Cloud Scheduler job or App Engine
  cron entry (`tq schedules` prints them; see deploy/) calls tq's cron
  endpoint, which adds it. Either way one task per day, however many
  workers or retried calls.

Handlers may run more than once (delivery is at least once), so each one
checks what it already did.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

import tq
import tq.txn.sql
from examples.orders import orders_pb2 as pb
from examples.orders.db import Base, CountdownStep, DailyReport, Order, make_engine
from tq.cli import settings_from_env

log = logging.getLogger("orders")

DEFAULT_DATABASE_URL = "sqlite:///orders.db"


class Mailer(Protocol):
    def send(self, to: str, subject: str, body: str) -> None:
        """Sends one e-mail; raises to have the task retried."""
        ...


class LogMailer:
    """Sends nothing: logs each e-mail (stand-in for an e-mail API client)."""

    def send(self, to: str, subject: str, body: str) -> None:
        log.info("e-mail to %s: %s", to, subject)


def report_of_day_before(tick: dt.datetime) -> pb.DailyReport:
    """The payload of the daily report's scheduled task: the day before the tick."""
    return pb.DailyReport(day=(tick.date() - dt.timedelta(days=1)).isoformat())


class OrdersService:
    """The service's state and operations, on one database and one dispatcher.

    Args:
      engine: the database of orders; the outbox (and, on the embedded
        default, the database queue) lives there too.
      dispatcher: where the task classes are registered; default a new one.
      mailer: sends the confirmation e-mails; default `LogMailer`.
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        dispatcher: tq.Dispatcher | None = None,
        mailer: Mailer | None = None,
    ) -> None:
        self.engine = engine
        self.Session = sessionmaker(engine, expire_on_commit=False)
        self.store = tq.txn.sql.SQLStore(engine, name="orders")
        self.dispatcher = dispatcher if dispatcher is not None else tq.Dispatcher()
        self.mailer: Mailer = mailer if mailer is not None else LogMailer()
        register = self.dispatcher.task_class
        register(
            id="send-confirmation", prototype=pb.SendConfirmation,
            kind=tq.Kind.TRANSACTIONAL, queue="emails",
        )(self.send_confirmation)  # fmt: skip
        register(
            id="count-down", prototype=pb.CountDown, kind=tq.Kind.FOLLOWS_CONTEXT, queue="default"
        )(self.count_down)
        register(
            id="daily-report", prototype=pb.DailyReport,
            kind=tq.Kind.NON_TRANSACTIONAL, queue="default",
            schedule=tq.Cron("5 0 * * *"), schedule_payload=report_of_day_before,
        )(self.daily_report)  # fmt: skip

    @classmethod
    def from_env(cls) -> OrdersService:
        """The service on `TQ_DATABASE_URL` (default `sqlite:///orders.db`).

        Read as the `tq` command reads it: a SQLAlchemy URL, or a SQLite file path.
        """
        url = settings_from_env(os.environ, ["database_url"])["database_url"]
        return cls(make_engine(url or DEFAULT_DATABASE_URL))

    def create_schema(self) -> None:
        """Creates the service's tables and the outbox's (idempotent)."""
        Base.metadata.create_all(self.engine)
        self.store.create_schema()

    def close(self) -> None:
        self.store.close()
        self.engine.dispose()

    # Operations.

    def place_order(self, email: str, item: str, quantity: int) -> int:
        """Stores an order and, in the same transaction, its confirmation task."""
        with tq.txn.sql.transaction(self.Session) as session:
            order = Order(email=email, item=item, quantity=quantity, created_at=tq.clock.now())
            session.add(order)
            session.flush()  # assigns order.id
            self.dispatcher.add_task(
                tq.Task(
                    payload=pb.SendConfirmation(order_id=order.id, email=email),
                    title=f"order-{order.id}",
                )
            )
            return order.id

    def get_order(self, order_id: int) -> Order | None:
        with self.Session() as session:
            return session.get(Order, order_id)

    def start_countdown(self, n: int, chain: str) -> None:
        """Starts a chain n, n-1, ..., 0 (outside a transaction: submitted at once)."""
        self.dispatcher.add_task(tq.Task(payload=pb.CountDown(n=n, chain=chain)))

    def countdown_steps(self, chain: str) -> list[int]:
        with self.Session() as session:
            rows = session.scalars(
                sa.select(CountdownStep.n)
                .where(CountdownStep.chain == chain)
                .order_by(CountdownStep.n.desc())
            )
            return list(rows)

    def request_daily_report(self, day: dt.date) -> None:
        """Adds the report task of `day` once, however often it is called (e.g. to redo a day)."""
        self.dispatcher.add_task(
            tq.Task(
                payload=pb.DailyReport(day=day.isoformat()),
                deduplication_key=f"daily-report-{day.isoformat()}",
            )
        )

    # Task handlers.

    def send_confirmation(self, task: pb.SendConfirmation) -> None:
        with tq.txn.sql.transaction(self.Session) as session:
            order = session.get(Order, task.order_id)
            if order is None:
                # Cannot happen for a transactional task: say so, and do not retry.
                raise tq.Fatal(f"order {task.order_id} does not exist")
            if order.confirmed_at is not None:
                return  # a repeated delivery: the e-mail went out already
            try:
                self.mailer.send(
                    task.email, f"Order {order.id} confirmed", f"{order.quantity} x {order.item}"
                )
            except OSError as e:
                # Retried with backoff; any other exception would be too, but
                # logged as an error with its traceback.
                raise tq.Transient(f"mail server: {e}") from e
            order.confirmed_at = tq.clock.now()

    def count_down(self, task: pb.CountDown) -> None:
        with tq.txn.sql.transaction(self.Session) as session:
            if session.get(CountdownStep, (task.chain, task.n)) is not None:
                return  # handled already (a repeated delivery)
            session.add(CountdownStep(chain=task.chain, n=task.n, at=tq.clock.now()))
            if task.n > 0:
                # FOLLOWS_CONTEXT inside a transaction: committed with this step.
                self.dispatcher.add_task(
                    tq.Task(payload=pb.CountDown(n=task.n - 1, chain=task.chain))
                )

    def daily_report(self, task: pb.DailyReport) -> None:
        # A task without a day reports on yesterday.
        day = (
            dt.date.fromisoformat(task.day)
            if task.day
            else tq.clock.now().date() - dt.timedelta(days=1)
        )
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        with tq.txn.sql.transaction(self.Session) as session:
            n = session.scalar(
                sa.select(sa.func.count(Order.id)).where(
                    Order.created_at >= start, Order.created_at < start + dt.timedelta(days=1)
                )
            )
            session.merge(DailyReport(day=day.isoformat(), orders=int(n or 0)))
        log.info("daily report %s: %d orders", day, n or 0)
