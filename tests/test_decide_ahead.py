"""Deciding ahead (sink.intake.ahead): the rules run before the write lock, and the writer uses
their decision only while every read it was made on still holds - on SQLite and PostgreSQL.

Each test decides messages ahead, then commits something in between that moves (or does not
move) one of those reads, then stores them: the stored outcome must be the one the writer would
have reached deciding them itself, and ``Intake.decided`` says which way it went.
"""

from __future__ import annotations

import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from sink.config import parse_config
from sink.db import schema as t
from sink.db.directory_store import bump_version
from sink.db.engine import make_engine
from sink.intake import Envelope, Intake
from sink.intake.ahead import Ahead, Recorder, still_holds
from sink.pipeline.records import MemoryRecords
from sink.storage.batching import commit_batch
from tests.conftest import seeded
from tests.support import make_mail

BOX = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
LMTP = Envelope("lmtp", "mta@firma.cz", ("crm@firma.cz",))
DATE = "Mon, 02 Nov 2026 10:00:00 +0000"


def ahead(intake: Intake, *raws: bytes):
    """``raws`` prepared and decided ahead, as a storage worker does before its write turn."""
    return intake.decide_ahead([(intake.prepare(raw, LMTP), [BOX]) for raw in raws])


def commit(intake: Intake, *prepared):
    """Store ``prepared`` in one batch; the Delivery of each."""
    return [results[0] for results in commit_batch(intake, [(p, [BOX]) for p in prepared])]


def stored(engine, message_id: int) -> tuple:
    """What a CRM user sees of a stored message: verdict, direction, trace, activity links."""
    with engine.connect() as conn:
        row = conn.execute(select(t.messages.c.verdict, t.messages.c.direction,
                                  t.messages.c.trace).where(t.messages.c.id == message_id)).one()
        links = conn.execute(select(t.activities.c.contract_id, t.activities.c.order_id,
                                    t.activities.c.task_id, t.activities.c.responsible_id,
                                    t.activities.c.direction, t.activities.c.completed)
                             .where(t.activities.c.message_id == message_id)
                             .order_by(t.activities.c.id)).all()
    return row.verdict, row.direction, [e["rule"] + ":" + e["outcome"] for e in row.trace], \
        [tuple(link) for link in links]


def test_a_decision_whose_reads_still_hold_is_the_one_stored(engine):
    intake = Intake(engine)
    raw = make_mail(subject="Offer Contract:2023-015", date=DATE)
    expected = intake.evaluate_only(raw, BOX, LMTP)[0]       # writes nothing
    [prepared] = ahead(intake, raw)
    assert prepared.ahead[BOX.address].decision == expected
    [delivery] = commit(intake, prepared)
    assert intake.decided == {"ahead": 1}
    assert delivery.decision.verdict == expected.verdict == "PROCESSED"
    assert stored(engine, delivery.message_id)[0] == "PROCESSED"


def test_a_decision_that_holds_stores_the_row_bound_ahead_and_one_decided_again_its_own(
        engine, monkeypatch):
    """The message row is bound with the decision ahead (less work inside the write turn):
    the writer inserts exactly that row when the decision holds, and builds its own when it
    decides again (the bound row carries the stale outcome)."""
    from sink.intake import rows
    intake = Intake(engine)
    original = make_mail(subject="Price list", date=DATE, body="first copy")
    forwarded = make_mail(subject="Price list", date=DATE, body="second copy")  # same key
    [held, late] = ahead(intake, make_mail(subject="Hello", date=DATE), forwarded)
    bound_rows = {id(p.ahead[BOX.address].row) for p in (held, late)}
    assert len(bound_rows) == 2 and None not in bound_rows
    built, inserted = [], []
    real_insert, real_bound = rows.INSERT_MESSAGE.insert, rows.INSERT_MESSAGE.insert_bound
    monkeypatch.setattr(rows.INSERT_MESSAGE, "insert",
                        lambda conn, row: built.append(row["verdict"]) or real_insert(conn, row))
    monkeypatch.setattr(rows.INSERT_MESSAGE, "insert_bound",
                        lambda conn, b: inserted.append(id(b)) or real_bound(conn, b))
    [first] = commit(intake, intake.prepare(original, LMTP))      # the other worker's batch
    [kept, again] = commit(intake, held, late)
    assert (first.verdict, kept.verdict, again.verdict) == ("PROCESSED", "PROCESSED",
                                                            "DUPLICATE")
    assert inserted == [id(held.ahead[BOX.address].row)]          # the row bound ahead
    assert built == ["PROCESSED", "DUPLICATE"]                    # the original; decided again
    assert stored(engine, again.message_id)[0] == "DUPLICATE"


