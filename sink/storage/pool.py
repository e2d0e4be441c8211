"""The protocol process's side of the storage workers (:mod:`sink.storage.worker`).

:class:`WorkerPool` starts ``count`` worker processes, hands each received message to the one
with the fewest messages in hand, and resolves the message's future with one outcome per box
when that worker's batch has committed. The protocol process itself then only speaks SMTP/LMTP:
parse, rules and storage use the other cores.

A worker that dies (killed, out of memory, a crash in a C library) fails only what it had in
hand, with a transient error (451: the MTA sends it again; what that worker committed just
before dying is then found as already stored), and another is started in its place.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from sink.config import BoxConfig, Config
from sink.errors import TransientStorageError
from sink.intake import Envelope
from sink.log import get_logger
from sink.storage.frames import HEADER, frame, frame_head

log = get_logger("sink.storage.pool")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_RESTART_DELAYS = (0.5, 1, 2, 5, 10, 30)
PIECE = 1024 * 1024             # a message bigger than this is written to a worker in pieces


@dataclass(frozen=True)
class Stored:
    """A worker's answer for one box: what the reply needs of a :class:`sink.intake.Delivery`."""
    box: str
    message_id: int
    status: str
    already_stored: bool
    verdict: str | None = None          # for the metrics and the error mails (sink.operations)
    error: str | None = None
    carried: tuple["Stored", ...] = ()


class WorkerGone(TransientStorageError):
    pass


class _Worker:
    def __init__(self, number: int):
        self.number = number
        self.proc: subprocess.Popen | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, tuple[asyncio.Future, tuple[str, ...]]] = {}
        self.alive = False
        self.task: asyncio.Task | None = None
        self.progress = 0.0             # monotonic time of its last answer, or of new work
                                        # given to it while it had none
        self.answered = 0               # messages it has answered, over its replacements
        self.sending: asyncio.Task | None = None    # a big message being written to it


