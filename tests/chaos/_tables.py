"""The business tables of the replica and fault scenarios, and their schema setup."""

from __future__ import annotations

import sqlalchemy as sa

import tq.txn.sql
from tq import dbqueue

metadata = sa.MetaData()
orders = sa.Table("chaos_orders", metadata, sa.Column("key", sa.Text, primary_key=True))
deliveries = sa.Table(
    "chaos_deliveries",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("task", sa.Text, nullable=False),
    sa.Column("retry", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)
events = sa.Table(
    "chaos_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("reminder", sa.Text, nullable=False),
)


def create_tables(engine: sa.Engine) -> None:
    """The business tables, the outbox's and the database queue's."""
    metadata.create_all(engine)
    tq.txn.sql.create_schema(engine)
    dbqueue.create_schema(engine)