def test_a_copy_committed_in_between_makes_the_writer_decide_again(engine):
    intake = Intake(engine)
    original = make_mail(subject="Price list", date=DATE, body="first copy")
    forwarded = make_mail(subject="Price list", date=DATE, body="second copy")  # same key
    [late] = ahead(intake, forwarded)
    assert late.ahead[BOX.address].decision.verdict == "PROCESSED"   # nothing seen yet
    [first] = commit(intake, intake.prepare(original, LMTP))      # the other worker's batch
    [second] = commit(intake, late)
    assert (first.verdict, second.verdict) == ("PROCESSED", "DUPLICATE")
    assert intake.decided == {"writer": 1, "again": 1}


def test_a_reply_whose_original_was_committed_in_between_inherits_its_links(engine):
    intake = Intake(engine)
    original = make_mail(subject="Offer Contract:2023-015 Order:OBJ-77",
                         message_id="<o1@acme.cz>")
    reply = make_mail(subject="Re: Offer", headers={"In-Reply-To": "<o1@acme.cz>"})
    [early] = ahead(intake, reply)
    assert early.ahead[BOX.address].decision.activities[0].contract is None
    commit(intake, intake.prepare(original, LMTP))
    [answer] = commit(intake, early)
    act = answer.decision.activities[0]
    assert (act.contract, act.order) == ("2023-015", "OBJ-77")
    assert intake.decided["again"] == 1


def test_the_same_batch_an_original_and_its_reply_both_decided_ahead(engine):
    """The reply was decided before its original existed; inside the batch the original is
    written first, so the reply's thread question has a new answer there."""
    intake = Intake(engine)
    original = make_mail(subject="Offer Contract:2023-015", message_id="<o2@acme.cz>")
    reply = make_mail(subject="Re: Offer", headers={"References": "<o2@acme.cz>"})
    both = ahead(intake, original, reply)
    _, answer = commit(intake, *both)
    assert answer.decision.activities[0].contract == "2023-015"
    assert intake.decided == {"ahead": 1, "again": 1}


def test_a_directory_imported_in_between_makes_the_writer_decide_again(engine):
    intake = Intake(engine)
    [early] = ahead(intake, make_mail(subject="Hello"))
    with engine.begin() as conn:
        bump_version(conn)
    commit(intake, early)
    assert intake.decided == {"again": 1}


def test_carriers_and_held_messages_are_left_to_the_writer(engine):
    intake = Intake(engine)
    held = intake.prepare(make_mail(), Envelope("lmtp", "mta@firma.cz", (BOX.address,),
                                                hold=True))
    [decided] = intake.decide_ahead([(held, [BOX])])
    assert decided.ahead is None


def test_a_database_that_does_not_answer_leaves_every_decision_to_the_writer(tmp_path):
    intake = Intake(make_engine(f"sqlite:///{tmp_path}/missing-dir/none/x.db"))
    prepared = intake.prepare(make_mail(), LMTP)
    assert intake.decide_ahead([(prepared, [BOX])]) == [prepared]   # no tables: no decision


# --------------------------------------------------------------- the recorder, in memory

def test_still_holds_asks_the_same_questions_and_compares_every_answer():
    records = MemoryRecords()
    answers = {"k": False}
    asked = Recorder(lambda keys: answers["k"], records)
    assert asked.seen([("key", "a")]) is False
    assert asked.spam_listed("crm@firma.cz", "eva@globex.com") is False
    made = Ahead(decision=None, directory_version=7, calls=tuple(asked.calls))
    assert made.calls == (("seen", ((("key", "a"),),), False),
                          ("spam_listed", ("crm@firma.cz", "eva@globex.com"), False))
    assert still_holds(made, 7, lambda keys: answers["k"], records)
    assert not still_holds(made, 8, lambda keys: answers["k"], records)   # directory moved
    answers["k"] = True
    assert not still_holds(made, 7, lambda keys: answers["k"], records)   # a copy arrived


