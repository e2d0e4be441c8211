"""Group commit (sink.storage.batching): many messages, one transaction, and every Intake guarantee
per message - on SQLite and PostgreSQL.

A *gate* in the rules holds the writer inside its first batch until the test has queued the
messages it wants in the next one, so the batches are exactly what each test says.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event, func, select
from sqlalchemy import exc as sa_exc

from sink.storage.batching import GroupCommitter
from sink.config import parse_config
from sink.db import schema as t
from sink.errors import TransientStorageError
from sink.intake import Delivery, Envelope, Intake
from sink.pipeline import evaluate
from tests.support import MailClient, make_mail

BOX = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
LMTP = Envelope("lmtp", "mta@firma.cz", ("crm@firma.cz",))


class Gate:
    """Rules that stop at the message with subject 'gate' until opened."""

    def __init__(self, extra=None):
        self.reached = threading.Event()
        self.opened = threading.Event()
        self.extra = extra

    def rules(self, msg, box, directory, seen, records):
        if msg.subject == "gate":
            self.reached.set()
            assert self.opened.wait(30), "gate never opened"
        if self.extra:
            self.extra(msg)
        return evaluate(msg, box, directory, seen, records)


class Commits:
    def __init__(self, engine):
        self.count = 0
        self.engine = engine
        event.listen(engine, "commit", self._on_commit)

    def _on_commit(self, conn):
        self.count += 1

    def close(self):
        event.remove(self.engine, "commit", self._on_commit)


@pytest.fixture
def batch(engine):
    """``batch(extra=None, writers=1)`` -> (committer, gate); closed after the test."""
    made = []

    def make(extra=None, writers=1, executor=None):
        gate = Gate(extra)
        options = {"executor": executor} if executor else {}
        committer = GroupCommitter(Intake(engine, rules=gate.rules, **options), writers=writers)
        made.append((committer, gate))
        return committer, gate
    yield make
    for committer, gate in made:
        gate.opened.set()
        committer.close(timeout=30)


def held_batch(committer, gate, raws):
    """Submit the gate message, wait until the writer holds it, then queue ``raws``: they
    form the next batch, all at once. Returns (gate future, futures of raws)."""
    first = committer.submit(make_mail(subject="gate"), LMTP, [BOX])
    assert gate.reached.wait(30)
    futures = [committer.submit(raw, LMTP, [BOX]) for raw in raws]
    _wait_prepared(committer, len(raws))
    gate.opened.set()
    return first, futures


def _wait_prepared(committer, n, timeout=30.0):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with committer._lock:
            if len(committer._ready) >= n:
                return
        time.sleep(0.01)
    raise AssertionError("messages were not prepared in time")


def rows(engine, *columns, where=None):
    with engine.connect() as conn:
        query = select(*columns).order_by(t.messages.c.id)
        if where is not None:
            query = query.where(where)
        return conn.execute(query).all()


def count(engine, table):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


# ------------------------------------------------------------------------------------- tests

def test_a_burst_shares_one_commit_and_each_message_is_stored(engine, batch):
    committer, gate = batch()
    commits = Commits(engine)
    try:
        raws = [make_mail(subject=f"Offer {i}", to=("alice@firma.cz", "bob@firma.cz"))
                for i in range(40)]
        first, futures = held_batch(committer, gate, raws)
        outcomes = [f.result(60) for f in [first, *futures]]
    finally:
        commits.close()
    assert commits.count == 2                  # the gate message, then all 40 at once
    deliveries = [o for [o] in outcomes]
    assert all(isinstance(d, Delivery) and d.status == "processed" for d in deliveries)
    assert len({d.message_id for d in deliveries}) == 41
    assert count(engine, t.messages) == 41 and count(engine, t.raw_messages) == 41
    assert count(engine, t.activities) == 1 + 40 * 2


def test_identical_bytes_twice_in_one_batch_are_stored_once(engine, batch):
    committer, gate = batch()
    raw = make_mail(subject="Same bytes")
    _, futures = held_batch(committer, gate, [raw, make_mail(subject="Other"), raw])
    [[a], [b], [c]] = [f.result(60) for f in futures]
    assert not a.already_stored and c.already_stored and c.message_id == a.message_id
    assert b.message_id != a.message_id
    assert len(rows(engine, t.messages.c.id, where=t.messages.c.subject == "Same bytes")) == 1


def test_one_dedup_key_twice_in_one_batch_is_processed_once(engine, batch):
    committer, gate = batch()
    one = make_mail(subject="Forwarded", message_id="<copy@test>")
    two = make_mail(subject="Forwarded", message_id="<copy@test>",
                    headers={"X-Forwarded-By": "bob@firma.cz"})
    assert one != two
    _, futures = held_batch(committer, gate, [one, two])
    [[a], [b]] = [f.result(60) for f in futures]
    assert (a.verdict, b.verdict) == ("PROCESSED", "DUPLICATE")
    assert count(engine, t.activities) == 2    # the gate message's and the first copy's


def test_a_rule_that_raises_fails_only_its_message_and_is_answered(engine, batch):
    def poison(msg):
        if "poison" in msg.subject:
            raise ZeroDivisionError("a rule divided by zero")
    committer, gate = batch(poison)
    raws = [make_mail(subject="ok 1"), make_mail(subject="poison pill"), make_mail(subject="ok 2")]
    _, futures = held_batch(committer, gate, raws)
    [[a], [b], [c]] = [f.result(60) for f in futures]
    assert (a.status, b.status, c.status) == ("processed", "failed", "processed")
    assert "ZeroDivisionError" in b.error
    stored = rows(engine, t.messages.c.subject, t.messages.c.status)
    assert [(r.subject, r.status) for r in stored][1:] == [
        ("ok 1", "processed"), ("poison pill", "failed"), ("ok 2", "processed")]
    assert count(engine, t.raw_messages) == 4


def test_a_transient_failure_fails_the_whole_batch_and_commits_nothing(engine, batch):
    from sink.executor import apply

    def apply_then_lose_database(conn, message_id, decision, directory):
        stored = apply(conn, message_id, decision, directory)
        if any(a.subject == "boom" for a in decision.activities):
            raise sa_exc.OperationalError("INSERT", {}, Exception("server closed the connection"))
        return stored
    committer, gate = batch(executor=apply_then_lose_database)
    raws = [make_mail(subject="before"), make_mail(subject="boom"), make_mail(subject="after")]
    first, futures = held_batch(committer, gate, raws)
    assert isinstance(first.result(60)[0], Delivery)
    for future in futures:
        with pytest.raises(TransientStorageError):
            future.result(60)
    assert [r.subject for r in rows(engine, t.messages.c.subject)] == ["gate"]
    assert count(engine, t.raw_messages) == 1 and count(engine, t.activities) == 1
    # the writer goes on with the next batch
    [later] = committer.deliver(make_mail(subject="later"), LMTP, [BOX])
    assert later.status == "processed"


def test_an_error_of_our_own_fails_only_its_message(engine, batch, monkeypatch):
    committer, gate = batch()
    real_store = committer.intake.store

    def store(conn, prepared, box):
        if prepared.parsed.subject == "bug":
            raise RuntimeError("bug in the sink")
        return real_store(conn, prepared, box)
    monkeypatch.setattr(committer.intake, "store", store)
    raws = [make_mail(subject="fine"), make_mail(subject="bug"), make_mail(subject="fine too")]
    _, futures = held_batch(committer, gate, raws)
    [[a], [b], [c]] = [f.result(60) for f in futures]
    assert isinstance(a, Delivery) and isinstance(c, Delivery)
    assert isinstance(b, RuntimeError)
    assert [r.subject for r in rows(engine, t.messages.c.subject)] == ["gate", "fine",
                                                                       "fine too"]


def test_concurrent_writers_racing_on_one_dedup_key_process_it_once(engine, batch):
    committer, gate = batch(writers=4)
    gate.opened.set()
    raws = [make_mail(subject="Race", message_id="<race@test>",
                      headers={"X-Copy": str(i)}) for i in range(12)]
    raws += raws[:4]                           # and some identical resends
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda r: committer.submit(r, LMTP, [BOX]).result(60), raws))
    deliveries = [o for [o] in outcomes]
    assert all(isinstance(d, Delivery) for d in deliveries)
    fresh = [d for d in deliveries if not d.already_stored]
    assert sorted(d.verdict for d in fresh) == ["DUPLICATE"] * 11 + ["PROCESSED"]
    assert count(engine, t.messages) == 12 and count(engine, t.activities) == 1


def test_many_sessions_over_lmtp_are_each_answered_after_their_commit(engine, start_server):
    server = start_server()

    def session(n):
        client = MailClient(server.lmtp_port)
        client.hello()
        replies = [client.send(make_mail(subject=f"s{n} m{i}"),
                               rcpts=("crm@firma.cz",))[-1] for i in range(6)]
        client.close()
        return replies
    with ThreadPoolExecutor(16) as pool:
        replies = [r for rs in pool.map(session, range(16)) for r in rs]
    assert all(code == 250 and "stored as #" in text for code, text in replies)
    assert count(engine, t.messages) == 96 and count(engine, t.activities) == 96
    ids = {text.rsplit("#", 1)[1] for _, text in replies}
    assert len(ids) == 96


@pytest.mark.parametrize("together", [True, False])
def test_a_task_made_by_mail_is_linked_the_same_in_one_batch_or_two(engine, batch, together):
    """A troubleshooting mail creates task 4711; a reply naming "Task:4711" right behind it
    links to it whether both share one batch (one transaction) or not - and creating the task
    does not change the directory's version (which made every worker reload the directory)."""
    from sink.db.directory_store import directory_version
    from tests.side_effect_mail import troubleshooting_mail
    with engine.connect() as conn:
        version = directory_version(conn)
    reply = make_mail(sender="alice@firma.cz", to=("jan@acme.cz",), subject="Re: Task:4711")
    committer, gate = batch()
    if together:        # one batch, in this order (prepared one after the other)
        committer.submit(make_mail(subject="gate"), LMTP, [BOX])
        assert gate.reached.wait(30)
        futures = []
        for n, raw in enumerate((troubleshooting_mail(), reply), 1):
            futures.append(committer.submit(raw, LMTP, [BOX]))
            _wait_prepared(committer, n)
        gate.opened.set()
        created, replied = (f.result(60)[0] for f in futures)
    else:
        gate.opened.set()
        [created] = committer.deliver(troubleshooting_mail(), LMTP, [BOX])
        [replied] = committer.deliver(reply, LMTP, [BOX])
    assert created.verdict == "TASK_CREATED"
    [activity] = replied.decision.activities
    assert activity.task == "4711"
    with engine.connect() as conn:
        task_id = conn.execute(select(t.tasks.c.id).where(t.tasks.c.number == "4711")).scalar()
        linked = conn.execute(select(t.activities.c.task_id).where(
            t.activities.c.message_id == replied.message_id)).scalar()
        assert directory_version(conn) == version
    assert linked == task_id is not None
