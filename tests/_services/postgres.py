"""PostgreSQL for tests: a throwaway cluster on loopback, and a fresh database per test.

`postgres_url` (session-scoped) starts a cluster with the server binaries of
Debian's postgresql package (/usr/lib/postgresql/<v>/bin, or `postgres` on
PATH): initdb into a temporary directory with trust auth, `fsync=off`,
listening on 127.0.0.1 on a free port, run as the `postgres` OS user when
the tests run as root (the server refuses root). It yields a SQLAlchemy URL
(`postgresql+psycopg://postgres@127.0.0.1:PORT/postgres`) and stops the
cluster at the end. With TQ_TEST_PG_URL set, that server is used instead.
Without a server binary the tests that need it are skipped.

`postgres_db_url` (function-scoped) creates an empty database for one test
and drops it afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0
_db_seq = itertools.count()


def _server_bindir() -> str | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which("postgres")
    if on_path and shutil.which("initdb"):
        return os.path.dirname(on_path)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> dict[str, Any]:
    """subprocess keywords that drop root to the postgres user."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip(
            "PostgreSQL tests run as root need the 'postgres' OS user (apt-get install postgresql)"
        )
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _connectable(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(
            url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=2
        ):
            return True
    except psycopg.OperationalError:
        return False


class NoServer(RuntimeError):
    """No PostgreSQL server binary (or no postgres OS user) on this machine."""


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[str]:
    """Starts a PostgreSQL cluster in a temporary directory; yields its URL.

    Usable outside pytest (bench/). Raises NoServer when it cannot start one.
    """
    bindir = _server_bindir()
    if bindir is None:
        raise NoServer(
            "no PostgreSQL server binary (apt-get install postgresql, or set TQ_TEST_PG_URL)"
        )
    as_postgres = _run_as()
    root = tempfile.mkdtemp(prefix="tq-pg-")
    data, sockets, log_path = f"{root}/data", f"{root}/sock", f"{root}/server.log"
    os.mkdir(sockets)
    if as_postgres:
        for path in (root, sockets):
            os.chown(path, as_postgres["user"], as_postgres["group"])
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--locale=C", "--no-sync"],
            check=True, capture_output=True, timeout=120, **as_postgres,
        )  # fmt: skip
        port = _free_port()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [f"{bindir}/postgres", "-D", data, "-p", str(port), "-k", sockets,
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_postgres,
            )  # fmt: skip
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not _connectable(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"PostgreSQL did not start on port {port}:\n{tail}")
            time.sleep(0.05)
        yield url
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of a running PostgreSQL server (the `postgres` database)."""
    pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg (tq[postgres])")
    existing = os.environ.get("TQ_TEST_PG_URL")
    if existing:
        yield existing.replace("postgresql://", "postgresql+psycopg://", 1)
        return
    try:
        cluster = throwaway_cluster()
        url = cluster.__enter__()
    except NoServer as e:
        pytest.skip(str(e))
    try:
        yield url
    finally:
        cluster.__exit__(None, None, None)


@pytest.fixture
def postgres_db_url(postgres_url: str) -> Iterator[str]:
    """A SQLAlchemy URL of a new, empty database, dropped after the test."""
    import psycopg

    name = f"tq_test_{os.getpid()}_{next(_db_seq)}"
    admin = _libpq(postgres_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = postgres_url.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
