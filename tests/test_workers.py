"""Storage worker processes (sink.storage.worker, sink.storage.pool): framing, a worker killed under load,
signals to the whole process group, and a protocol process that dies."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
import time

import pytest
import structlog
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import func, select

from sink.db import schema as t
from sink.storage.frames import Inbox, frame
from tests.conftest import RunningServer, config_for
from tests.support import (MailClient, SinkProcess, children_of, free_port, make_mail,
                           process_gone, wait_for, write_config)


def stored_message_ids(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(t.messages.c.message_id)).scalars())


# ----------------------------------------------------------------------------------- framing

def _send_in_pieces(sock: socket.socket, data: bytes, cuts: list[int]) -> None:
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        if cut > start:
            sock.sendall(data[start:cut])
            start = cut
    sock.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(st.tuples(st.integers(0, 10**9), st.binary(max_size=3000)),
                       min_size=1, max_size=8),
       cuts=st.lists(st.integers(0, 10**6), max_size=12))
def test_inbox_gives_back_every_frame_however_the_stream_is_cut(frames, cuts):
    ours, theirs = socket.socketpair()
    data = b"".join(frame((number, "header"), payload) for number, payload in frames)
    sender = threading.Thread(target=_send_in_pieces, args=(theirs, data, cuts))
    sender.start()
    inbox = Inbox(ours)
    got = []
    while (item := inbox.next(block=True)) is not Inbox.EOF:
        got.append(item)
    sender.join()
    ours.close()
    assert got == [((number, "header"), payload) for number, payload in frames]


def test_inbox_big_payload_and_not_ready_when_nothing_waits():
    ours, theirs = socket.socketpair()
    big = os.urandom(3 * 1024 * 1024 + 17)
    data = frame(("big",), big) + frame(("small",), b"x")
    inbox = Inbox(ours)
    assert inbox.next(block=False) is None       # nothing sent yet: no wait
    sender = threading.Thread(target=_send_in_pieces, args=(theirs, data, [100, 5000, 70000]))
    sender.start()
    header, payload = inbox.next(block=True)
    assert (header, payload) == (("big",), big) and type(payload) is bytes
    assert inbox.next(block=True) == (("small",), b"x")
    assert inbox.next(block=True) is Inbox.EOF
    sender.join()
    ours.close()


def test_inbox_says_when_the_other_end_went_away_inside_a_frame():
    ours, theirs = socket.socketpair()
    theirs.sendall(frame(("cut",), b"0123456789")[:-4])
    theirs.close()
    with pytest.raises(EOFError):
        Inbox(ours).next(block=True)
    ours.close()


# ------------------------------------------------------------------------ a worker that dies

def test_a_killed_worker_costs_a_resend_and_nothing_is_stored_twice(engine, start_server):
    """A worker stopped with messages in hand, then killed: exactly those sessions get 451,
    the resends are stored once each, and a new worker takes its place."""
    server = start_server(workers=2)
    pool = server.server.storage
    victim = pool.workers[0]
    old_pid = victim.proc.pid
    os.kill(old_pid, signal.SIGSTOP)
    messages = [make_mail(message_id=f"<kill-{i}@test>", subject=f"Order {i}")
                for i in range(24)]
    replies: dict[int, list[int]] = {i: [] for i in range(len(messages))}

    def session(indexes):
        client = MailClient(server.lmtp_port)
        client.hello()
        for i in indexes:
            for _ in range(20):
                code = client.send(messages[i])[-1][0]
                replies[i].append(code)
                if code == 250:
                    break
                time.sleep(0.2)
        client.close()

    threads = [threading.Thread(target=session, args=(list(range(k, 24, 6)),))
               for k in range(6)]
    for th in threads:
        th.start()
    assert wait_for(lambda: len(victim.pending) >= 1), "the stopped worker was given no mail"
    in_hand = len(victim.pending)
    with structlog.testing.capture_logs() as logged:
        os.kill(old_pid, signal.SIGKILL)
        for th in threads:
            th.join(60)
    # each 451 is in the log with its reason, though no worker wrote it (found in review)
    gone = [e for e in logged if e["event"] == "message.deferred"
            and e["reason"] == "storage worker exited"]
    assert len(gone) >= in_hand and all(e["box"] == "crm@firma.cz" for e in gone), logged
    assert all(codes[-1] == 250 for codes in replies.values()), replies
    deferred = [i for i, codes in replies.items() if 451 in codes]
    assert len(deferred) >= in_hand >= 1          # what it held was answered 451, then resent
    assert all(set(codes) <= {250, 451} for codes in replies.values())
    ids = stored_message_ids(engine)
    assert sorted(ids) == sorted(f"<kill-{i}@test>" for i in range(24))   # each exactly once
    assert wait_for(lambda: victim.alive and victim.proc.pid != old_pid)
    client = MailClient(server.lmtp_port)       # and the replacement stores mail
    client.hello()
    for i in range(4):
        assert client.send(make_mail(message_id=f"<after-{i}@test>"))[-1][0] == 250
    client.close()


def test_a_worker_that_stops_answering_is_replaced_and_its_mail_deferred(engine, start_server):
    """A worker holding a message that answers nothing for stall_timeout (here it is frozen
    with SIGSTOP: a hung database connection looks the same) is killed: the session gets 451
    instead of waiting for ever, and a new worker stores the resend."""
    server = start_server(workers=1, stall_timeout=1.0)
    worker = server.server.storage.workers[0]
    frozen = worker.proc.pid
    os.kill(frozen, signal.SIGSTOP)
    raw = make_mail(message_id="<stall@test>")
    client = MailClient(server.lmtp_port)
    client.hello()
    began = time.monotonic()
    code, text = client.send(raw)[-1]
    waited = time.monotonic() - began
    assert (code, text[:5]) == (451, "4.3.0") and 1.0 <= waited < 10, (code, text, waited)
    assert wait_for(lambda: process_gone(frozen))
    assert wait_for(lambda: worker.alive and worker.proc.pid != frozen)
    assert client.send(raw)[-1][0] == 250
    client.close()
    assert stored_message_ids(engine) == ["<stall@test>"]


def test_a_directory_import_reaches_every_worker(engine, start_server):
    """Each worker keeps its own directory snapshot; an import while they run (another
    process: `sink directory import`) must reach all of them before their next batch."""
    from sink.db.directory_store import import_directory
    server = start_server(workers=2)
    pool = server.server.storage

    def send_to_frank(tag: str, count: int) -> list[str]:
        """``count`` messages to frank@ over 4 sessions at once, so that both workers get some."""
        def session(k):
            client = MailClient(server.lmtp_port)
            client.hello()
            for i in range(k, count, 4):
                raw = make_mail(to=("frank@firma.cz",), message_id=f"<{tag}-{i}@test>",
                                subject=f"Question {tag} {i}")
                assert client.send(raw)[-1][0] == 250
            client.close()
        threads = [threading.Thread(target=session, args=(k,)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        with engine.connect() as conn:
            return list(conn.execute(select(t.messages.c.verdict).where(
                t.messages.c.message_id.like(f"<{tag}-%"))).scalars())

    assert set(send_to_frank("before", 12)) == {"NOT_PROCESSED"}     # no user Frank yet
    assert all(w.alive for w in pool.workers)
    with engine.begin() as conn:
        import_directory(conn, {"users": [{"email": "frank@firma.cz", "name": "Frank"}]})
    answered = [w.answered for w in pool.workers]
    assert set(send_to_frank("after", 40)) == {"PROCESSED"}          # every worker knows him
    assert all(w.answered > before for w, before in zip(pool.workers, answered)), \
        [w.answered for w in pool.workers]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.activities)).scalar() == 40


def test_worker_that_cannot_reach_the_database_says_why(tmp_path):
    import asyncio
    from sink.app import SinkApp
    from sink.storage.pool import WorkerPool
    cfg = config_for("postgresql+psycopg://postgres@127.0.0.1:1/none",
                     listeners=[{"protocol": "lmtp", "address": "127.0.0.1:0"}])
    server = SinkApp(cfg, WorkerPool(cfg, 1))
    with pytest.raises(RuntimeError, match="could not start: OperationalError"):
        asyncio.run(server.start())
    assert all(process_gone(w.proc.pid) for w in server.storage.workers)


# ------------------------------------------------------------------ signals and a dying parent

@pytest.fixture
def served(tmp_path, engine, db_url):
    port = free_port()
    path = tmp_path / "sink.toml"
    write_config(path, db_url, port)
    with path.open("a") as f:
        f.write('\n[storage]\nworkers = 2\n[log]\nlevel = "info"\n')
    return path, port


def test_sigterm_to_the_whole_process_group_loses_nothing(served, engine):
    """systemd's default stop signals every process of the service: the workers must not die
    with messages in hand; everything answered 250 is stored, and all processes exit 0."""
    path, port = served
    sink = SinkProcess(path, port, new_session=True)
    workers = children_of(sink.proc.pid)
    assert len(workers) == 2
    answered: list[str] = []
    stop = threading.Event()

    def session(k):
        try:
            client = MailClient(port)
            client.hello()
            i = 0
            while not stop.is_set():
                mid = f"<term-{k}-{i}@test>"
                if client.send(make_mail(message_id=mid))[-1][0] == 250:
                    answered.append(mid)
                i += 1
        except (OSError, AssertionError):
            pass                # the listener closed: the MTA would retry the rest

    threads = [threading.Thread(target=session, args=(k,)) for k in range(6)]
    for th in threads:
        th.start()
    assert wait_for(lambda: len(answered) >= 30)
    os.killpg(sink.proc.pid, signal.SIGTERM)
    assert sink.proc.wait(30) == 0
    stop.set()
    for th in threads:
        th.join(30)
    assert wait_for(lambda: all(process_gone(pid) for pid in workers), 10)
    stored = set(stored_message_ids(engine))
    assert set(answered) <= stored                # every 250 was committed
    assert len(stored) == len(stored_message_ids(engine))   # and nothing twice
    log = open(sink.log_path, encoding="utf-8").read()
    assert '"event": "server.stopped"' in log and '"worker.exited"' not in log
    sink.log.close()


def test_workers_exit_when_the_protocol_process_is_killed(served, engine):
    path, port = served
    sink = SinkProcess(path, port)
    workers = children_of(sink.proc.pid)
    assert len(workers) == 2
    client = MailClient(port)
    client.hello()
    assert client.send(make_mail(message_id="<before-kill@test>"))[-1][0] == 250
    client.abort()
    sink.kill()
    assert wait_for(lambda: all(process_gone(pid) for pid in workers), 10), workers
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.messages)).scalar() == 1


def test_two_workers_deciding_ahead_record_each_copy_once(engine, start_server):
    """Forwarded copies of one message (same date, sender, recipients, subject: one dedup
    key) sent at the same moment over different sessions land in both workers - on SQLite each
    deciding ahead while the other commits, on PostgreSQL each deciding in its own transaction
    while the other's is open: per key exactly one PROCESSED, the rest DUPLICATE."""
    server = start_server(workers=2)
    pairs = 24
    date = "Mon, 02 Nov 2026 10:00:00 +0000"

    def session(copy: int):
        client = MailClient(server.lmtp_port)
        client.hello()
        for i in range(pairs):
            raw = make_mail(subject=f"Offer {i}", date=date, body=f"copy {copy}\n",
                            message_id=f"<offer-{i}-{copy}@test>")
            assert client.send(raw)[-1][0] == 250
        client.close()
    threads = [threading.Thread(target=session, args=(c,)) for c in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    with engine.connect() as conn:
        rows = conn.execute(select(t.messages.c.subject, t.messages.c.verdict)).all()
    assert len(rows) == 3 * pairs
    for i in range(pairs):
        verdicts = sorted(v for s, v in rows if s == f"Offer {i}")
        assert verdicts == ["DUPLICATE", "DUPLICATE", "PROCESSED"], (i, verdicts)
    answered = [w.answered for w in server.server.storage.workers]
    assert all(answered), answered            # both workers took part


def test_the_default_number_of_workers_follows_the_cores():
    from sink.storage import default_workers
    assert [default_workers("sqlite", n) for n in (1, 2, 4, 8)] == [1, 2, 4, 4]
    assert [default_workers("postgresql", n) for n in (1, 2, 4, 8)] == [2, 2, 4, 4]


def test_a_worker_waiting_for_its_write_turn_takes_what_arrives_into_its_batch(tmp_path):
    """SQLite workers take turns on one write lock. While another worker holds it, a worker
    with its batch decided prepares the messages arriving meanwhile and commits them in the
    same transaction (one commit for more messages); each is answered stored, once."""
    import fcntl
    from sqlalchemy import event
    from sink.intake import Envelope, Intake
    from sink.storage.worker import WriteTurn, _commit
    from tests.conftest import seeded
    db_url = f"sqlite:///{tmp_path}/sink.db"       # only SQLite has write turns
    engine = seeded(db_url)
    intake = Intake(engine)
    boxes = {"crm@firma.cz": config_for(db_url).boxes[0]}
    turn = WriteTurn.for_database(engine)
    assert turn.fd is not None                       # SQLite: turns on a file beside it
    other = os.open(engine.url.database + "-writeturn", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)                # the other worker is writing

    def job(n: int):
        envelope = Envelope("lmtp", "jan.novak@firma.cz", ("crm@firma.cz",))
        raw = make_mail(subject=f"waiting {n}", message_id=f"<wait-{n}@firma.cz>")
        return (n, envelope, ("crm@firma.cz",), None), raw

    ours, theirs = socket.socketpair()
    inbox = Inbox(ours)
    commits = []

    def count_commit(conn):
        commits.append(1)
    event.listen(engine, "commit", count_commit)

    def arrive_then_release():
        time.sleep(0.3)
        for n in (2, 3, 4):
            (head, raw) = job(n)
            theirs.sendall(frame(head, raw))
        time.sleep(0.5)                               # taken while the turn is still held
        fcntl.flock(other, fcntl.LOCK_UN)
    helper = threading.Thread(target=arrive_then_release)
    helper.start()
    try:
        done, prepared, outcomes, closing = _commit(intake, turn, [job(1)], boxes,
                                                    ahead=True, inbox=inbox)
    finally:
        helper.join()
        event.remove(engine, "commit", count_commit)
        engine.dispose()
        os.close(other)
        ours.close()
        theirs.close()
    assert sorted(job_id for job_id, _ in done) == [1, 2, 3, 4]
    assert all(result[0][0] == "stored" for _, result in done)
    assert len(commits) == 1 and len(prepared) == 4 and not closing
    assert sorted(stored_message_ids(engine)) == [f"<wait-{n}@firma.cz>" for n in (1, 2, 3, 4)]
    assert intake.decided["ahead"] == 4               # all decided before the turn


def test_workers_decide_ahead_only_where_they_take_turns_to_write(engine, db_url, tmp_path):
    """SQLite has one writer: two workers decide before their write turn and the writer checks
    the decision. PostgreSQL has no turns, and deciding ahead there only cost a second
    transaction's reads: each worker decides in its own write transaction (the
    ``worker.stopped`` line of each says how its messages were decided)."""
    import json
    log_file = tmp_path / "sink.json"
    cfg = config_for(db_url, listeners=[{"protocol": "lmtp", "address": "127.0.0.1:0"}])
    cfg = dataclasses.replace(cfg, log=dataclasses.replace(cfg.log, level="info",
                                                           file=str(log_file)))
    server = RunningServer(cfg, workers=2)

    def session(n: int):
        client = MailClient(server.lmtp_port)
        client.hello()
        for i in range(8):
            raw = make_mail(subject=f"Offer {n}-{i}", message_id=f"<ahead-{n}-{i}@test>")
            assert client.send(raw)[-1][0] == 250
        client.close()
    try:
        threads = [threading.Thread(target=session, args=(n,)) for n in range(3)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    finally:
        server.stop()
    assert wait_for(lambda: log_file.read_text().count('"worker.stopped"') == 2, 10)
    stopped = [line for line in map(json.loads, log_file.read_text().splitlines())
               if line.get("event") == "worker.stopped"]
    ahead = sum(s["decided_ahead"] + s["decided_again"] for s in stopped)
    in_writer = sum(s["decided_in_writer"] for s in stopped)
    assert sum(s["messages"] for s in stopped) == ahead + in_writer == 24
    assert (ahead, in_writer) == ((24, 0) if engine.dialect.name == "sqlite" else (0, 24))
