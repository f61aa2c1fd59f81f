"""The orders example, tested the way its users would test theirs: with tqtesting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tq
import tq.asgi
import tqtesting
from examples.orders import orders_pb2 as pb
from examples.orders.db import DailyReport, make_engine
from examples.orders.service import OrdersService
from examples.orders.web import create_app


class RecordingMailer:
    """Records e-mails; fails the first `failures` sends."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[tuple[str, str]] = []
        self.tries = 0

    def send(self, to: str, subject: str, body: str) -> None:
        self.tries += 1
        if self.tries <= self.failures:
            raise ConnectionError("mail server unavailable")
        self.sent.append((to, subject))


@pytest.fixture
def mailer() -> RecordingMailer:
    return RecordingMailer()


@pytest.fixture
def service(tmp_path: Path, mailer: RecordingMailer) -> Iterator[OrdersService]:
    svc = OrdersService(make_engine(f"sqlite:///{tmp_path}/orders.db"), mailer=mailer)
    svc.dispatcher.configure(
        cloud_project="orders-test", cloud_region="us-central1",
        default_target_host="orders.example.com",
    )  # fmt: skip
    svc.create_schema()
    yield svc
    svc.close()


@pytest.fixture
def tq_dispatcher(service: OrdersService) -> tq.Dispatcher:
    return service.dispatcher


def test_placing_an_order_sends_one_confirmation(
    service: OrdersService, mailer: RecordingMailer, tq_scheduler: tqtesting.Scheduler
) -> None:
    order_id = service.place_order("ada@example.com", "tea", 2)

    tq_scheduler.run(tqtesting.stop_when_drained())

    assert mailer.sent == [("ada@example.com", f"Order {order_id} confirmed")]
    assert tq_scheduler.tasks().finished().payloads() == [
        pb.SendConfirmation(order_id=order_id, email="ada@example.com")
    ]
    order = service.get_order(order_id)
    assert order is not None
    assert order.confirmed_at is not None


