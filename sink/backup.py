"""The backup directory (SPEC 3 ``[backup]``, seed 000 chapter 9): every stored message also
written as ``DIRECTORY/YYYY-MM-DD/<uuid>.eml`` - the names ``sink export`` uses (the day the
message was received, UTC) - exactly its stored bytes.

A background component of ``sink serve`` (:func:`sink.app.build`), never on a message's path to
its reply: a message is committed and answered first; this task finds it afterwards in the
database (``messages.backed_up_at IS NULL``, indexed) and writes it. So the database is the
to-do list: a restart, a crash between the file and the mark, or a full disk loses nothing -
what was not marked is written (again: the same name and bytes) on the next pass. Enabling
``[backup]`` on an existing database writes every message stored before, oldest first.

Each file is durable before it is marked: written under a unique temporary name, fsynced,
renamed into place, and its directory fsynced (a new day directory: its parent too). A disk
problem (no space, read-only, permissions) is logged as ``backup.failed``, reported to the
``notify`` callback, and retried every ``retry`` seconds until it works; mail goes on being
stored and answered 250 meanwhile. Several instances sharing a database may back up into the
same directory: they write identical files, each under its own temporary name.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import time
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from sink.config import BackupConfig
from sink.db import schema as t
from sink.db.queries import as_utc
from sink.log import get_logger

log = get_logger("sink.backup")
BATCH = 100


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """``data`` as ``path``, on disk when this returns; never a partial file under that name
    (a failure removes the temporary file, so a full disk is not left fuller)."""
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(mode=0o750, parents=True, exist_ok=True)
        _fsync_directory(folder.parent)
    partial = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(partial)
        raise
    _fsync_directory(folder)


def describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno is not None:
        return f"{errno.errorcode.get(error.errno, error.errno)}: {error.strerror}"
    return f"{type(error).__name__}: {error}"


class Backup:
    """The background task; ``pass_once`` is one synchronous pass (used by tests directly)."""

    def __init__(self, config: BackupConfig, engine: Engine, *,
                 notify: Callable[[str, str], None] | None = None):
        self.config = config
        self.engine = engine
        self.notify = notify            # (kind, text): the SPEC 7 notifier, when wired
        self.failing_since: float | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="sink-backup")
        log.info("backup.started", directory=str(self.config.directory))

    async def stop(self) -> None:
        """Stop after the pass in hand (what it did not reach is written after a restart)."""
        if self._task is not None:
            self._stop.set()
            await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            delay = self.config.interval
            try:
                written = await asyncio.to_thread(self.pass_once)
                if written >= BATCH:
                    delay = 0               # more waiting: go on at once
            except Exception as error:       # disk or database: log, notify, retry later
                self._failed(error)
                delay = self.config.retry
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    def _failed(self, error: Exception) -> None:
        first = self.failing_since is None
        if first:
            self.failing_since = time.time()
        log.error("backup.failed", reason=describe(error), directory=str(self.config.directory),
                  retry_in=self.config.retry, since=self.failing_since)
        if first and self.notify is not None:
            with suppress(Exception):       # a notifier problem is its own, never ours
                self.notify("backup", f"the backup directory {self.config.directory} cannot be "
                                      f"written: {describe(error)}; retrying")

    def pass_once(self) -> int:
        """Write up to BATCH messages not yet backed up, oldest first, and mark them; how many
        were due. Raises on the first file that cannot be written (those before it are
        marked)."""
        m = t.messages.c
        done: list[int] = []
        with self.engine.connect() as conn:
            rows = conn.execute(select(m.id, m.uuid, m.received_at)
                                .where(m.backed_up_at.is_(None)).order_by(m.id)
                                .limit(BATCH)).all()
            try:
                for row in rows:
                    raw = conn.execute(select(t.raw_messages.c.content).where(
                        t.raw_messages.c.message_id == row.id)).scalar()
                    if raw is not None:
                        day = as_utc(row.received_at).strftime("%Y-%m-%d")
                        write_durably(self.config.directory / day / f"{row.uuid}.eml",
                                      bytes(raw))
                    done.append(row.id)
            finally:
                conn.rollback()
                self._mark(done)
        if self.failing_since is not None and rows:
            log.info("backup.caught_up", failing_for=round(time.time() - self.failing_since, 1))
            self.failing_since = None
        if done:
            log.info("backup.written", messages=len(done))
        return len(rows)

    def _mark(self, ids: list[int]) -> None:
        if not ids:
            return
        now = datetime.now(timezone.utc)
        with self.engine.begin() as conn:
            conn.execute(update(t.messages).where(t.messages.c.id.in_(ids))
                         .values(backed_up_at=now))
