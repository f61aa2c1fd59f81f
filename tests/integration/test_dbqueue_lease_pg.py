"""The worker's one-statement lease on PostgreSQL (`tq.dbqueue._lease_pg`): the
outcomes it records on the way, the queue lock it waits for, and outcomes kept
while the database is away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from tests._dbqueue import submission, task_state, wait_for
from tq import clock, dbqueue
from tq.dbqueue import State, _lease, _lease_pg
from tq.dbqueue._schema import to_us

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(postgres_db_url: str) -> Iterator[sa.Engine]:
    e = sa.create_engine(postgres_db_url)
    dbqueue.create_schema(e)
    yield e
    e.dispose()


@pytest.fixture
async def session(engine: sa.Engine) -> AsyncIterator[_lease_pg.Session]:
    s = _lease_pg.Session(engine)
    yield s
    await s.aclose()


def _queue(engine: sa.Engine, tasks: int, **config: float) -> dbqueue.QueueConfig:
    cfg = dbqueue.QueueConfig("q", **config)  # type: ignore[arg-type]
    dbqueue.apply_queues(engine, [cfg])
    sub = dbqueue.DbQueueSubmitter(engine)
    for i in range(tasks):
        sub.submit(submission(name=f"t{i}"))
    return cfg


async def _lease_n(
    session: _lease_pg.Session, cfg: dbqueue.QueueConfig, want: int, **kw: object
) -> list[_lease.Leased]:
    got, _ = await session.lease(
        cfg, want=want, owner="w", now_us=to_us(clock.now()), default_deadline_s=60,
        grace_s=30, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return got


async def test_a_lease_records_the_outcomes_it_is_given_and_frees_their_slots(
    engine: sa.Engine, session: _lease_pg.Session
) -> None:
    cfg = _queue(engine, 4, max_concurrent=2, rate_per_s=1000)
    first = await _lease_n(session, cfg, 2)
    assert len(first) == 2
    assert await _lease_n(session, cfg, 2) == []  # two in flight: the limit
    done = [_lease.decide(t, True, 200, None, True) for t in first]
    second = await _lease_n(session, cfg, 2, outcomes=done)
    # Their outcomes were written by the statement that leased the next two.
    assert len(second) == 2
    assert {t.name for t in first}.isdisjoint(t.name for t in second)
    for t in first:
        info = task_state(engine, t.name)
        assert (info.state, info.last_status, info.executions) == (State.DONE, 200, 1)


async def test_an_outcome_whose_lease_was_lost_is_not_written(
    engine: sa.Engine, session: _lease_pg.Session
) -> None:
    cfg = _queue(engine, 2, max_concurrent=0, rate_per_s=1000)
    (t,) = await _lease_n(session, cfg, 1)
    stale = _lease.decide(t, True, 200, None, True)
    with engine.begin() as conn:  # reclaimed and leased again by another worker
        conn.execute(
            sa.text("UPDATE tq_tasks SET lease_owner = 'other', attempts = attempts + 1 "
                    "WHERE id = :id"),
            {"id": t.id},
        )  # fmt: skip
    (other,) = await _lease_n(session, cfg, 1, outcomes=[stale])
    assert other.name != t.name
    info = task_state(engine, t.name)
    assert (info.state, info.attempts) == (State.LEASED, 2)


async def test_a_lease_waits_for_the_queue_lock_and_spends_what_the_holder_left(
    engine: sa.Engine, session: _lease_pg.Session, postgres_db_url: str
) -> None:
    # No limit on tasks in flight: the lease is one statement that locks the
    # queue's row itself. A holder of that lock leases two tasks and leaves one
    # token; the lease, waiting meanwhile, must see both once it gets the lock.
    cfg = _queue(engine, 5, max_concurrent=0, rate_per_s=0.001, bucket_size=5)
    url = postgres_db_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as holder:
        holder.execute("SELECT 1 FROM tq_queues WHERE name = 'q' FOR UPDATE")
        taken = [
            r[0]
            for r in holder.execute(
                "UPDATE tq_tasks SET state = 'leased', lease_owner = 'holder' WHERE id IN "
                "(SELECT id FROM tq_tasks ORDER BY eta_us LIMIT 2) RETURNING name"
            )
        ]
        holder.execute("UPDATE tq_queues SET tokens = 1 WHERE name = 'q'")
        leasing = asyncio.create_task(_lease_n(session, cfg, 5))

        def waiting_for_a_lock() -> bool:
            with engine.connect() as conn:
                return bool(
                    conn.execute(
                        sa.text("SELECT count(*) FROM pg_stat_activity "
                                "WHERE wait_event_type = 'Lock' AND datname = current_database()")
                    ).scalar_one()
                )  # fmt: skip

        await wait_for(waiting_for_a_lock)
        assert not leasing.done()
        holder.commit()
    got = await leasing
    assert len(got) == 1
    assert got[0].name not in taken


async def test_an_outcome_that_met_the_database_away_is_written_once_it_is_back(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests._dbqueue import RecordingApp

    _queue(engine, 1, max_concurrent=0, rate_per_s=1000)
    failed: list[int] = []
    record = _lease_pg.Session.record

    async def away(self: _lease_pg.Session, results: Any) -> int:
        if len(failed) < 3:  # the server away for the first three writes
            failed.append(1)
            raise psycopg.OperationalError("the server is away")
        return await record(self, results)

    monkeypatch.setattr(_lease_pg.Session, "record", away)
    app = RecordingApp()
    async with dbqueue.Worker(engine, app=app, poll_interval=0.05) as w:
        await w.start()
        await wait_for(lambda: task_state(engine, "t0").state is State.DONE)
    assert len(app.pushes) == 1  # kept, not dropped: the task did not run again
    assert len(failed) == 3