# --------------------------------------------------------------- the invariant, at random

# Messages that read each other: an original with links, replies to it, a forwarded copy
# (same dedup key), a resend of the same bytes, one unrelated message.
_ORIGINAL = make_mail(subject="Offer Contract:2023-015", message_id="<p1@acme.cz>", date=DATE)
POOL = (
    _ORIGINAL,
    make_mail(subject="Re: Offer", headers={"In-Reply-To": "<p1@acme.cz>"}),
    make_mail(subject="Re: Offer", sender="alice@firma.cz", to=("jan@acme.cz",),
              headers={"References": "<p1@acme.cz>"}),
    make_mail(subject="Offer Contract:2023-015", message_id="<p1-fwd@acme.cz>", date=DATE),
    _ORIGINAL,
    make_mail(subject="Unrelated", sender="eva@globex.com"),
)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("ahead") / "template.db"
    seeded(f"sqlite:///{path}").dispose()
    return path


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(len(POOL))),
       batches=st.lists(st.integers(1, 3), min_size=6, max_size=6),
       lag=st.integers(0, 3))
def test_deciding_ahead_never_changes_what_is_stored(template, tmp_path, order, batches, lag):
    """Any order, any batch sizes, decisions made up to ``lag`` batches before their own is
    written: every message's stored outcome equals the one when the writer decides all."""
    def run(decide_ahead: bool, name: str) -> list:
        path = tmp_path / f"{name}.db"
        shutil.copy(template, path)
        engine = make_engine(f"sqlite:///{path}")
        try:
            intake = Intake(engine)
            groups, rest = [], [POOL[i] for i in order]
            for size in batches:
                if rest:
                    groups.append(rest[:size])
                    rest = rest[size:]
            prepared = [[intake.prepare(raw, LMTP) for raw in g] for g in groups]
            if decide_ahead:     # batch n decided right after batch n - lag - 1 was written
                for n in range(min(lag + 1, len(prepared))):
                    prepared[n] = intake.decide_ahead([(p, [BOX]) for p in prepared[n]])
            ids = []
            for n, group in enumerate(prepared):
                ids += [d.message_id for d in commit(intake, *group)]
                later = n + lag + 1
                if decide_ahead and later < len(prepared):
                    prepared[later] = intake.decide_ahead([(p, [BOX]) for p in prepared[later]])
            return [stored(engine, i) for i in ids], dict(intake.decided)
        finally:
            engine.dispose()
    reference, _ = run(False, "writer")
    result, decided = run(True, "ahead")
    assert result == reference
    assert decided.get("writer", 0) == 0        # every message was decided ahead first


def test_a_read_ahead_leaves_no_snapshot_behind_for_the_next_write(tmp_path):
    """A SELECT left half-read keeps a WAL snapshot after its rollback (Python 3.11 no longer
    resets statements); that connection's next BEGIN IMMEDIATE, after another connection
    wrote, failed with SQLITE_BUSY_SNAPSHOT - 451s under two storage workers."""
    from sink.intake import rows
    engine = seeded(f"sqlite:///{tmp_path}/snap.db")
    other = seeded(f"sqlite:///{tmp_path}/snap.db")
    intake = Intake(engine)
    try:
        [stored_one] = commit(intake, intake.prepare(make_mail(), LMTP))
        (kind1, digest1), (kind2, digest2) = stored_one.decision.dedup_keys
        with engine.connect() as conn:
            conn.execution_options(sink_read_only=True)
            # both keys found: two rows, and first() returns after the first of them
            assert rows.SEEN_KEYS.first(conn, {"box": BOX.address, "kind1": kind1,
                                               "digest1": digest1, "kind2": kind2,
                                               "digest2": digest2})
            conn.rollback()
        Intake(other).deliver(make_mail(subject="meanwhile"), LMTP, [BOX])
        [delivery] = commit(intake, intake.prepare(make_mail(subject="after"), LMTP))
        assert delivery.status == "processed"
    finally:
        engine.dispose()
        other.dispose()
