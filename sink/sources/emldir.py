"""The .eml directory (SPEC 2.2): complete regular ``*.eml`` files, processed, then removed.

A scan, not a watcher: one ``scandir`` per pass (every ``interval`` seconds, default 1) sees every
file with its size and mtime, which is exactly what "complete" needs - a file renamed in has a ctime
later than its mtime and is taken at once, a file being written is taken once it has not
changed for 2 seconds. A watcher (inotify) would still need this scan at start and the 2-second timer for
each file, and it loses events when its queue overflows (10,000 files dropped at once); the
scan is one system call per 100 or so entries and never misses a file.

Each ready file is opened without following links (``O_NOFOLLOW``) and checked again on the
open descriptor (still a regular file, same size and mtime as scanned), so a file swapped for a
symlink between the scan and the read is never read. Files are submitted in batches (bounded
in count and bytes); a committed file is removed, one not committed stays for the next pass.
One that cannot be read or is too large goes to ``failed/NAME`` with ``NAME.reason`` beside it.
Symbolic links, subdirectories and other names are left alone.
"""

from __future__ import annotations

import os
import stat
import time

from sink.log import get_logger
from sink.sources.poller import PassResult, Worker, deliver, pipelined
from sink.sources.state import batches

log = get_logger("sink.sources.emldir")
SETTLE = 2.0            # seconds unchanged before a file counts as complete
BATCH_COUNT = 200
BATCH_BYTES = 32 * 1024 * 1024
FAILED = "failed"


def ready_files(path: str, now: float, settle: float = SETTLE) -> list[tuple[str, os.stat_result]]:
    """Complete regular ``*.eml`` files directly in ``path`` (name order: oldest-named first
    for the usual time-stamped names)."""
    found = []
    with os.scandir(path) as entries:
        for entry in entries:
            if not entry.name.lower().endswith(".eml"):
                continue
            try:
                if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue            # gone since the scan
            if complete(st, now, settle):
                found.append((entry.name, st))
    found.sort(key=lambda item: item[0])
    return found


def complete(st: os.stat_result, now: float, settle: float = SETTLE) -> bool:
    """Not written to for ``settle`` seconds, or renamed in: a rename (like a chmod after the
    last write) changes the inode's ctime but not its mtime, while every write sets both. The
    kernel's clock for these is coarse (a few ms): a file renamed within the same tick as its
    last write waits the ``settle`` seconds instead - later, never half."""
    return now - st.st_mtime >= settle or st.st_ctime_ns > st.st_mtime_ns


class Unusable(Exception):
    """This file goes to failed/ (the reason is written beside it)."""


class Changed(Exception):
    """The file changed since the scan: not complete after all, look again next pass."""


def read_file(path: str, scanned: os.stat_result, limit: int) -> bytes:
    if scanned.st_size > limit:
        raise Unusable(f"larger than the size limit ({scanned.st_size} > {limit} bytes)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Changed() from None
    except OSError as exc:
        if exc.errno == getattr(os, "ELOOP", 40):
            raise Changed() from None           # became a symlink: leave it alone
        raise Unusable(f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Changed()
        if (st.st_size, st.st_mtime_ns) != (scanned.st_size, scanned.st_mtime_ns):
            raise Changed()
        chunks, left = [], st.st_size + 1     # one byte more: a file still growing is seen
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        raise Unusable(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) != scanned.st_size:
        raise Changed()
    return data


class EmlDirWorker(Worker):
    def _prepare(self, batch: list[tuple[str, os.stat_result]]) -> tuple[list, list]:
        """(names, raws) of the batch's readable files; unusable ones moved to failed/."""
        names, raws = [], []
        for name, st in batch:
            try:
                raws.append(read_file(os.path.join(self.source.path, name), st,
                                      self.source.max_message_size))
                names.append(name)
            except Changed:
                continue
            except Unusable as exc:
                self._fail(name, str(exc))
        return names, raws

    def _fail(self, name: str, reason: str) -> None:
        failed = os.path.join(self.source.path, FAILED)
        os.makedirs(failed, exist_ok=True)
        target = name
        n = 1
        while os.path.lexists(os.path.join(failed, target)):
            target = f"{name}.{n}"
            n += 1
        os.rename(os.path.join(self.source.path, name), os.path.join(failed, target))
        with open(os.path.join(failed, target + ".reason"), "w", encoding="utf-8") as f:
            f.write(reason + "\n")
        self._failed_now += 1
        log.warning("source.file_failed", source=self.source.index, file=name,
                    moved_to=f"{FAILED}/{target}", reason=reason)

    def _remove(self, names: list[str]) -> int:
        removed = 0
        for name in names:
            try:
                os.unlink(os.path.join(self.source.path, name))
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def _scan(self) -> list:
        return ready_files(self.source.path, time.time())

    async def run_pass(self) -> PassResult:
        result = PassResult()
        self._failed_now = 0
        ready = await self.call(self._scan)
        sized = [((name, st), st.st_size) for name, st in ready]

        async def handle(batch, prepared) -> None:
            names, raws = prepared
            result.fetched += len(raws)
            committed = await deliver(self.storage, self.source, self.box, raws, result,
                                      self.hold)
            raws.clear()
            done = [n for n, ok in zip(names, committed) if ok]
            result.removed += await self.call(self._remove, done)
        await pipelined(self, batches(sized, BATCH_BYTES, BATCH_COUNT), self._prepare, handle)
        result.skipped += self._failed_now
        return result
