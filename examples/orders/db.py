"""The orders service's tables, and an engine set up for them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320))
    item: Mapped[str] = mapped_column(sa.String(200))
    quantity: Mapped[int]
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    # Set by the send-confirmation task: the e-mail went out.
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(
        sa.DateTime(timezone=True), default=None
    )


class CountdownStep(Base):
    """One step of a count-down chain, written by the task that handled it."""

    __tablename__ = "countdown_steps"

    chain: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    n: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))


class DailyReport(Base):
    __tablename__ = "daily_reports"

    day: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    orders: Mapped[int]


def make_engine(url: str) -> sa.Engine:
    """An engine for `url`; SQLite gets WAL and a generous busy timeout.

    Several writers (requests, task handlers, queue workers) share one SQLite
    file on the embedded default: WAL lets readers run beside the writer and
    the timeout makes writers wait for each other instead of failing.
    """
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _wal(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine
