"""Issue 16, storage: what makes a message cheaper to store keeps every row and every promise
- the raw column's compression, statements deferred to one executemany per table per batch,
locks taken in one order across workers, the fast path around the DBAPI cursor."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from sink.config import parse_config
from sink.db import schema as t
from sink.intake import Envelope, Intake
from tests.support import make_mail

BOX = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
LMTP = Envelope("lmtp", "mta@firma.cz", ("crm@firma.cz",))


def test_raw_bytes_are_stored_with_lz4_on_postgresql(pg_engine):
    """Migration 0010: new raw bytes are lz4-compressed on PostgreSQL, and read back exact."""
    raw = make_mail(body="Dobrý den, " * 400)           # > 2 KB: PostgreSQL compresses it
    [delivery] = Intake(pg_engine).deliver(raw, LMTP, [BOX])
    with pg_engine.connect() as conn:
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

    def __init__(self, patience: float = 1.0):
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
                pass                # the other batch waits for our locks: no deadlock
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


def test_two_workers_storing_the_same_messages_in_opposite_order_do_not_deadlock(pg_engine):
    """Batches [a, b] and [b, a] at once (an MTA retrying while the first try is still being
    stored, on two workers): both commit; each message is stored once; outcomes stay in the
    caller's order."""
    a, b = make_mail(subject="first"), make_mail(subject="second")
    results = _two_batches_at_once(pg_engine, [a, b], [b, a])
    assert not [r for r in results if isinstance(r, Exception)], results
    (a1, b1), (b2, a2) = ([o[0] for o in r] for r in results)
    assert a1.message_id == a2.message_id and b1.message_id == b2.message_id
    assert {a1.already_stored, a2.already_stored} == {False, True}
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM messages")).scalar() == 2


def test_two_workers_storing_copies_with_the_same_dedup_keys_do_not_deadlock(pg_engine):
    """Batches [x, y] and [y', x'] at once, x' a copy of x with other bytes (another Received
    line, the same Message-ID: the same dedup keys), y' likewise: both commit, and of each
    pair one is processed and the other DUPLICATE."""
    x = make_mail(subject="x", message_id="<x@test>")
    y = make_mail(subject="y", message_id="<y@test>")
    copy = lambda raw: b"Received: from relay2 by mx; Mon, 2 Nov 2026 10:00:01 +0000\r\n" + raw
    results = _two_batches_at_once(pg_engine, [x, y], [copy(y), copy(x)])
    assert not [r for r in results if isinstance(r, Exception)], results
    (x1, y1), (y2, x2) = ([o[0] for o in r] for r in results)
    assert sorted([x1.verdict, x2.verdict]) == ["DUPLICATE", "PROCESSED"], (x1, x2)
    assert sorted([y1.verdict, y2.verdict]) == ["DUPLICATE", "PROCESSED"], (y1, y2)


# ------------------------------------------------------------------ deferred rows

def _count(conn, table) -> int:
    return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()


def test_deferred_rows_are_sent_at_the_flush_sorted_and_undone_with_their_savepoint(engine):
    """fastpath.deferring: nothing reaches the database before flush; a row deferred inside a
    savepoint that is rolled back is never sent (nor one deferred after a nested savepoint
    that is rolled back to); released savepoints keep theirs; an ``ordered`` statement's
    rows go in sorted order (PostgreSQL: insertion order is physical order, ctid)."""
    from sqlalchemy import insert
    from sink.db import fastpath
    from sink.intake import rows
    row = lambda digest, mid: {"box": "b", "kind": "key", "digest": digest, "message_id": mid}
    with engine.begin() as conn, fastpath.deferring(conn):
        mid = conn.execute(insert(t.messages), {
            "uuid": "u1", "received_at": datetime.now(timezone.utc),
            "channel": "lmtp", "box": "b", "rcpt_to": [], "to_addrs": [], "cc_addrs": [],
            "size": 1, "sha256": "0" * 64, "status": "pending", "trace": []}
        ).inserted_primary_key[0]
        rows.INSERT_DEDUP_KEYS.defer_many(conn, [row("d9", mid), row("d1", mid)])
        outer = fastpath.savepoint(conn, "m")
        rows.INSERT_DEDUP_KEYS.defer(conn, row("d5", mid))
        inner = fastpath.savepoint(conn, "r")
        rows.INSERT_DEDUP_KEYS.defer(conn, row("gone-r", mid))
        fastpath.rollback_to(conn, "r", inner)           # kept open, its row dropped
        rows.INSERT_DEDUP_KEYS.defer(conn, row("d7", mid))
        fastpath.release(conn, "r")
        fastpath.release(conn, "m")                      # d5, d7 now the transaction's
        fastpath.savepoint(conn, "m")
        rows.INSERT_DEDUP_KEYS.defer(conn, row("gone-m", mid))
        fastpath.savepoint(conn, "r")
        rows.INSERT_DEDUP_KEYS.defer(conn, row("gone-mr", mid))
        fastpath.release(conn, "r")
        fastpath.rollback_to(conn, "m", outer, release=True)
        assert _count(conn, "dedup_keys") == 0
        assert [p["digest"] for p in fastpath.pending(conn, rows.INSERT_DEDUP_KEYS)] == \
            ["d9", "d1", "d5", "d7"]
        fastpath.flush(conn)
        assert fastpath.pending(conn, rows.INSERT_DEDUP_KEYS) == []
    order = "ctid" if engine.dialect.name == "postgresql" else "rowid"
    with engine.connect() as conn:
        sent = conn.execute(text(f"SELECT digest FROM dedup_keys ORDER BY {order}")).scalars()
        assert list(sent) == ["d1", "d5", "d7", "d9"]


