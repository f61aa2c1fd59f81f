"""Waking workers when another process commits tasks, without waiting for the next poll.

Workers poll every `poll_interval`; tasks added in the same process wake them
at once (`_wakeup`). For tasks committed by other processes:

* PostgreSQL: every INSERT of a new task notifies its queue on channel
  `tq_tasks` (`_rows.NOTIFY_CHANNEL`); a worker LISTENs on a connection of
  its own (psycopg 3, autocommit) and wakes when a queue it serves is
  notified. If the connection fails, the worker goes on polling and
  reconnects with a backoff.
* SQLite: a commit appends to the database's write-ahead log, so on Linux
  a worker watches the database's directory with inotify and wakes when the
  `-wal` file (or, without WAL, the database file) is written, and once
  more `SETTLE_S` later: the write that makes a commit visible to readers
  (its index, in shared memory) comes just after the last write to the
  file, so the first look may be too early. A spurious wakeup costs one
  look at the queues.

Either way polling stays as the fallback: with no driver, platform or file
system that can tell (psycopg 2, MySQL / MariaDB, a network file system,
macOS), nothing changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import struct
import sys
from collections.abc import Callable, Collection

import sqlalchemy as sa

from tq.dbqueue._taskrow import NOTIFY_CHANNEL

log = logging.getLogger("tq.dbqueue")

MAX_RECONNECT_PAUSE_S = 30.0
SETTLE_S = 0.02


class Listener:
    """Calls `wake(queue)` when tasks of `queues` (None: any) may have been committed elsewhere.

    `queue` is the queue told of, or "" when any may have new tasks (on
    (re)connecting, or from SQLite, which cannot say).
    """

    def __init__(
        self, engine: sa.Engine, wake: Callable[[str], None], queues: Collection[str] | None
    ) -> None:
        self.engine = engine
        self.wake = wake
        self.queues = frozenset(queues) if queues is not None else None
        self._task: asyncio.Task[None] | None = None
        self._watch: _WalWatch | None = None
        self.active = False  # whether notifications can arrive (for tests and stats)

    async def start(self) -> None:
        dialect = self.engine.dialect
        if dialect.name == "postgresql" and dialect.driver == "psycopg":
            self._task = asyncio.create_task(self._listen(), name="tq.dbqueue listener")
        elif dialect.name == "sqlite":
            self._watch = _WalWatch.start(self.engine, self.wake)
            self.active = self._watch is not None

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self.active = False

    async def _listen(self) -> None:
        import psycopg

        pause = 0.1
        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(*args, **kwargs, autocommit=True)
            except psycopg.Error as e:
                log.warning("tq.dbqueue: cannot LISTEN for new tasks (%s); polling", e)
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_RECONNECT_PAUSE_S)
                continue
            try:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                self.active = True
                pause = 0.1
                self.wake("")  # tasks committed while not listening
                async for note in conn.notifies():
                    if self.queues is None or note.payload in self.queues:
                        self.wake(note.payload)
            except psycopg.Error as e:
                log.warning("tq.dbqueue: LISTEN connection lost (%s); polling meanwhile", e)
            finally:
                self.active = False
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_RECONNECT_PAUSE_S)


# inotify (Linux), through libc.
_IN_MODIFY, _IN_CREATE, _IN_MOVED_TO = 0x2, 0x100, 0x80
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, 0o2000000
_EVENT = struct.Struct("iIII")


class _WalWatch:
    """An inotify watch on a SQLite database's directory, calling `wake` on writes to it."""

    def __init__(self, fd: int, names: frozenset[bytes], wake: Callable[[str], None]) -> None:
        self.fd = fd
        self.names = names
        self.wake = wake
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(fd, self._read)
        self._again: asyncio.TimerHandle | None = None

    @classmethod
    def start(cls, engine: sa.Engine, wake: Callable[[str], None]) -> _WalWatch | None:
        path = engine.url.database
        if not sys.platform.startswith("linux") or not path or path == ":memory:":
            return None
        libc_name = ctypes.util.find_library("c")
        if libc_name is None:
            return None
        try:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd < 0:
                return None
            directory = os.path.dirname(os.path.abspath(path)) or "."
            mask = _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO
            if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
                os.close(fd)
                return None
        except (OSError, AttributeError):
            return None
        base = os.fsencode(os.path.basename(path))
        return cls(fd, frozenset({base, base + b"-wal"}), wake)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        offset, woke = 0, False
        while offset + _EVENT.size <= len(data):
            _wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if not woke and name in self.names:
                woke = True
                self.wake("")
                if self._again is not None:
                    self._again.cancel()
                self._again = self.loop.call_later(SETTLE_S, self.wake, "")

    def close(self) -> None:
        if self._again is not None:
            self._again.cancel()
        if self.fd >= 0:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
