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
PostgreSQL they commit side by side.

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


class WriteTurn:
    """SQLite has one write lock, and a writer that finds it taken sleeps in SQLite's busy
    handler (1, 2, 5 ... 100 ms at a time) instead of being woken when it is free: with two
    workers that sleep was the p99. Workers on one SQLite file therefore take turns on an
    ``flock`` of a file beside it, which the kernel hands over at once; their parsing still
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

    def __enter__(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return False


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
    jobs, size = [first], len(first[1])
    while len(jobs) < MAX_BATCH and size < MAX_BYTES:
        more = inbox.next(block=False)
        if more is None:
            break
        if more is Inbox.EOF:
            return jobs, True
        jobs.append(more)
        size += len(more[1])
    return jobs, False


def _commit(intake, write_turn: WriteTurn, jobs: list, boxes: dict, ahead: bool = True
            ) -> tuple[list, list, list]:
    """Prepare and commit one batch: (the reply frame's results, the prepared messages, their
    outcomes - empty when the batch was rolled back). ``ahead``: decide before the write turn
    (when other workers share it)."""
    from sink.errors import TransientStorageError
    from sink.storage.batching import commit_batch
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
    try:
        with write_turn:
            outcomes = commit_batch(intake, [(p, b) for _, p, b in items]) if items else []
    except TransientStorageError as transient:
        done += [(job_id, [_result(transient)] * len(b)) for job_id, _, b in items]
        return done, [], []
    done += [(job_id, [_result(o) for o in results])
             for (job_id, _, _), results in zip(items, outcomes)]
    return done, [p for _, p, _ in items], outcomes


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
    batches = messages = 0
    while not closing:
        jobs, closing = _take_batch(inbox)
        if not jobs:
            break
        batches, messages = batches + 1, messages + len(jobs)
        done, prepared, outcomes = _commit(intake, write_turn, jobs, boxes, ahead=workers > 1)
        sock.sendall(frame(("done", done)))         # answer first, then write the log lines
        log_batch(intake, prepared, outcomes)
        if intake.directory.current is not frozen_with:
            frozen_with = intake.directory.current
            freeze_long_lived()
    log.info("worker.stopped", pid=os.getpid(), batches=batches, messages=messages,
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
