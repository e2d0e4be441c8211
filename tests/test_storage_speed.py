"""Issue 16, storage: what makes a message cheaper to store keeps every row and every promise
- the raw column's compression, statements deferred to one executemany per table per batch,
locks taken in one order across workers, the fast path around the DBAPI cursor."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from sink.config import parse_config
from sink.db import schema as t
from sink.intake import Envelope, Intake
from tests.support import make_mail

BOX = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
LMTP = Envelope("lmtp", "mta@firma.cz", ("crm@firma.cz",))


def test_raw_bytes_are_stored_with_lz4_on_postgresql(engine):
    """Migration 0010: new raw bytes are lz4-compressed on PostgreSQL, and read back exact."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only (SQLite has no column compression)")
    raw = make_mail(body="Dobrý den, " * 400)           # > 2 KB: PostgreSQL compresses it
    [delivery] = Intake(engine).deliver(raw, LMTP, [BOX])
    with engine.connect() as conn:
        method = conn.execute(text(
            "SELECT pg_column_compression(content) FROM raw_messages WHERE message_id = :id"),
            {"id": delivery.message_id}).scalar()
        stored = conn.execute(select(t.raw_messages.c.content).where(
            t.raw_messages.c.message_id == delivery.message_id)).scalar()
    assert method == "lz4"
    assert stored == raw


# ------------------------------------------------------------------ two workers, one order

class SecondMessageMeet:
    """Rules that hold each thread at its second message until the other thread gets there
    too (or ``patience`` runs out): then each batch has stored its first message and is about
    to store its second - the moment two batches holding the same messages in opposite order
    would each wait for the other's row."""

    def __init__(self, patience: float = 3.0):
        import threading
        self.barrier = threading.Barrier(2, timeout=patience)
        self.local = threading.local()

    def rules(self, msg, box, directory, seen, records):
        import threading
        from sink.pipeline import evaluate
        self.local.count = getattr(self.local, "count", 0) + 1
        if self.local.count == 2:
            try:
                self.barrier.wait()
            except threading.BrokenBarrierError:
                pass                # the other batch waits on our row: ordered, no deadlock
        return evaluate(msg, box, directory, seen, records)


def _two_batches_at_once(engine, first, second):
    """commit_batch of ``first`` and of ``second`` in two threads, each with its own Intake
    (two storage workers); returns each batch's outcomes or the exception it raised."""
    from concurrent.futures import ThreadPoolExecutor
    from sink.storage.batching import commit_batch
    meet = SecondMessageMeet()

    def run(raws):
        intake = Intake(engine, rules=meet.rules)
        items = [(intake.prepare(raw, LMTP), (BOX,)) for raw in raws]
        try:
            return commit_batch(intake, items)
        except Exception as error:      # TransientStorageError: answered 451
            return error
    with ThreadPoolExecutor(2) as pool:
        return [f.result(timeout=60) for f in [pool.submit(run, first), pool.submit(run, second)]]


def test_two_workers_storing_the_same_messages_in_opposite_order_do_not_deadlock(engine):
    """Batches [a, b] and [b, a] at once (an MTA retrying while the first try is still being
    stored, on two workers): both commit; each message is stored once; outcomes stay in the
    caller's order."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL: SQLite has one writer")
    a, b = make_mail(subject="first"), make_mail(subject="second")
    results = _two_batches_at_once(engine, [a, b], [b, a])
    assert not [r for r in results if isinstance(r, Exception)], results
    (a1, b1), (b2, a2) = ([o[0] for o in r] for r in results)
    assert a1.message_id == a2.message_id and b1.message_id == b2.message_id
    assert {a1.already_stored, a2.already_stored} == {False, True}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM messages")).scalar() == 2


def test_two_workers_storing_copies_with_the_same_dedup_keys_do_not_deadlock(engine):
    """Batches [x, y] and [y', x'] at once, x' a copy of x with other bytes (another Received
    line, the same Message-ID: the same dedup keys), y' likewise: both commit, and of each
    pair one is processed and the other DUPLICATE."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL: SQLite has one writer")
    x = make_mail(subject="x", message_id="<x@test>")
    y = make_mail(subject="y", message_id="<y@test>")
    copy = lambda raw: b"Received: from relay2 by mx; Mon, 2 Nov 2026 10:00:01 +0000\r\n" + raw
    results = _two_batches_at_once(engine, [x, y], [copy(y), copy(x)])
    assert not [r for r in results if isinstance(r, Exception)], results
    (x1, y1), (y2, x2) = ([o[0] for o in r] for r in results)
    assert sorted([x1.verdict, x2.verdict]) == ["DUPLICATE", "PROCESSED"], (x1, x2)
    assert sorted([y1.verdict, y2.verdict]) == ["DUPLICATE", "PROCESSED"], (y1, y2)