class WorkerPool:
    """``stall_timeout``: a worker holding messages that has answered nothing for this long
    (a database that stopped answering without closing the connection, a bug that loops) is
    killed and replaced - its messages get 451 instead of waiting for ever. A batch of the
    largest messages takes seconds, so the default is far above any honest batch."""

    def __init__(self, config: Config, count: int, *, stall_timeout: float = 300.0):
        self.config = config
        self.workers = [_Worker(i) for i in range(count)]
        self.stall_timeout = stall_timeout
        self._ids = itertools.count(1)
        self._closing = False
        self._restarts: set[asyncio.Task] = set()
        self._watchdog: asyncio.Task | None = None
        self.restarts = 0                   # sink_worker_restarts_total
        self.on_restart = None              # (number, exit status, messages lost) -> None

    # ------------------------------------------------------------------------------ public
    async def start(self) -> None:
        """Start every worker; raise RuntimeError (with the worker's reason) if one cannot."""
        await asyncio.gather(*(self._spawn(w) for w in self.workers))
        self._watchdog = asyncio.ensure_future(self._watch())

    def submit(self, raw: bytes, envelope: Envelope, boxes: Sequence[BoxConfig],
               started: float) -> asyncio.Future:
        """A future giving one outcome per box (Stored, or the exception to answer 4xx for)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        alive = [w for w in self.workers if w.alive]
        if self._closing or not alive:
            reason = "no storage worker is running"
            # answered 4xx here, in the protocol process: no worker logs it
            log.warning("message.deferred", box=",".join(b.address for b in boxes),
                        channel=envelope.channel, size=len(raw), reason=reason)
            future.set_exception(WorkerGone(reason))
            return future
        worker = min(alive, key=lambda w: len(w.pending))
        job_id = next(self._ids)
        addresses = tuple(box.address for box in boxes)
        if not worker.pending:
            worker.progress = time.monotonic()
        worker.pending[job_id] = (future, addresses)
        head = frame_head((job_id, envelope, addresses, started), len(raw))
        if len(raw) <= PIECE and (worker.sending is None or worker.sending.done()):
            # one system call for both (uvloop writes a list with one writev; two writes
            # were two sends, ~13 us each in the protocol process at 4 KB)
            worker.writer.writelines((head, raw))
        else:   # in pieces, after what is being written to this worker: frames stay whole
            worker.sending = asyncio.ensure_future(
                _send(worker.writer, worker.sending, head, raw))
        return future

    def healthy(self) -> bool:
        """At least one worker is running (for /healthz)."""
        return not self._closing and any(w.alive for w in self.workers)

    async def close(self, timeout: float = 60.0) -> None:
        """Let every worker answer what it has, then stop it (closing its socket ends it)."""
        self._closing = True
        for task in list(self._restarts) + [self._watchdog]:
            if task is not None:
                task.cancel()
        sending = [w.sending for w in self.workers if w.sending is not None]
        if sending:
            await asyncio.wait(sending, timeout=timeout)
        for worker in self.workers:
            if worker.alive and worker.writer is not None:
                worker.writer.write_eof()       # the worker answers what it has, then exits
        tasks = [w.task for w in self.workers if w.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for worker in self.workers:
            await self._reap(worker, timeout=5)

    # ------------------------------------------------------------------------------ workers
    async def _spawn(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        try:
            worker.proc = subprocess.Popen(
                [sys.executable, "-m", "sink.storage.worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        worker.reader, worker.writer = await asyncio.open_unix_connection(sock=ours)
        worker.writer.write(frame(("init", self.config, len(self.workers))))
        try:
            kind, detail = await self._read_header(worker.reader)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            await self._reap(worker, timeout=5)
            raise RuntimeError(f"storage worker {worker.number} exited while starting "
                               f"(exit status {worker.proc.returncode})") from error
        if kind != "ready":
            await self._reap(worker, timeout=5)
            raise RuntimeError(f"storage worker {worker.number} could not start: {detail}")
        worker.alive = True
        worker.task = asyncio.ensure_future(self._read_loop(worker))
        log.info("worker.started", worker=worker.number, pid=detail)

    @staticmethod
    async def _read_header(reader: asyncio.StreamReader):
        meta_len, payload_len = HEADER.unpack(await reader.readexactly(HEADER.size))
        header = pickle.loads(await reader.readexactly(meta_len))
        if payload_len:
            await reader.readexactly(payload_len)
        return header

    async def _read_loop(self, worker: _Worker) -> None:
        try:
            while True:
                kind, done = await self._read_header(worker.reader)
                worker.progress = time.monotonic()
                for job_id, results in done:
                    future, addresses = worker.pending.pop(job_id)
                    worker.answered += 1
                    if not future.done():
                        future.set_result([_outcome(r, a) for r, a in zip(results, addresses)])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            worker.alive = False
            lost = list(worker.pending.values())
            worker.pending.clear()
            for future, addresses in lost:
                if not future.done():
                    log.warning("message.deferred", box=",".join(addresses),
                                worker=worker.number, reason="storage worker exited")
                    future.set_exception(WorkerGone("storage worker exited"))
            if worker.writer is not None:
                worker.writer.close()
        await self._reap(worker, timeout=5)
        if self._closing:
            return
        log.error("worker.exited", worker=worker.number, exit_status=worker.proc.returncode,
                  messages_lost_in_hand=len(lost))
        self.restarts += 1
        if self.on_restart is not None:
            self.on_restart(worker.number, worker.proc.returncode, len(lost))
        task = asyncio.ensure_future(self._restart(worker))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.stall_timeout / 4))
            now = time.monotonic()
            for worker in self.workers:
                if (worker.alive and worker.pending
                        and now - worker.progress > self.stall_timeout):
                    log.error("worker.stalled", worker=worker.number, pid=worker.proc.pid,
                              messages_in_hand=len(worker.pending),
                              silent_s=round(now - worker.progress, 1))
                    worker.proc.kill()      # its reader sees the end: 451s, a new worker

    async def _restart(self, worker: _Worker) -> None:
        for attempt in itertools.count():
            await asyncio.sleep(_RESTART_DELAYS[min(attempt, len(_RESTART_DELAYS) - 1)])
            if self._closing:
                return
            try:
                await self._spawn(worker)
                return
            except (RuntimeError, OSError) as error:
                log.error("worker.restart_failed", worker=worker.number, reason=str(error))

    async def _reap(self, worker: _Worker, timeout: float) -> None:
        proc = worker.proc
        if proc is None or proc.poll() is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, proc.wait, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            await loop.run_in_executor(None, proc.wait)


async def _send(writer: asyncio.StreamWriter, before: asyncio.Task | None, head: bytes,
                raw: bytes) -> None:
    """A big message to a worker a piece at a time, each written once the socket has taken
    the one before: written whole, what the socket could not take at once was copied into the
    transport's buffer - a 40 MB message was held three times in the protocol process."""
    if before is not None:
        await asyncio.wait([before])
    try:
        writer.write(head)
        view = memoryview(raw)
        for start in range(0, len(raw), PIECE):
            writer.write(view[start:start + PIECE])
            await writer.drain()
    except (ConnectionError, RuntimeError):
        pass        # the worker is gone: its read loop answers what it had in hand (451)


def _outcome(result: tuple, address: str):
    if result[0] == "stored":
        _, message_id, status, already_stored, verdict, error, carried = result
        return Stored(address, message_id, status, already_stored, verdict, error,
                      tuple(Stored(address, *c) for c in carried))
    _, reason, _transient, no_space = result
    return TransientStorageError(reason, no_space=no_space)
