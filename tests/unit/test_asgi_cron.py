"""The cron endpoint (`<mount>/c/cron/<class ID>`): the task of the current tick, once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

import tq
from tests.testpb import payloads_pb2 as pb
from tests.unit.test_asgi import HOST, LAUNCHER, PUSHER, _Capture, client, make_dispatcher
from tests.unit.test_asgi import _zero_metrics as _zero_metrics  # autouse fixture
from tests.unit.test_asgi import issuer as issuer  # fixture
from tq import _metrics, _task
from tqtesting import FakeClock
from tqtesting.oidc import LocalIssuer

UTC = dt.UTC


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    fc = FakeClock(dt.datetime(2026, 3, 29, 1, 7, 30, tzinfo=UTC))  # 03:07 CEST
    with tq.clock.use_clock(fc):
        yield fc


def scheduled() -> tuple[tq.Dispatcher, _Capture]:
    d = make_dispatcher()
    d.register_task_class(
        tq.TaskClass(
            id="report", prototype=pb.Count, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q",
            schedule=tq.Cron("*/5 * * * *", time_zone="Europe/Berlin"),
            schedule_payload=lambda tick: pb.Count(n=tick.hour * 100 + tick.minute),
        )
    )  # fmt: skip
    cap = _Capture()
    d.configure(submitter=cap)
    return d, cap


def bearer(issuer: LocalIssuer, email: str = LAUNCHER) -> dict[str, str]:
    return {"Authorization": issuer.bearer(email=email, audience=f"https://{HOST}")}


async def test_a_launcher_adds_the_task_of_the_current_tick(
    issuer: LocalIssuer, clock: FakeClock
) -> None:
    d, cap = scheduled()
    async with client(d, issuer, authorized_launchers=[LAUNCHER]) as c:
        r = await c.post("/internal/tasks/c/cron/report", headers=bearer(issuer))
        again = await c.post("/internal/tasks/c/cron/report", headers=bearer(issuer))
    assert (r.status_code, r.text) == (200, "added 2026-03-29T01:05:00+00:00\n")
    assert again.status_code == 200
    # A retried call builds the same request: the same task name, created once.
    first, second = (s.request.task for s in cap.subs)
    assert first.name == second.name
    key_id = _task.deduplicated_task_id("", "report", "cron-2026-03-29T01:05Z")
    assert first.name.endswith(f"/tasks/{key_id}")
    assert first.http_request.url.endswith("/report/cron-2026-03-29T01:05Z")
    assert cap.subs[0].payload == pb.Count(n=305)  # the tick on Berlin's wall clock


async def test_cloud_schedulers_schedule_time_names_the_tick(
    issuer: LocalIssuer, clock: FakeClock
) -> None:
    d, cap = scheduled()
    headers = bearer(issuer) | {"X-CloudScheduler-ScheduleTime": "2026-03-29T00:55:00Z"}
    async with client(d, issuer, authorized_launchers=[LAUNCHER]) as c:
        r = await c.get("/internal/tasks/c/cron/report", headers=headers)
    assert r.text == "added 2026-03-29T00:55:00+00:00\n"  # a late retry keeps its tick
    assert cap.subs[0].payload == pb.Count(n=155)


@pytest.mark.parametrize("email", [PUSHER, None])
async def test_other_callers_are_refused(
    issuer: LocalIssuer, clock: FakeClock, email: str | None
) -> None:
    d, cap = scheduled()
    headers = bearer(issuer, email) if email else {}
    async with client(d, issuer, authorized_launchers=[LAUNCHER]) as c:
        r = await c.post("/internal/tasks/c/cron/report", headers=headers)
    assert r.status_code == 403
    assert cap.subs == []
    reason = "auth_email_not_allowed" if email else "auth_no_token"
    assert _metrics.value("tq_cron_calls_rejected", reason=reason) == 1


async def test_app_engine_cron_is_trusted_on_app_engine(
    issuer: LocalIssuer, clock: FakeClock
) -> None:
    d, cap = scheduled()
    d.configure(app_engine=True)
    async with client(d, issuer) as c:
        r = await c.get("/internal/tasks/c/cron/report", headers={"X-Appengine-Cron": "true"})
    assert r.status_code == 200
    assert len(cap.subs) == 1


async def test_an_unscheduled_or_unknown_class_is_404(
    issuer: LocalIssuer, clock: FakeClock
) -> None:
    d, cap = scheduled()
    d.register_task_class(
        tq.TaskClass(id="plain", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    )
    async with client(d, issuer, auth=tq.asgi.INSECURE_NO_AUTH) as c:
        assert (await c.get("/internal/tasks/c/cron/plain")).status_code == 404
        assert (await c.get("/internal/tasks/c/cron/nope")).status_code == 404
    assert cap.subs == []


def test_tqtesting_fires_a_tick_through_the_dispatcher(clock: FakeClock) -> None:
    d, cap = scheduled()
    assert d.add_scheduled_task("report") == dt.datetime(2026, 3, 29, 1, 5, tzinfo=UTC)
    with pytest.raises(tq.ValidationError, match="not a tick"):
        d.add_scheduled_task("report", dt.datetime(2026, 3, 29, 1, 6, tzinfo=UTC))
    with pytest.raises(tq.ConfigError, match="no scheduled task class"):
        d.add_scheduled_task("nope")
    assert len(cap.subs) == 1


def test_registration_refuses_bad_schedules() -> None:
    d = make_dispatcher()
    with pytest.raises(tq.ConfigError, match="TRANSACTIONAL"):
        d.task_class(
            id="t", prototype=pb.Count, kind=tq.Kind.TRANSACTIONAL, queue="q",
            schedule=tq.Cron("@daily"),
        )  # fmt: skip
    with pytest.raises(tq.ConfigError, match=r"must be a tq\.tests\.Count"):
        d.task_class(
            id="t", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="q",
            schedule=tq.Cron("@daily"), schedule_payload=pb.Greet(),
        )  # fmt: skip
    with pytest.raises(tq.ConfigError, match="needs a schedule"):
        d.task_class(
            id="t", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="q",
            schedule_payload=pb.Count(),
        )  # fmt: skip
    with pytest.raises(tq.ConfigError, match=r"must be a tq\.Cron"):
        d.task_class(
            id="t", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="q",
            schedule="@daily",  # type: ignore[arg-type]
        )  # fmt: skip
    assert d.schedules() == []