class FailingOnce:
    """An executor that writes a message's records, then fails: the first time as a lost
    unique race (IntegrityError: the message's savepoint is rolled back and it is stored
    again), for ``subject`` always as a bug of ours (its records' savepoint is rolled back,
    the message stays ``failed``)."""

    def __init__(self, subject_of):
        self.calls = 0
        self.subject_of = subject_of

    def __call__(self, conn, message_id, decision, directory):
        from sqlalchemy import exc as sa_exc
        from sink.executor import apply
        stored = apply(conn, message_id, decision, directory)
        self.calls += 1
        if self.calls == 1:
            raise sa_exc.IntegrityError("INSERT", {}, Exception("another worker won"))
        if self.subject_of(message_id) == "broken":
            raise ValueError("a bug in a writer")
        return stored


def test_no_deferred_row_outlives_its_message_savepoint_in_a_batch(engine):
    """A storage batch defers raw bytes, attachments, activity links and dedup keys: the
    rows of an attempt that lost a race, and the records of a message whose executor failed,
    are not flushed with the batch (a raw row or a link of a rolled-back message would fail
    the batch at COMMIT on its foreign key, a dedup key would make the message DUPLICATE
    for ever)."""
    from sink.storage.batching import commit_batch
    subjects = {}                            # message row id -> subject, as inserted
    intake = Intake(engine, executor=FailingOnce(subjects.get))
    raws = [make_mail(subject="first", attachments=[("application", "pdf", b"%PDF" * 50,
                                                     "a.pdf")]),
            make_mail(subject="broken"), make_mail(subject="third")]
    items = [(intake.prepare(raw, LMTP), (BOX,)) for raw in raws]
    original = intake._insert

    def remember(conn, raw, sha256, parsed, *args, **kwargs):
        message_id = original(conn, raw, sha256, parsed, *args, **kwargs)
        subjects[message_id] = parsed.subject
        return message_id
    intake._insert = remember
    outcomes = commit_batch(intake, items)
    first, broken, third = (o[0] for o in outcomes)
    assert (first.status, broken.status, third.status) == ("processed", "failed", "processed")
    with engine.connect() as conn:
        assert _count(conn, "messages") == 3 and _count(conn, "raw_messages") == 3
        assert conn.execute(text("SELECT count(*) FROM raw_messages r JOIN messages m "
                                 "ON m.id = r.message_id")).scalar() == 3
        keyed = set(conn.execute(text("SELECT DISTINCT message_id FROM dedup_keys")).scalars())
        assert keyed == {first.message_id, third.message_id}
        linked = set(conn.execute(text(
            "SELECT DISTINCT a.message_id FROM activity_contacts l "
            "JOIN activities a ON a.id = l.activity_id")).scalars())
        assert linked == {first.message_id, third.message_id}
        assert _count(conn, "activities") == 2
        attached = set(conn.execute(text("SELECT message_id FROM attachments")).scalars())
        assert attached == {first.message_id}


def test_a_sqlite_batch_sends_its_deferred_rows_at_the_flush(tmp_path):
    """SQLite defers the same rows as PostgreSQL (issue 16: one executemany per table per
    batch instead of one execute per row): in SQLite's own trace of the batch, every raw,
    dedup key and activity link row comes after the last message row, and all are there."""
    from sqlalchemy import event
    from sink.storage.batching import commit_batch
    from tests.conftest import seeded
    sqlite_engine = seeded(f"sqlite:///{tmp_path}/sink.db")
    intake = Intake(sqlite_engine)
    items = [(intake.prepare(make_mail(subject=f"Offer {i}", message_id=f"<f{i}@x>"), LMTP),
              (BOX,)) for i in range(4)]
    traced: list[str] = []

    def trace(conn):
        conn.connection.dbapi_connection.set_trace_callback(traced.append)
    event.listen(sqlite_engine, "begin", trace)
    try:
        outcomes = commit_batch(intake, items)
    finally:
        event.remove(sqlite_engine, "begin", trace)
        sqlite_engine.dispose()
    assert [o[0].status for o in outcomes] == ["processed"] * 4
    table_of = [s.split()[2] for s in traced if s.startswith("INSERT INTO")]
    last_message = max(i for i, table in enumerate(table_of) if table == "messages")
    deferred = table_of[last_message + 1:]
    assert table_of.count("messages") == 4
    assert deferred.count("raw_messages") == 4 and "raw_messages" not in table_of[:last_message]
    assert deferred.count("dedup_keys") == table_of.count("dedup_keys") >= 4
    links = [t for t in table_of if t.startswith("activity_")]
    assert links and all(t in deferred for t in links)


# ------------------------------------------------------------------ the Python around them

def _reference_storable_row(table, values):
    """storable_row's definition: every text storable and cut to its column's length."""
    from sink.mail.parse import storable
    out = {}
    for key, value in values.items():
        if isinstance(value, str):
            value = storable(value)[:getattr(table.c[key].type, "length", None) or None]
        elif isinstance(value, list):
            value = [storable(v) if isinstance(v, str) else v for v in value]
        out[key] = value
    return out


_TEXT = st.text(alphabet=st.characters(), max_size=600)


@settings(max_examples=300, deadline=None)
@given(sender=_TEXT, subject=_TEXT, message_id=_TEXT | st.none(),
       to=st.lists(_TEXT, max_size=3))
def test_storable_row_is_its_definition(sender, subject, message_id, to):
    from sink.intake.rows import storable_row
    values = {"sender": sender, "subject": subject, "message_id": message_id, "to_addrs": to,
              "size": len(subject), "box": sender}
    assert storable_row(t.messages, values) == _reference_storable_row(t.messages, values)
