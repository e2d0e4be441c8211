"""Group commit: every message ready at the moment shares one transaction and one fsync.

A durable commit costs an fsync (milliseconds on a real disk); SQLite has one writer at a time.
One transaction per message therefore caps a server at a few hundred messages a second however
many sessions deliver. :class:`GroupCommitter` keeps every guarantee of
:class:`sink.intake.Intake` and pays the fsync once per *batch*:

- ``submit`` hands a received message to a *prepare* thread, which digests and parses it
  (:meth:`Intake.prepare`) outside any transaction (several such threads, so that one message
  that takes long to parse does not hold up the ones behind it);
- a *writer* thread takes every prepared message waiting at that moment (up to ``max_batch``
  and ``max_bytes``), opens ONE transaction, stores each message for each of its boxes inside
  its own SAVEPOINT (:meth:`Intake.store`: the same code, the same rules, the same executor as
  ``Intake.deliver``), commits once, and only then resolves each message's future - the session
  answers 250 after its own message's commit, never before;
- per message, inside the batch (:func:`store_one`):
  - identical bytes twice in one batch: the second finds the first's row (``already stored``);
  - a unique-key race (the same bytes or dedup key committed by another instance, or by another
    writer): that savepoint is rolled back and the message is stored again, now seeing the
    winner's row - one PROCESSED, the rest DUPLICATE / already stored;
  - a rule that raises: the message is stored ``failed`` by ``Intake`` itself (250);
  - an unexpected error of our own: only that message's savepoint is rolled back and only it
    is answered 4xx; the batch goes on (one bad message never blocks the ones behind it);
- a transient error (database gone, disk full, lock timeout) or a failing COMMIT: the whole
  transaction is rolled back and every message of the batch gets the transient error (451/452);
  nothing of the batch was committed.

SQLite gets one writer (it has one write lock anyway); PostgreSQL may use several, each with its
own batches and connection. There, per batch (issue 16):

- the rows nobody reads back in the transaction (raw bytes, attachments, activity links, dedup
  keys) are deferred and sent as one INSERT of column arrays per table just before COMMIT
  (:func:`sink.db.fastpath.deferring`); a message's savepoint rolled back drops its rows too;
- two workers never wait for each other in a circle: a batch first locks its messages in one
  order (:func:`_lock_in_order`), and the dedup keys are sent sorted; a flush that still loses
  a key to another worker stores the batch again, which then sees the winner's rows;
- SAVEPOINT, RELEASE and the locks are queued and sent as one simple query just before the
  next statement (sink.db.fastpath: queued commands), the flush's statements go in one
  pipeline, and a message's first read also answers the duplicate and spam filters
  (sink.intake.rows.stored_and_asked): ~6.5 round trips per 4 KB message instead of ~11.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Iterable, Sequence, Union

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from sink.config import BoxConfig
from sink.db import fastpath
from sink.db.engine import check_database_file
from sink.errors import TransientStorageError, classify
from sink.intake import Delivery, Envelope, Intake, Prepared
from sink.intake.races import RaceLost, retry_races
from sink.log import get_logger

log = get_logger("sink.storage.batching")

Outcome = Union[Delivery, BaseException]     # per box: stored, or why not (answer 4xx)
MESSAGE_SAVEPOINT = "sink_message"


@dataclass
class Job:
    raw: bytes
    envelope: Envelope
    boxes: tuple[BoxConfig, ...]
    started: float | None = None
    future: Future = field(default_factory=Future)
    prepared: Prepared | None = None

    @property
    def size(self) -> int:
        return len(self.raw) * max(1, len(self.boxes))


def store_one(intake: Intake, conn: Connection, prepared: Prepared, box: BoxConfig) -> Outcome:
    """One message for one box inside the batch's transaction, in its own savepoint.

    Returns the Delivery, or the exception that only this message answers 4xx for. Raises
    what must fail the whole batch (a transient database error)."""
    def attempt() -> Delivery:
        outer = fastpath.savepoint(conn, MESSAGE_SAVEPOINT)
        try:
            delivery = intake.store(conn, prepared, box)
        except Exception as error:
            # a lost race (IntegrityError: again, and we see the winner's row) or an error of
            # ours: undo this message only; a transient error fails the batch as it is
            if isinstance(error, sa_exc.IntegrityError) or classify(error) is None:
                fastpath.rollback_to(conn, MESSAGE_SAVEPOINT, outer, release=True)
            raise
        fastpath.release(conn, MESSAGE_SAVEPOINT)
        return delivery
    try:
        return retry_races(attempt)
    except RaceLost as lost:
        return lost
    except Exception as error:
        if classify(error) is not None:
            raise
        log.exception("message.store_error", box=box.address,
                      channel=prepared.envelope.channel, error=type(error).__name__)
        return error


def commit_batch(intake: Intake, items: Sequence[tuple[Prepared, Sequence[BoxConfig]]]
                 ) -> list[list[Outcome]]:
    """Store every ``(prepared, boxes)`` in ONE transaction, each delivery in its own savepoint;
    one list of outcomes per item, once committed. Raises TransientStorageError when the whole
    batch was rolled back (a transient error, a failing COMMIT, or an error of our own outside
    any one message): every message of it must be answered 4xx."""
    try:
        check_database_file(intake.engine)      # never 250 into a deleted or replaced file
        # A flush that lost a unique key to another worker (IntegrityError) undoes the whole
        # transaction; the batch is stored again and now sees the winner's rows.
        outcomes = retry_races(lambda: _store_batch(intake, items))
        check_database_file(intake.engine)      # (and not when it went during the batch)
    except Exception as error:
        transient = classify(error)
        if transient is None:
            log.exception("batch.store_error", messages=len(items), error=type(error).__name__)
            transient = TransientStorageError(f"storage error: {type(error).__name__}")
        log.warning("batch.deferred", messages=len(items), reason=str(transient),
                    no_space=transient.no_space)
        for prepared, boxes in items:
            log.warning("message.deferred", box=",".join(b.address for b in boxes),
                        channel=prepared.envelope.channel, size=len(prepared.raw),
                        reason=str(transient), no_space=transient.no_space)
        raise transient from error
    return outcomes


def _store_batch(intake: Intake, items: Sequence[tuple[Prepared, Sequence[BoxConfig]]]
                 ) -> list[list[Outcome]]:
    """One transaction: the batch's messages locked in one order, every delivery in arrival
    order, the deferred rows flushed, COMMIT."""
    with intake.engine.begin() as conn, intake.directory.pinned(conn), fastpath.deferring(conn):
        if conn.dialect.name == "postgresql" and _rows_to_order(items):
            _lock_in_order(conn, items)
        outcomes = [[store_one(intake, conn, prepared, box) for box in boxes]
                    for prepared, boxes in items]
        fastpath.flush(conn)
    return outcomes


def _rows_to_order(items: Sequence[tuple[Prepared, Sequence[BoxConfig]]]) -> bool:
    """More than one message row to write: one row alone (the commonest batch when the load is
    light) takes no other lock before its dedup keys, which the flush sends in order."""
    return sum(len(boxes) for _, boxes in items) > 1


# The keys are written into the command (integers we made: nothing to quote) so that it has no
# parameters and can be queued (sink.db.fastpath.queue).
_LOCK_MESSAGES = ("SELECT count(pg_advisory_xact_lock(k)) "
                  "FROM unnest(CAST(ARRAY[{keys}] AS bigint[])) AS k")


def _lock_in_order(conn: Connection, items: Sequence[tuple[Prepared, Sequence[BoxConfig]]]
                   ) -> None:
    """Take a transaction lock per distinct message of the batch (its sha256), smallest first,
    before writing anything. Two workers whose batches hold the same messages (an MTA retrying
    while its first try is still being stored) in different orders would otherwise each insert
    one row and wait for the other's uncommitted (box, sha256): a deadlock PostgreSQL breaks by
    failing one whole batch (451). Now the second waits before its first write and then finds
    the rows stored. Locks, not a sorted batch: arrival order decides which copy is processed
    and lets a reply find the message it answers in the same batch. The dedup keys are
    ordered at the flush (``INSERT_DEDUP_KEYS`` is ``ordered``)."""
    keys = sorted({int.from_bytes(bytes.fromhex(prepared.sha256[:16]), "big", signed=True)
                   for prepared, _ in items})
    # nothing reads its answer: it goes with the first message's SAVEPOINT, before the first
    # statement of the batch (sink.db.fastpath: queued commands)
    fastpath.queue(conn, _LOCK_MESSAGES.format(keys=",".join(str(int(k)) for k in keys)))


def log_batch(intake: Intake, prepared: Sequence[Prepared],
              outcomes: Sequence[Sequence[Outcome]]) -> None:
    """The log lines of a committed batch (written after the sessions were answered)."""
    for one, results in zip(prepared, outcomes):
        for outcome in results:
            if isinstance(outcome, Delivery):
                intake.log_delivery(outcome, one)


class GroupCommitter:
    """``preparers`` prepare threads and ``writers`` writer threads; see the module
    docstring."""

    def __init__(self, intake: Intake, *, writers: int = 1, preparers: int = 4,
                 max_batch: int = 256, max_bytes: int = 64 * 1024 * 1024,
                 name: str = "sink-commit"):
        self.intake = intake
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self._incoming: deque[Job] = deque()
        self._ready: deque[Job] = deque()
        self._lock = threading.Lock()
        self._to_prepare = threading.Condition(self._lock)   # incoming has jobs, or closing
        self._to_write = threading.Condition(self._lock)     # ready has jobs, or closing
        self._closing = False
        self._busy = 0                          # jobs taken by a thread, not yet resolved
        self._threads = [threading.Thread(target=self._prepare_loop, name=f"{name}-prepare-{i}",
                                          daemon=True) for i in range(preparers)]
        self._threads += [threading.Thread(target=self._write_loop, name=f"{name}-{i}",
                                           daemon=True) for i in range(writers)]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------------------ public
    def submit(self, raw: bytes, envelope: Envelope, boxes: Iterable[BoxConfig],
               started: float | None = None) -> Future:
        """Queue ``raw`` for every box; the future gives one :data:`Outcome` per box, in
        order, once the batch holding it has committed (or the batch's transient error)."""
        job = Job(raw, envelope, tuple(boxes), started)
        with self._lock:
            if self._closing:
                raise TransientStorageError("shutting down")
            self._incoming.append(job)
            self._to_prepare.notify()
        return job.future

    def deliver(self, raw: bytes, envelope: Envelope, boxes: Iterable[BoxConfig]) -> list[Delivery]:
        """Like :meth:`Intake.deliver`, through the batches: raise the first failure."""
        outcomes = self.submit(raw, envelope, boxes).result()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return list(outcomes)

    def close(self, timeout: float | None = None) -> None:
        """Finish every queued message, then stop the threads."""
        with self._lock:
            self._closing = True
            self._to_prepare.notify_all()
            self._to_write.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------------------ prepare
    def _prepare_loop(self) -> None:
        while True:
            with self._lock:
                while not self._incoming and not self._closing:
                    self._to_prepare.wait()
                if not self._incoming:           # closing and nothing left
                    self._to_write.notify_all()
                    return
                job = self._incoming.popleft()
                self._busy += 1
            try:
                job.prepared = self.intake.prepare(job.raw, job.envelope, job.started)
            except BaseException as error:       # parsing never raises; be sure anyway
                self._resolve(job, exception=classify(error) or error)
                continue
            with self._lock:
                self._busy -= 1
                self._ready.append(job)
                self._to_write.notify()

    # ------------------------------------------------------------------------------ write
    def _take_batch(self) -> list[Job] | None:
        with self._lock:
            while not self._ready:
                if self._closing and not self._incoming and not self._busy_preparing():
                    return None
                self._to_write.wait(0.5)
            batch, size = [], 0
            while self._ready and len(batch) < self.max_batch:
                if batch and size + self._ready[0].size > self.max_bytes:
                    break
                job = self._ready.popleft()
                batch.append(job)
                size += job.size
            return batch

    def _busy_preparing(self) -> bool:
        return self._busy > 0

    def _write_loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            try:
                self._commit(batch)
            except BaseException as error:       # never leave a session without an answer
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(classify(error) or error)

    def _commit(self, batch: Sequence[Job]) -> None:
        try:
            outcomes = commit_batch(self.intake, [(job.prepared, job.boxes) for job in batch])
        except TransientStorageError as transient:
            for job in batch:
                job.future.set_exception(transient)
            return
        # Committed: answer every session first, then write the log lines.
        for job, results in zip(batch, outcomes):
            job.future.set_result(results)
        log_batch(self.intake, [job.prepared for job in batch], outcomes)

    def _resolve(self, job: Job, *, exception: BaseException) -> None:
        with self._lock:
            self._busy -= 1
            self._to_write.notify_all()
        if not job.future.done():
            job.future.set_exception(exception)
