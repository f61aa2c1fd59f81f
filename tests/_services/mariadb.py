"""MariaDB for tests: a throwaway server on loopback, and a fresh database per test.

`mariadb_url` (session-scoped: started once per test session) initializes a
data directory with Debian's mariadb-server (`mariadb-install-db`), starts
`mariadbd` on 127.0.0.1 on a free port as the `mysql` OS user when the
tests run as root, with durability off (tests only), and yields a
SQLAlchemy URL (`mysql+pymysql://root@127.0.0.1:PORT/`). With
TQ_TEST_MYSQL_URL set, that server is used instead. Without the server
binary the tests that need it are skipped.

`mariadb_db_url` (function-scoped) creates an empty database for one test
and drops it afterwards.
"""

from __future__ import annotations

import contextlib
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


class NoServer(RuntimeError):
    """No MariaDB server binary on this machine."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connect(url: str) -> Any:
    import pymysql

    rest = url.split("://", 1)[1]
    hostport = rest.split("@", 1)[1].split("/", 1)[0]
    host, port = hostport.split(":")
    return pymysql.connect(host=host, port=int(port), user="root", connect_timeout=2)


def _connectable(url: str) -> bool:
    import pymysql

    try:
        _connect(url).close()
        return True
    except pymysql.err.OperationalError:
        return False


@contextlib.contextmanager
def throwaway_server() -> Iterator[str]:
    """Starts MariaDB in a temporary directory; yields its URL (no database part).

    Usable outside pytest (bench/). Raises NoServer when it cannot start one.
    """
    server = shutil.which("mariadbd") or (
        "/usr/sbin/mariadbd" if os.path.exists("/usr/sbin/mariadbd") else None
    )
    install = shutil.which("mariadb-install-db")
    if server is None or install is None:
        raise NoServer("no MariaDB server (apt-get install mariadb-server, or TQ_TEST_MYSQL_URL)")
    user: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("mysql")
        except KeyError:
            raise NoServer("MariaDB tests run as root need the 'mysql' OS user") from None
        user = ["--user=mysql"]
    root = tempfile.mkdtemp(prefix="tq-mariadb-")
    data, sock, log_path = f"{root}/data", f"{root}/mysqld.sock", f"{root}/server.log"
    if user:
        shutil.chown(root, "mysql", "mysql")
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [install, f"--datadir={data}", "--auth-root-authentication-method=normal",
             "--skip-test-db", *user],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        port = _free_port()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [server, "--no-defaults", f"--datadir={data}", f"--port={port}",
                 f"--socket={sock}", "--bind-address=127.0.0.1", *user,
                 "--innodb-flush-log-at-trx-commit=0", "--sync-binlog=0", "--skip-log-bin",
                 "--innodb-buffer-pool-size=128M", "--innodb-log-file-size=48M",
                 "--max-connections=300", "--character-set-server=utf8mb4",
                 "--collation-server=utf8mb4_bin", f"--pid-file={root}/mysqld.pid"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        url = f"mysql+pymysql://root@127.0.0.1:{port}/"
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not _connectable(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log_path, errors="replace") as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"MariaDB did not start on port {port}:\n{tail}")
            time.sleep(0.05)
        yield url
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    """A SQLAlchemy URL of a running MariaDB server (no database selected)."""
    pytest.importorskip("pymysql", reason="MariaDB tests need pymysql (tq[mysql])")
    existing = os.environ.get("TQ_TEST_MYSQL_URL")
    if existing:
        yield existing
        return
    try:
        server = throwaway_server()
        url = server.__enter__()
    except NoServer as e:
        pytest.skip(str(e))
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture
def mariadb_db_url(mariadb_url: str) -> Iterator[str]:
    """A SQLAlchemy URL of a new, empty database, dropped after the test."""
    name = f"tq_test_{os.getpid()}_{next(_db_seq)}"
    conn = _connect(mariadb_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
    finally:
        conn.close()
    yield mariadb_url.rstrip("/") + "/" + name
    conn = _connect(mariadb_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        conn.close()