def test_order_rolled_back_leaves_no_confirmation_task(
    service: OrdersService, tq_scheduler: tqtesting.Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_add_task(*tasks: tq.Task) -> None:
        real_add_task(*tasks)
        raise RuntimeError("the request failed after adding the task")

    real_add_task = service.dispatcher.add_task
    monkeypatch.setattr(service.dispatcher, "add_task", broken_add_task)

    with pytest.raises(RuntimeError):
        service.place_order("ada@example.com", "tea", 1)

    assert len(tq_scheduler.tasks()) == 0
    assert service.get_order(1) is None


def test_failed_email_is_retried_until_it_goes_out(
    service: OrdersService, mailer: RecordingMailer, tq_scheduler: tqtesting.Scheduler
) -> None:
    mailer.failures = 2
    service.place_order("ada@example.com", "tea", 1)

    tq_scheduler.run(tqtesting.stop_when_drained())

    (task,) = tq_scheduler.tasks().of_class("send-confirmation")
    assert task.attempts == 3
    assert task.status is tqtesting.TaskStatus.FINISHED
    assert len(mailer.sent) == 1


def test_repeated_delivery_sends_no_second_email(
    service: OrdersService, mailer: RecordingMailer, tq_scheduler: tqtesting.Scheduler
) -> None:
    order_id = service.place_order("ada@example.com", "tea", 1)
    tq_scheduler.run(tqtesting.stop_when_drained())

    service.send_confirmation(pb.SendConfirmation(order_id=order_id, email="ada@example.com"))

    assert len(mailer.sent) == 1


def test_count_down_chain_runs_to_zero_one_transactional_step_at_a_time(
    service: OrdersService, tq_scheduler: tqtesting.Scheduler
) -> None:
    service.start_countdown(5, "launch")

    tq_scheduler.run(tqtesting.stop_when_drained())

    assert service.countdown_steps("launch") == [5, 4, 3, 2, 1, 0]
    steps = tq_scheduler.tasks().of_class("count-down")
    assert [t.payload.n for t in steps] == [5, 4, 3, 2, 1, 0]
    # The first step was added outside a transaction, the others inside their
    # handler's transaction (FOLLOWS_CONTEXT): those came through reminders.
    assert [t.reminder_id is not None for t in steps] == [False, True, True, True, True, True]


def test_daily_report_is_added_once_per_day_however_often_cron_calls(
    service: OrdersService, tq_scheduler: tqtesting.Scheduler, tq_clock: tqtesting.FakeClock
) -> None:
    service.place_order("ada@example.com", "tea", 1)
    service.place_order("bob@example.com", "cake", 3)
    today = tq_clock.now().date()

    service.request_daily_report(today)
    service.request_daily_report(today)
    tq_scheduler.run(tqtesting.stop_when_drained())

    assert len(tq_scheduler.tasks().of_class("daily-report")) == 1
    with service.Session() as session:
        report = session.get(DailyReport, today.isoformat())
    assert report is not None
    assert report.orders == 2


async def test_http_api_places_an_order_that_gets_confirmed(
    service: OrdersService, mailer: RecordingMailer, tq_scheduler: tqtesting.Scheduler
) -> None:
    app = create_app(service, push_auth=tq.asgi.INSECURE_NO_AUTH)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://orders") as client:
        created = await client.post("/orders", json={"email": "ada@example.com", "item": "tea"})
        assert created.status_code == 201
        order_id = created.json()["id"]
        assert (await client.get(f"/orders/{order_id}")).json()["confirmed"] is False

        await tq_scheduler.run_async(tqtesting.stop_when_drained())

        assert (await client.get(f"/orders/{order_id}")).json()["confirmed"] is True
        assert (await client.post("/orders", json={"email": "nobody"})).status_code == 400
    assert mailer.sent == [("ada@example.com", f"Order {order_id} confirmed")]


def test_the_daily_report_tick_reports_on_the_day_before(
    service: OrdersService, tq_scheduler: tqtesting.Scheduler, tq_clock: tqtesting.FakeClock
) -> None:
    import datetime as dt

    service.place_order("ada@example.com", "tea", 1)
    yesterday = tq_clock.now().date()
    tq_clock.set(dt.datetime.combine(yesterday + dt.timedelta(days=1), dt.time(0, 7), dt.UTC))

    # What the cron endpoint does when Cloud Scheduler calls it, twice: one task.
    tick = service.dispatcher.add_scheduled_task("daily-report")
    service.dispatcher.add_scheduled_task("daily-report")
    tq_scheduler.run(tqtesting.stop_when_drained())

    assert tick.time() == dt.time(0, 5)
    assert tq_scheduler.tasks().of_class("daily-report").payloads() == [
        pb.DailyReport(day=yesterday.isoformat())
    ]
    with service.Session() as session:
        report = session.get(DailyReport, yesterday.isoformat())
    assert report is not None
    assert report.orders == 1


async def test_daily_report_recurs_on_the_database_queue(
    tmp_path: Path, tq_clock: tqtesting.FakeClock
) -> None:
    import datetime as dt

    from tq import dbqueue

    queue_engine = dbqueue.sqlite_engine(tmp_path / "orders.db")
    dbqueue.create_schema(queue_engine)
    service = OrdersService(make_engine(f"sqlite:///{tmp_path}/orders.db"))
    service.dispatcher.configure(
        cloud_project="p", cloud_region="r", default_target_host="orders.internal",
        submitter=dbqueue.DbQueueSubmitter(queue_engine),
    )  # fmt: skip
    try:
        service.create_schema()
        service.place_order("ada@example.com", "tea", 1)
        service.place_order("bob@example.com", "cake", 2)
        start = tq_clock.now()
        app = create_app(service, push_auth=tq.asgi.INSECURE_NO_AUTH)
        worker = dbqueue.Worker(queue_engine, app=app, dispatcher=service.dispatcher)
        async with worker:
            await worker.run_until_idle()  # the confirmations; the schedule starts
            tq_clock.advance(dt.timedelta(days=1, minutes=10))
            await worker.run_until_idle()  # the report of the day before
            await worker.run_until_idle()  # nothing more: one task per tick

        reports = dbqueue.Admin(queue_engine).list_tasks(task_class="daily-report")
        assert len(reports) == 1
        with service.Session() as session:
            report = session.get(DailyReport, start.date().isoformat())
        assert report is not None
        assert report.orders == 2
    finally:
        service.close()
        queue_engine.dispose()


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("orders.db", "sqlite:///orders.db"),
        ("/srv/data/orders.db", "sqlite:////srv/data/orders.db"),
        ("sqlite:///orders.db", "sqlite:///orders.db"),
        ("postgresql://app@db/orders", "postgresql+psycopg://app@db/orders"),
    ],
)
def test_the_service_reads_tq_database_url_by_the_commands_rule(
    value: str, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bare path is a SQLite file, as for `tq --db` (docs/cli.md): one rule everywhere.
    monkeypatch.setenv("TQ_DATABASE_URL", value)
    service = OrdersService.from_env()
    try:
        assert service.engine.url.render_as_string(hide_password=False) == url
    finally:
        service.close()
