"""docs/cli.md's exit-code table, row by row, as scripts see it.

Each test below runs `tq` (in-process through `tq.cli.main`, or as a
process where a signal or a server is involved) into one cause the table
lists, and checks the code and that the error is one line starting with
`tq: error: `. `test_every_row_of_the_table_is_tested` keeps the table and
these tests in step.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

import tq
import tq.cli
import tq.txn.sql
import tqtesting
from tests.testpb import payloads_pb2 as pb
from tq.cli._databases import sql_engine

ROOT = Path(__file__).resolve().parents[2]
APP = "examples.orders.main:app"
TESTED: dict[int, list[str]] = {}


def row(code: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks a test as one case of the table's row `code`."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        TESTED.setdefault(code, []).append(fn.__name__)
        return fn

    return mark


def documented_codes() -> dict[int, str]:
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text[text.index("## Exit codes") : text.index("## Configuration")]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| (.+) \|$", table, re.M)}


def test_every_row_of_the_table_is_tested() -> None:
    assert sorted(documented_codes()) == sorted(TESTED)


def tq_main(
    capsys: pytest.CaptureFixture[str], *argv: str, stdin: str | None = None
) -> tuple[int, str]:
    """Runs `tq argv` in this process; (exit code, stderr)."""
    saved = sys.stdin
    if stdin is not None:
        import io

        sys.stdin = io.StringIO(stdin)
    try:
        code: Any = tq.cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    finally:
        sys.stdin = saved
    return int(code or 0), capsys.readouterr().err


def assert_error(got: tuple[int, str], code: int, says: str) -> None:
    exit_code, err = got
    assert exit_code == code, err
    lines = err.splitlines()
    assert len(lines) == 1, f"one error line, got:\n{err}"
    assert lines[0].startswith("tq: error: "), lines[0]
    assert says in lines[0], lines[0]


@pytest.fixture(autouse=True)
def _database_url_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    # Commands that load an app export --db as TQ_DATABASE_URL: undone after each test.
    monkeypatch.setenv("TQ_DATABASE_URL", "")
    monkeypatch.delenv("TQ_DATABASE_URL")


@pytest.fixture
def db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """A SQLite file with tq's tables."""
    path = str(tmp_path / "tq.db")
    assert tq_main(capsys, "db", "init", "--db", path)[0] == 0
    return path


@pytest.fixture
def empty_db(tmp_path: Path) -> str:
    return str(tmp_path / "empty.db")


# 0: done.


@row(0)
def test_done_is_0(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = tq_main(capsys, "db", "init", "--db", str(tmp_path / "new.db"))
    assert (code, "error" in err) == (0, False), err


@row(0)
def test_a_graceful_stop_of_sweep_loop_is_0(db: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tq.cli", "sweep", "--loop", "--db", db, "--sweep-interval", "3600"],
        cwd=ROOT, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        _Stderr(proc).wait_for("sweeping every")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        _stop(proc)


# 1: the command ran but did not do what was asked.


@row(1)
def test_no_such_queue_is_1(capsys: pytest.CaptureFixture[str], db: str) -> None:
    assert_error(tq_main(capsys, "queues", "pause", "nosuch", "--db", db), 1, "no queue 'nosuch'")


@row(1)
def test_no_such_reminder_is_1(capsys: pytest.CaptureFixture[str], db: str) -> None:
    got = tq_main(capsys, "parked", "replay", "f" * 32, "--db", db)
    assert_error(got, 1, "no parked reminder")


@row(1)
def test_a_sweep_that_parked_reminders_is_1(capsys: pytest.CaptureFixture[str], db: str) -> None:
    engine = sql_engine(db)
    try:
        _add_stale_reminder(engine)
        with engine.begin() as conn:  # a reminder nobody can decode: parked (DATA_LOSS)
            conn.execute(sa.text("UPDATE tq_reminders SET payload = :p"), {"p": b"\xff\x00"})
    finally:
        engine.dispose()
    assert_error(tq_main(capsys, "sweep", "--db", db), 1, "1 reminders were parked")


@row(1)
def test_declining_a_confirmation_is_1(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, err = tq_main(capsys, "queues", "purge", "default", "--db", db, stdin="n\n")
    assert code == 1
    assert err.splitlines() == [
        "delete every task of queue default? [y/N]: ",
        "tq: error: declined: queue default not purged",
    ]


# 2: usage.


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["queues", "list", "--bogus"], "No such option '--bogus'"),
        (["tasks", "run"], "Missing argument 'QUEUE'"),
        (["no-such-command"], "No such command"),
        (["sweep", "--sweep-shards", "many"], "--sweep-shards"),
        (["tasks", "list", "--db", "x.db", "--state", "bogus"], "--state 'bogus'"),
    ],
)
@row(2)
def test_bad_flags_or_arguments_are_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    assert_error(tq_main(capsys, *argv), 2, says)


