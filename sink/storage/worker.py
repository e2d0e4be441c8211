"""A storage worker process: parse, rules and group commit, beside the protocol process.

One Python process cannot use more than one core's worth of Python at a time, and a 4 KB
message costs the protocol (aiosmtpd) about as much CPU as parsing, deciding and storing it
(docs/PERFORMANCE.md). ``sink serve`` therefore runs the listeners in one process and hands every
received message to one of a few worker processes (:mod:`sink.storage.pool`), each running this
module: ``python -m sink.storage.worker FD``, FD one end of a socket pair.

The worker is one thread and one loop: wait for a message; take every other message already
waiting (up to ``MAX_BATCH`` / ``MAX_BYTES``); digest and parse each (:meth:`Intake.prepare`);
store them all in one transaction with a savepoint each (:func:`sink.storage.batching.commit_batch`, the
same code as the in-process group committer); after the COMMIT send one reply frame with every
message's outcome; then write the log lines. With several workers, one parses while another
waits for its commit: on SQLite they take turns on the write lock (:class:`WriteTurn`), on
PostgreSQL they commit side by side. A SQLite worker whose batch is decided while the other
holds the turn does not sit idle: it prepares and decides the messages arriving meanwhile, and
they join its batch (issue 16: with 16 sessions on two workers a batch was ~5 messages, and
each commit costs ~0.2 ms of CPU whatever it holds).

Failure: an error of one message is that message's 4xx (its savepoint); a transient error fails
the batch (every message 4xx, nothing committed). If the worker dies, the protocol process
answers 451 for what it had in hand and starts another; a batch that committed just before the
death is answered 451 too, and the MTA's resend is recognised as already stored. The worker
ignores SIGTERM and SIGINT (systemd and a terminal signal the whole process group): it stops
when the protocol process closes its end, after answering everything it was given.

The frame format is in :mod:`sink.storage.frames`.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys

from sink.runtime import freeze_long_lived
from sink.storage.frames import Inbox, frame

MAX_BATCH = 256
MAX_BYTES = 64 * 1024 * 1024
TURN_POLL = 0.0005      # waiting for the write turn: how often to look for it (and for mail)


class WriteTurn:
    """SQLite has one write lock, and a writer that finds it taken sleeps in SQLite's busy
    handler (1, 2, 5 ... 100 ms at a time) instead of being woken when it is free: with two
    workers that sleep was the p99. Workers on one SQLite file therefore take turns on an
    ``flock`` of a file beside it, which the kernel hands over at once (or, to a worker that
    takes mail into its batch while it waits, within ``TURN_POLL``); their parsing still
    overlaps. PostgreSQL needs no turns (row locks, several writers)."""

    def __init__(self, path: str | None):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if path else None

    @classmethod
    def for_database(cls, engine) -> "WriteTurn":
        from sink.db.engine import is_sqlite
        database = engine.url.database
        if is_sqlite(engine) and database and database != ":memory:":
            return cls(database + "-writeturn")
        return cls(None)

    @property
    def shared(self) -> bool:
        """Whether writers take turns (SQLite): only then is deciding before the turn worth
        its cost. On PostgreSQL each worker writes while the others do, and the rules decided
        ahead in a read-only transaction of their own, then checked again in the writer's,
        cost 9.2 round trips per 4 KB message instead of 6.5, and 4.2 ms of client and server
        CPU instead of 2.6 (``AHEAD=1 python -m bench.storepath``)."""
        return self.fd is not None

    def take(self, *, wait: bool = True) -> bool:
        """Take the turn (``wait=False``: only if it is free now); False when another worker
        holds it. Always True without turns (PostgreSQL)."""
        if self.fd is None:
            return True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)


def _result(outcome) -> tuple:
    from sink.errors import classify
    if isinstance(outcome, BaseException):
        transient = classify(outcome)
        return ("error", str(transient or type(outcome).__name__), transient is not None,
                bool(transient and transient.no_space))
    return ("stored", outcome.message_id, outcome.status, outcome.already_stored,
            outcome.verdict, outcome.error, [
                (c.message_id, c.status, c.already_stored, c.verdict, c.error)
                for c in outcome.carried])


def _take_batch(inbox: Inbox) -> tuple[list, bool]:
    """Wait for one job, then take every job already waiting (up to MAX_BATCH / MAX_BYTES);
    and whether the protocol process has closed its end (answer these, then stop)."""
    first = inbox.next(block=True)
    if first is Inbox.EOF:
        return [], True
    more, closing = _take_waiting(inbox, 1, len(first[1]))
    return [first, *more], closing


def _take_waiting(inbox: Inbox, count: int, size: int) -> tuple[list, bool]:
    """The jobs already waiting, without blocking, while a batch of ``count`` jobs and
    ``size`` bytes stays within MAX_BATCH / MAX_BYTES; and whether the other end closed."""
    jobs = []
    while count + len(jobs) < MAX_BATCH and size < MAX_BYTES:
        more = inbox.next(block=False)
        if more is None:
            break
        if more is Inbox.EOF:
            return jobs, True
        jobs.append(more)
        size += len(more[1])
    return jobs, False


def _commit(intake, write_turn: WriteTurn, jobs: list, boxes: dict, ahead: bool = True,
            inbox: Inbox | None = None) -> tuple[list, list, list, bool]:
    """Prepare and commit one batch: (the reply frame's results, the prepared messages, their
    outcomes - empty when the batch was rolled back, whether the other end closed).
    ``ahead``: decide before the write turn (when other workers share it); then, while
    another worker holds the turn, the jobs arriving in ``inbox`` meanwhile are prepared
    and join this batch: the wait does work, and one commit serves more messages."""
    from sink.errors import TransientStorageError
    from sink.storage.batching import commit_batch
    done, items = _prepare(intake, jobs, boxes, ahead)
    closing = False
    if ahead and inbox is not None:
        count, size = len(jobs), sum(len(raw) for _, raw in jobs)
        # a flock cannot be waited for beside a socket: look at both every TURN_POLL seconds
        while not write_turn.take(wait=False):
            if closing or count >= MAX_BATCH or size >= MAX_BYTES:
                write_turn.take()               # nothing more may join: wait for the turn
                break
            if not inbox.readable(TURN_POLL):
                continue
            more, closing = _take_waiting(inbox, count, size)
            count, size = count + len(more), size + sum(len(raw) for _, raw in more)
            more_done, more_items = _prepare(intake, more, boxes, ahead)
            done, items = done + more_done, items + more_items
    else:
        write_turn.take()
    try:
        outcomes = commit_batch(intake, [(p, b) for _, p, b in items]) if items else []
    except TransientStorageError as transient:
        done += [(job_id, [_result(transient)] * len(b)) for job_id, _, b in items]
        return done, [], [], closing
    finally:
        write_turn.release()
    done += [(job_id, [_result(o) for o in results])
             for (job_id, _, _), results in zip(items, outcomes)]
    return done, [p for _, p, _ in items], outcomes, closing


def _prepare(intake, jobs: list, boxes: dict, ahead: bool) -> tuple[list, list]:
    """Digest, parse, verify and (``ahead``) decide ``jobs``: (the results of the jobs that
    could not be prepared, ``(job_id, prepared, boxes)`` of the others)."""
    done, items = [], []
    for (job_id, envelope, addresses, started), raw in jobs:
        try:
            prepared = intake.prepare(raw, envelope, started, dkim="none")
        except Exception as error:          # parsing never raises; be sure anyway
            done.append((job_id, [_result(error)] * len(addresses)))
            continue
        items.append((job_id, prepared, [boxes[a] for a in addresses]))
    items = with_dkim(items)
    # The rules run now, before the write turn, while another worker may hold it; the writer
    # checks their reads and decides again only where one moved (sink.intake.ahead). A worker
    # alone decides in its transaction: checking the reads again would only cost (~0.1 ms).
    if ahead and items:
        decided = intake.decide_ahead([(p, b) for _, p, b in items])
        items = [(job_id, p, b) for (job_id, _, b), p in zip(items, decided)]
    return done, items


def with_dkim(items: list) -> list:
    """The batch's DKIM verdicts, verified side by side (one slow DNS answer must not hold
    up every message behind it in this one worker; the whole batch is bounded)."""
    import dataclasses
    from sink.mail.dkim import verify_many
    from sink.mail.textnorm import domain_of
    try:
        results = verify_many([(p.raw, domain_of(p.parsed.sender or "")) for _, p, _ in items])
    except Exception:               # (no thread to be had, ...): unverified, never deferred
        results = ["temperror" if p.raw.find(b"DKIM-Signature") >= 0 else "none"
                   for _, p, _ in items]
    return [(job_id, dataclasses.replace(p, dkim=result), b)
            for (job_id, p, b), result in zip(items, results)]


def serve(sock: socket.socket, inbox: Inbox, config, workers: int = 1) -> int:
    from sink.db.engine import make_engine
    from sink.intake import Intake
    from sink.log import get_logger
    from sink.storage.batching import log_batch

    log = get_logger("sink.storage.worker")
    boxes = {box.address: box for box in config.boxes}
    try:
        intake = Intake(make_engine(config.database_url, pool_size=1))
        with intake.engine.connect():
            pass                     # the database answers: only then are we ready
        write_turn = WriteTurn.for_database(intake.engine)
    except Exception as error:       # say why instead of dying silently
        sock.sendall(frame(("failed", f"{type(error).__name__}: {error}")))
        return 1
    sock.sendall(frame(("ready", os.getpid())))
    log.debug("worker.ready", pid=os.getpid())
    closing = False
    frozen_with = None
    batches = messages = joined = 0
    while not closing:
        jobs, closing = _take_batch(inbox)
        if not jobs:
            break
        done, prepared, outcomes, closed = _commit(intake, write_turn, jobs, boxes,
                                                   ahead=workers > 1 and write_turn.shared,
                                                   inbox=None if closing else inbox)
        closing = closing or closed
        batches, messages = batches + 1, messages + len(done)
        joined += len(done) - len(jobs)             # the jobs that came while it waited
        sock.sendall(frame(("done", done)))         # answer first, then write the log lines
        log_batch(intake, prepared, outcomes)
        if intake.directory.current is not frozen_with:
            frozen_with = intake.directory.current
            freeze_long_lived()
    log.info("worker.stopped", pid=os.getpid(), batches=batches, messages=messages,
             joined_while_waiting=joined,
             decided_ahead=intake.decided["ahead"],
             decided_again=intake.decided["again"], decided_in_writer=intake.decided["writer"])
    intake.engine.dispose()
    return 0


def main(argv: list[str]) -> int:
    # The protocol process decides when we stop (it closes the socket): a SIGTERM to the whole
    # process group must not cut a batch in half.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[1]))
    sock.setblocking(True)
    inbox = Inbox(sock)
    first = inbox.next(block=True)
    if first is Inbox.EOF:
        return 0                # the protocol process went away before saying anything
    kind, config, *rest = first[0]
    if kind != "init":          # a protocol error of our own: say so, never run half set up
        sock.sendall(frame(("failed", f"expected init, got {kind!r}")))
        return 1
    from sink.log import configure
    configure(config.log.level, config.log.file)
    try:
        return serve(sock, inbox, config, workers=rest[0] if rest else 1)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        return 0                # the protocol process is gone: nobody is waiting for answers


if __name__ == "__main__":
    sys.exit(main(sys.argv))
