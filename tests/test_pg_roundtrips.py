"""Fewer PostgreSQL round trips per message (issue 16), the same stored result and the same
error behaviour: the queued SAVEPOINT/RELEASE/lock commands (sink.db.fastpath), the flush's one
pipeline, and the first read that also answers the duplicate and spam filters
(sink.intake.rows.stored_and_asked). The behaviour tests run on SQLite too: both must agree."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, select

from bench.storepath import Counter
from sink.config import parse_config
from sink.db import fastpath
from sink.db import schema as t
from sink.executor import apply
from sink.intake import Delivery, Envelope, Intake, rows
from sink.pipeline.context import dedup_keys
from sink.storage.batching import commit_batch
from tests.support import make_mail

BOX = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
LMTP = Envelope("lmtp", "mta@firma.cz", ("crm@firma.cz",))


def store(intake: Intake, raws, box=BOX) -> list[Delivery | BaseException]:
    """``raws`` in ONE batch (one transaction), one outcome each."""
    outcomes = commit_batch(intake, [(intake.prepare(raw, LMTP), [box]) for raw in raws])
    return [outcome for [outcome] in outcomes]


def count(engine, table, where=None) -> int:
    query = select(func.count()).select_from(table)
    if where is not None:
        query = query.where(where)
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()


# ------------------------------------------------------------------------------ round trips

def test_a_batch_of_eight_costs_at_most_four_and_a_half_round_trips_per_message(pg_engine):
    """Was 10.9 (four of them SAVEPOINT/RELEASE, one the dedup SELECT, one the spam SELECT),
    then 6.5 (the records' SAVEPOINT a round trip of its own before the first record), then
    5.5 (each message's two activities an INSERT each)."""
    engine = pg_engine
    intake = Intake(engine)
    store(intake, [make_mail(subject=f"Warm {i}") for i in range(8)])
    counter = Counter()
    counter.install()
    try:
        outcomes = store(intake, [make_mail(subject=f"Hello {i}") for i in range(8)])
    finally:
        counter.uninstall()
    assert [o.verdict for o in outcomes] == ["PROCESSED"] * 8
    assert count(engine, t.activities) == 16
    assert counter.round_trips / 8 <= 4.5, counter.report(8)
    sent = dict(counter.statements)
    # the filters' questions went with the first read; savepoints in the queued commands
    assert not any(k.startswith(("SELECT dedup_keys", "SELECT spam_list")) for k in sent), sent
    assert sent["SAVEPOINT sink_message"] == 8 and sent["RELEASE SAVEPOINT sink_message"] == 8
    assert sent["SAVEPOINT sink_records"] == 8 and sent["RELEASE SAVEPOINT sink_records"] == 8
    assert sent["INSERT INTO activities"] == 8            # two rows each, one statement
    assert counter.executes < sum(sent.values())
    # the flush: each table's deferred rows in one statement of column arrays
    for table in ("raw_messages", "dedup_keys", "activity_contacts"):
        assert sent[f"INSERT INTO {table}"] == 1, sent
    assert count(engine, t.raw_messages) == 16 and count(engine, t.dedup_keys) == 32


def test_deferred_rows_sent_as_column_arrays_are_stored_exactly_and_in_order(pg_engine):
    """The flush's one statement per table stores each row as its own INSERT would have:
    NULLs, empty strings, bytes with NUL, non-ASCII text, booleans - and sorted rows
    (``ordered``) in their sorted order."""
    engine = pg_engine
    message_id, other_id = _messages(engine, 2)
    from sink.db.attachments import _INSERT as INSERT_ATTACHMENTS
    made = [{"message_id": message_id, "position": i, "part": part, "name": name,
             "content_type": "text/plain", "size": size, "sha256": str(i) * 64,
             "content_id": cid, "inline": inline, "nested_subject": subject,
             "defect": None if i < 3 else "truncated"}
            for i, (part, name, size, inline, subject, cid) in enumerate((
                ("1", "příloha.txt", 0, True, "", None), ("2", "", 7, False, None, "<a@b>"),
                ("2.1", "x" * 255, 2**31 - 1, False, "Ünïcode ☃", "")), 1)]
    keys = [{"box": "crm@firma.cz", "kind": kind, "digest": digest, "message_id": message_id}
            for kind, digest in (("mid", "b" * 64), ("body", "a" * 64), ("mid", "a" * 64))]
    with engine.begin() as conn, fastpath.deferring(conn):
        INSERT_ATTACHMENTS.defer_many(conn, made)
        rows.INSERT_DEDUP_KEYS.defer_many(conn, keys)
        rows.INSERT_RAW.defer(conn, {"message_id": message_id, "content": b"a\x00b\xff"})
        rows.INSERT_RAW.defer(conn, {"message_id": other_id, "content": b""})
        fastpath.flush(conn)
    a = t.attachments.c
    with engine.connect() as conn:
        stored = [dict(r._mapping) for r in conn.execute(
            select(*(a[k] for k in made[0])).order_by(a.position))]
        assert stored == made
        r = t.raw_messages.c
        assert dict(conn.execute(select(r.message_id, r.content)).all()) == \
            {message_id: b"a\x00b\xff", other_id: b""}
        # sent sorted: the rows' physical order is the sorted order of their values
        order = conn.exec_driver_sql(
            "SELECT kind, digest FROM dedup_keys WHERE message_id = %s ORDER BY ctid",
            (message_id,)).all()
    assert order == sorted((k["kind"], k["digest"]) for k in keys)


def test_column_arrays_hold_a_bounded_number_of_bytes_each(pg_engine, monkeypatch):
    """A batch may hold 64 MB of raw messages below the streaming size; one array of all of
    them would be built whole in memory, and again in libpq's buffer. The rows go in
    statements of at most COLUMNS_AT_ONCE_BYTES each (here 20 bytes: three rows of 12)."""
    engine = pg_engine
    monkeypatch.setattr(fastpath, "COLUMNS_AT_ONCE_BYTES", 20)
    ids = _messages(engine, 3)
    counter = Counter()
    with engine.begin() as conn, fastpath.deferring(conn):
        for i, message_id in enumerate(ids):
            rows.INSERT_RAW.defer(conn, {"message_id": message_id, "content": bytes([i]) * 12})
        counter.install()
        try:
            fastpath.flush(conn)
        finally:
            counter.uninstall()
    assert counter.statements["INSERT INTO raw_messages"] == 3
    r = t.raw_messages.c
    with engine.connect() as conn:
        assert dict(conn.execute(select(r.message_id, r.content)).all()) == \
            {message_id: bytes([i]) * 12 for i, message_id in enumerate(ids)}


def _messages(engine, n: int) -> list[int]:
    """The ids of ``n`` stored messages, their raw bytes and dedup keys deleted."""
    stored = store(Intake(engine), [make_mail(subject=f"Holder {i}") for i in range(n)])
    with engine.begin() as conn:
        conn.execute(t.dedup_keys.delete())
        conn.execute(t.raw_messages.delete())
    return [s.message_id for s in stored]


def test_a_value_too_long_for_its_column_fails_the_flush_as_a_row_of_its_own_did(pg_engine):
    """The arrays are cast to TEXT[], not to the column's VARCHAR(n)[]: such a CAST would cut
    a too long value without a word; the INSERT's own assignment refuses it."""
    engine = pg_engine
    [message_id] = _messages(engine, 1)
    too_long = [{"box": "crm@firma.cz", "kind": "k" * 21, "digest": f"{i}" * 64,
                 "message_id": message_id} for i in range(2)]
    with pytest.raises(sa_exc.DataError, match="too long"):
        with engine.begin() as conn, fastpath.deferring(conn):
            rows.INSERT_DEDUP_KEYS.defer_many(conn, too_long)
            fastpath.flush(conn)
    assert count(engine, t.dedup_keys) == 0


def test_a_savepoint_released_with_nothing_inside_sends_nothing(pg_engine):
    engine = pg_engine
    counter = Counter()
    with engine.begin() as conn, fastpath.deferring(conn):
        conn.exec_driver_sql("SELECT 1")
        counter.install()
        try:
            fastpath.savepoint(conn, "empty")
            fastpath.release(conn, "empty")
            fastpath.flush(conn)
        finally:
            counter.uninstall()
    assert counter.round_trips == 0 and not counter.statements


# ------------------------------------------------------------------- the queue's own order

def test_a_statement_of_sqlalchemy_runs_inside_the_queued_savepoint(engine):
    """SQLAlchemy's statements send the queue first: rolling back to the savepoint undoes them
    (sent after the statement, the SAVEPOINT would leave the row behind)."""
    with engine.begin() as conn, fastpath.deferring(conn):
        fastpath.savepoint(conn, "outer_sp")
        conn.execute(insert(t.spam_list).values(box="crm@firma.cz", email="undone@x.cz",
                                                added_at=func.now()))
        fastpath.rollback_to(conn, "outer_sp", release=True)
        fastpath.savepoint(conn, "kept_sp")
        conn.execute(insert(t.spam_list).values(box="crm@firma.cz", email="kept@x.cz",
                                                added_at=func.now()))
        fastpath.release(conn, "kept_sp")
        fastpath.flush(conn)
    with engine.connect() as conn:
        assert conn.execute(select(t.spam_list.c.email)).scalars().all() == ["kept@x.cz"]


def test_an_integrity_error_in_the_middle_of_a_batch_retries_only_that_message(engine,
                                                                              monkeypatch):
    """The second message's INSERT raises IntegrityError (a uuid already stored): its savepoint
    is rolled back, it is stored again, and the messages before and after it are kept."""
    intake = Intake(engine)
    [first] = store(intake, [make_mail(subject="Earlier")])
    with engine.connect() as conn:
        taken = conn.execute(select(t.messages.c.uuid)).scalar_one()
    real_uuid, calls = rows.message_uuid, []

    def message_uuid(*args):
        calls.append(1)
        return taken if len(calls) == 2 else real_uuid(*args)
    monkeypatch.setattr(rows, "message_uuid", message_uuid)
    outcomes = store(intake, [make_mail(subject=s) for s in ("One", "Two", "Three")])
    assert len(calls) == 4                       # "Two" was inserted twice
    assert [o.verdict for o in outcomes] == ["PROCESSED"] * 3
    assert len({o.message_id for o in outcomes} | {first.message_id}) == 4
    assert count(engine, t.messages) == 4 and count(engine, t.raw_messages) == 4
    assert count(engine, t.activities) == 4 and count(engine, t.activity_contacts) == 4
    assert count(engine, t.dedup_keys) == 8          # a key and a Message-ID each


@pytest.mark.parametrize("when", ["before any statement", "after an activity"])
def test_an_executor_that_fails_leaves_only_its_message_failed(engine, when):
    """The records savepoint, queued and maybe never sent, still undoes what it holds."""
    def executor(conn, message_id, decision, directory):
        if decision.trace and "Bad" in str(conn.execute(select(t.messages.c.subject).where(
                t.messages.c.id == message_id)).scalar_one()):
            if when == "after an activity":
                apply(conn, message_id, decision, directory)
            raise RuntimeError("executor bug")
        return apply(conn, message_id, decision, directory)
    intake = Intake(engine, executor=executor)
    outcomes = store(intake, [make_mail(subject=s) for s in ("Good", "Bad", "Good too")])
    assert [o.status for o in outcomes] == ["processed", "failed", "processed"]
    bad = outcomes[1].message_id
    assert count(engine, t.activities, t.activities.c.message_id == bad) == 0
    assert count(engine, t.activity_contacts) == count(engine, t.activities) == 2
    assert count(engine, t.dedup_keys, t.dedup_keys.c.message_id == bad) == 0
    with engine.connect() as conn:
        assert "executor bug" in conn.execute(select(t.messages.c.error).where(
            t.messages.c.id == bad)).scalar_one()


def test_a_key_another_worker_commits_after_the_first_read_fails_the_flush_and_the_batch_is_stored_again(
        pg_engine, monkeypatch):
    """The dedup key INSERT in the flush's one pipeline raises IntegrityError: the whole batch
    is stored again (as ever), and that message is now a DUPLICATE."""
    engine = pg_engine
    intake = Intake(engine)
    [winner] = store(intake, [make_mail(subject="Winner")])
    late = make_mail(subject="Late")
    keys = dedup_keys(intake.prepare(late, LMTP).parsed)
    real, injected = rows.stored_and_asked, []

    def stored_and_asked(conn, box, sha256, keys_asked, sender):
        answer = real(conn, box, sha256, keys_asked, sender)
        if tuple(keys_asked) == keys and not injected:
            injected.append(1)
            with engine.begin() as other:        # another worker, right after our read
                other.execute(insert(t.dedup_keys), [
                    {"box": box, "kind": k, "digest": d, "message_id": winner.message_id}
                    for k, d in keys])
        return answer
    monkeypatch.setattr(rows, "stored_and_asked", stored_and_asked)
    outcomes = store(intake, [make_mail(subject="Before"), late, make_mail(subject="After")])
    assert injected
    assert [o.verdict for o in outcomes] == ["PROCESSED", "DUPLICATE", "PROCESSED"]
    assert count(engine, t.messages) == 4


def test_a_queued_command_that_fails_raises_sqlalchemys_error_at_the_next_statement(pg_engine):
    engine = pg_engine
    with pytest.raises(sa_exc.DataError):
        with engine.begin() as conn, fastpath.deferring(conn):
            fastpath.queue(conn, "SELECT 1 / 0")
            rows.STORED.first(conn, {"box": "crm@firma.cz", "sha256": "0" * 64})


# -------------------------------------------------------------- the first read's answers

def test_a_sender_marked_as_spam_by_the_message_before_it_in_the_batch_is_spam(engine, db_url):
    """The spam question is read with each message's first statement, after the messages
    before it wrote theirs: not once per batch."""
    from tests.conftest import config_for
    rules = [{"name": "junk", "conditions": [{"field": "subject", "op": "contains",
                                              "value": "viagra"}], "action": "mark_spam"}]
    box = config_for(db_url, rules=rules).boxes[0]
    outcomes = store(Intake(engine), [make_mail(subject="Cheap VIAGRA"),
                                      make_mail(subject="Hello again")], box)
    assert [o.verdict for o in outcomes] == ["SPAM", "SPAM"]
    assert "stored spam list" in outcomes[1].decision.trace[-1].detail


def test_duplicates_by_a_stored_key_and_by_one_earlier_in_the_batch(engine):
    intake = Intake(engine)
    store(intake, [make_mail(subject="Once", message_id="<once@x>")])
    outcomes = store(intake, [
        make_mail(subject="Once again", message_id="<once@x>"),          # stored key
        make_mail(subject="Twice", message_id="<twice@x>"),
        make_mail(subject="Twice again", message_id="<twice@x>"),        # key of this batch
        make_mail(subject="Fresh")])
    assert [o.verdict for o in outcomes] == ["DUPLICATE", "PROCESSED", "DUPLICATE",
                                             "PROCESSED"]


def test_bytes_already_stored_are_answered_already_stored(engine):
    intake = Intake(engine)
    raw = make_mail(subject="Same bytes")
    [first] = store(intake, [raw])
    [again, other] = store(intake, [raw, make_mail(subject="Other")])
    assert again.already_stored and again.message_id == first.message_id
    assert (again.status, again.verdict) == ("processed", "PROCESSED")
    assert other.verdict == "PROCESSED" and not other.already_stored


def test_raw_bytes_sent_by_copy_in_a_batch_are_exact_and_belong_to_their_message(pg_engine,
                                                                                 monkeypatch):
    """COPY (a big message's bytes, here every message's) uses the connection on its own: the
    queued commands go first, and an error of ours after it undoes its row with the message."""
    engine = pg_engine
    monkeypatch.setattr(rows, "STREAM_RAW_FROM", 100)
    intake = Intake(engine)
    real_store = intake.store

    def store_once(conn, prepared, box):
        delivery = real_store(conn, prepared, box)
        if prepared.parsed.subject == "Bug":
            raise RuntimeError("bug after the bytes were written")
        return delivery
    monkeypatch.setattr(intake, "store", store_once)
    raws = [make_mail(subject=s, body="x" * 3000) for s in ("One", "Bug", "Three")]
    outcomes = store(intake, raws)
    assert isinstance(outcomes[1], RuntimeError)
    with engine.connect() as conn:
        stored = dict(conn.execute(select(t.raw_messages.c.message_id,
                                          t.raw_messages.c.content)).all())
    assert stored == {outcomes[0].message_id: raws[0], outcomes[2].message_id: raws[2]}


def test_only_a_sender_the_spam_filter_asks_about_and_the_database_takes_is_asked_ahead():
    """A sender that is no valid address is never looked up (the filter says SPAM first); one
    with a NUL or a lone surrogate would fail the first read instead of the rules."""
    import dataclasses

    from sink.intake.core import _askable
    from sink.mail.parse import parse_message
    parsed = parse_message(make_mail(sender="jan@acme.cz"))
    assert _askable(parsed) == "jan@acme.cz"
    for sender, valid in (("jan@acme.cz", False), ("j\x00an@acme.cz", True),
                          ("j\udce9an@acme.cz", True), (None, False)):
        assert _askable(dataclasses.replace(parsed, sender=sender, sender_valid=valid)) is None


@pytest.mark.parametrize("cached_params", [None, 64])
def test_a_messages_activities_in_one_insert_each_get_their_own_links(engine, cached_params,
                                                                      monkeypatch):
    """PostgreSQL writes two or more activities of a message in one INSERT (one round trip:
    the four as column arrays, 64 parameters being more than psycopg caches; with
    ``cached_params`` 64, as one VALUES of four rows) and gives each its links by the order of
    the ids it returned: every activity keeps its own responsible user, contacts and
    companies, in the order decided - as one insert each does (SQLite, and the test's run on
    it)."""
    from sink.db.directory_store import load_directory
    if cached_params:
        monkeypatch.setattr(fastpath, "PSYCOPG_CACHED_PARAMS", cached_params)
    from sink.pipeline.decision import ActivityAction, Decision
    [first] = store(Intake(engine), [make_mail(subject="Carrier of three")])
    people = [("bob@firma.cz", ("jan@acme.cz",), ("ACME",)),
              ("alice@firma.cz", ("eva@globex.com", "petr@gmail.com"), ()),
              ("carol@firma.cz", (), ("Globex", "FreeMail Shop")),
              ("dave@firma.cz", ("petr@gmail.com",), ("Globex",))]
    decision = Decision("PROCESSED", "incoming", activities=tuple(
        ActivityAction(user, "incoming", "E-mail", "none", f"about {n}", "text", None,
                       contacts=contacts, companies=companies)
        for n, (user, contacts, companies) in enumerate(people)))
    with engine.begin() as conn, fastpath.deferring(conn):
        directory = load_directory(conn)
        stored = apply(conn, first.message_id, decision, directory)
        fastpath.flush(conn)
    assert stored == decision
    a, u = t.activities.c, t.users.c
    with engine.connect() as conn:
        made = conn.execute(select(a.id, u.email, a.subject).join(t.users, u.id == a.responsible_id)
                            .where(a.message_id == first.message_id, a.subject.like("about %"))
                            .order_by(a.id)).all()
        links = {row.id: (
            tuple(sorted(conn.execute(select(t.contacts.c.email).join(
                t.activity_contacts, t.activity_contacts.c.contact_id == t.contacts.c.id)
                .where(t.activity_contacts.c.activity_id == row.id)).scalars())),
            tuple(sorted(conn.execute(select(t.companies.c.name).join(
                t.activity_companies, t.activity_companies.c.company_id == t.companies.c.id)
                .where(t.activity_companies.c.activity_id == row.id)).scalars())))
            for row in made}
    assert [(row.email, row.subject) for row in made] == \
        [(user, f"about {n}") for n, (user, _, _) in enumerate(people)]
    assert [links[row.id] for row in made] == \
        [(tuple(sorted(c)), tuple(sorted(k))) for _, c, k in people]