# 3: configuration.


@row(3)
def test_a_missing_setting_is_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert_error(tq_main(capsys, "queues", "list"), 3, "--db URL")


@row(3)
def test_a_database_url_no_dialect_takes_is_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert_error(tq_main(capsys, "queues", "list", "--db", "foo://x"), 3, "--db 'foo://x'")


@row(3)
def test_an_app_that_cannot_be_imported_is_3(capsys: pytest.CaptureFixture[str], db: str) -> None:
    got = tq_main(capsys, "sweep", "--app", "no_such_module:app", "--db", db)
    assert_error(got, 3, "cannot import app module 'no_such_module'")


@row(3)
def test_an_app_whose_import_fails_is_3(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tq_broken_app.py").write_text("raise RuntimeError('no settings')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    got = tq_main(capsys, "sweep", "--app", "tq_broken_app:app", "--db", db)
    assert_error(got, 3, "cannot import app module 'tq_broken_app': RuntimeError: no settings")


@row(3)
def test_a_missing_optional_dependency_is_3(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tq.cli, "missing_dependencies", lambda: ["rich"])
    assert_error(tq_main(capsys, "config"), 3, "pip install 'tq[cli]'")


@pytest.mark.parametrize(
    "argv",
    [["sweep"], ["reminders", "count"], ["queues", "list"], ["worker", "--until-idle"]],
)
@row(3)
def test_missing_tables_on_sqlite_are_3_and_say_to_run_db_init(
    capsys: pytest.CaptureFixture[str], empty_db: str, argv: list[str]
) -> None:
    assert_error(tq_main(capsys, *argv, "--db", empty_db), 3, "run `tq db init")


@pytest.mark.postgres
@pytest.mark.parametrize("argv", [["sweep"], ["reminders", "count"], ["tasks", "list"]])
@row(3)
def test_missing_tables_on_postgresql_are_3_and_say_to_run_db_init(
    capsys: pytest.CaptureFixture[str], postgres_db_url: str, argv: list[str]
) -> None:
    assert_error(tq_main(capsys, *argv, "--db", postgres_db_url), 3, "run `tq db init")


@pytest.mark.spanner
@pytest.mark.parametrize("argv", [["sweep"], ["reminders", "count"]])
@row(3)
def test_missing_tables_on_spanner_are_3_and_say_to_run_db_init(
    capsys: pytest.CaptureFixture[str], spanner_without_tables: str, argv: list[str]
) -> None:
    got = tq_main(capsys, *argv, "--spanner", spanner_without_tables)
    assert_error(got, 3, "run `tq db init")


@row(3)
def test_a_schema_newer_than_this_tq_is_3(capsys: pytest.CaptureFixture[str], db: str) -> None:
    engine = sql_engine(db)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE tq_schema_version SET version = 999"))
    finally:
        engine.dispose()
    assert_error(tq_main(capsys, "db", "migrate", "--db", db), 3, "999")


# 4: a backend could not be reached or failed for now.


@row(4)
def test_an_unreachable_database_is_4(capsys: pytest.CaptureFixture[str]) -> None:
    got = tq_main(
        capsys, "reminders", "count", "--db", f"postgresql://u@127.0.0.1:{_closed_port()}/x"
    )
    assert_error(got, 4, "database: connection")


@row(4)
def test_a_port_in_use_is_4(
    capsys: pytest.CaptureFixture[str], db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        registered = {store.name for store in tq.txn.stores()}
        try:
            got = tq_main(capsys, "serve", APP, "--db", db, "--with-workers", "--port", port)
        finally:  # the app's store, registered in this process (a real one exits)
            for store in tq.txn.stores():
                if store.name not in registered:
                    tq.txn.unregister_store(store.name)
    assert_error(got, 4, f"cannot listen on 127.0.0.1:{port}")


@row(4)
def test_a_sweep_whose_submits_failed_for_now_is_4(
    capsys: pytest.CaptureFixture[str], db: str
) -> None:
    engine = sql_engine(db)
    try:
        _add_stale_reminder(engine)
    finally:
        engine.dispose()
    got = tq_main(
        capsys, "sweep", "--db", db, "--cloud-project", "p", "--cloud-region", "r",
        "--cloudtasks-endpoint", f"127.0.0.1:{_closed_port()}", "--sweep-shards", "1",
    )  # fmt: skip
    assert_error(got, 4, "could not be submitted")


# 130: interrupted.


@row(130)
def test_ctrl_c_in_a_one_shot_command_is_130(db: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _AS_AT_A_TERMINAL, "queues", "purge", "default", "--db", db],
        cwd=ROOT, stderr=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        err = _Stderr(proc)
        err.wait_for("[y/N]")
        _wait_until_reading_stdin(proc)  # waiting for an answer, as a person sees it
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"Ctrl-C ignored: {_signal_state(proc.pid)}") from None
        assert code == 130
        assert err.rest().splitlines()[-1:] == ["tq: error: interrupted"]
    finally:
        _stop(proc)


# Helpers.


_READ_SYSCALL = {"x86_64": 0, "aarch64": 63}.get(os.uname().machine)


# `python -m tq.cli` with SIGINT as a terminal gives it: a process inherits an
# ignored or blocked SIGINT from whatever started it (a shell's background job,
# a test runner's thread), and then no Ctrl-C could reach it.
_AS_AT_A_TERMINAL = (
    "import runpy, signal, sys; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); "
    "sys.argv[0] = 'tq'; runpy.run_module('tq.cli', run_name='__main__', alter_sys=True)"
)


def _signal_state(pid: int) -> str:
    """The process's signal masks and its main thread's system call, for a failure's message."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        syscall = Path(f"/proc/{pid}/syscall").read_text().strip()
    except OSError as e:
        return f"no /proc entry ({e})"
    masks = [line for line in status if line.startswith(("SigPnd", "ShdPnd", "SigBlk", "SigIgn"))]
    return f"{'; '.join(masks)}; syscall {syscall}"


def _wait_until_reading_stdin(proc: subprocess.Popen[str], timeout_s: float = 60) -> None:
    """Returns once the process's main thread is blocked reading its stdin (Linux).

    A signal sent between the prompt's write and the read() that follows it
    would only be seen once the read returns: a person never presses Ctrl-C
    in that microsecond, a test that signals as soon as it sees the prompt can.
    """
    path = Path(f"/proc/{proc.pid}/syscall")
    if _READ_SYSCALL is None or not path.exists():
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            fields = path.read_text().split()
        except OSError:  # it exited: its exit code tells why
            return
        if fields[:2] == [str(_READ_SYSCALL), "0x0"]:
            return
        time.sleep(0.01)  # poll interval, bounded by the deadline
    raise AssertionError("tq never waited on its stdin")


@pytest.fixture
def spanner_without_tables(spanner_emulator: Any) -> Iterator[str]:
    database = spanner_emulator.instance.database(f"nt-{os.getpid()}-{time.monotonic_ns() % 10**6}")
    database.create().result(30)
    try:
        yield database.name
    finally:
        database.drop()


def _add_stale_reminder(engine: sa.Engine) -> None:
    """One reminder whose happy path failed for now: the next sweep's to submit."""

    class Unavailable:
        def submit(self, sub: tq.Submission) -> None:
            raise tq.SubmitError(grpc.StatusCode.UNAVAILABLE, "down for the test")

        async def submit_async(self, sub: tq.Submission) -> None:
            self.submit(sub)

    d = tq.Dispatcher(
        cloud_project="p", cloud_region="r", default_target_host="h", submitter=Unavailable()
    )
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="default")
    )
    store = tq.txn.sql.SQLStore(engine, register=False)
    past = tqtesting.FakeClock(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    with tq.clock.use_clock(past), tq.txn.sql.transaction(engine, store=store):
        d.add_task(tq.Task(payload=pb.Greet(name="stale")))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Stderr:
    """A process's stderr, read by a thread, so that waits have a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self._stream = proc.stderr
        self._chunks: queue.Queue[str] = queue.Queue()
        self.text = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while ch := self._stream.read(1):
            self._chunks.put(ch)
        self._chunks.put("")

    def wait_for(self, text: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.text:
            try:
                ch = self._chunks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                ch = ""
            if not ch:
                raise AssertionError(f"no {text!r} from tq; it said:\n{self.text}")
            self.text += ch

    def rest(self, timeout_s: float = 60) -> str:
        """Everything until the stream ends."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                ch = self._chunks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not ch:
                break
            self.text += ch
        return self.text


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)
    for f in (proc.stdin, proc.stderr):
        if f is not None:
            f.close()
