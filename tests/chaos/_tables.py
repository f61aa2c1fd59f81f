"""The business tables of the replica and fault scenarios, and their schema setup."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

import tq.txn.sql
from tq import dbqueue

metadata = sa.MetaData()
# Strings of a bounded length: MySQL indexes no TEXT column without one.
orders = sa.Table("chaos_orders", metadata, sa.Column("key", sa.String(200), primary_key=True))
deliveries = sa.Table(
    "chaos_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("task", sa.String(500), nullable=False),
    sa.Column("retry", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)
events = sa.Table(
    "chaos_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(100), nullable=False),
    sa.Column("reminder", sa.String(100), nullable=False),
)


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine on PostgreSQL or MySQL / MariaDB (READ COMMITTED, as tq needs there)."""
    if url.startswith(("mysql", "mariadb")):
        return dbqueue.mysql_engine(url, **kwargs)
    return sa.create_engine(url, pool_pre_ping=True, **kwargs)


def create_tables(engine: sa.Engine) -> None:
    """The business tables, the outbox's and the database queue's."""
    metadata.create_all(engine)
    tq.txn.sql.create_schema(engine)
    dbqueue.create_schema(engine)
