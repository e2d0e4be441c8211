"""Sources inside a real `sink serve` process against a real Dovecot: IDLE latency, kill -9 in
the middle of a poll, Dovecot stopped during a poll, two instances sharing one PostgreSQL."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from sink.db import schema as t
from tests.sources_support import (PASSWORD, USER, imap_source, message_count, pop3_source,
                                   stored_raws, write_config)
from tests.support import SinkProcess, free_port, make_mail, require, wait_for

pytestmark = pytest.mark.slow


def events(sink: SinkProcess, name: str) -> list[dict]:
    found = []
    with open(sink.log_path, "rb") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                found.append(event)
    return found


def distinct_stored(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count(func.distinct(t.messages.c.sha256)))).scalar()


def test_idle_takes_a_dropped_message_within_seconds(dovecot, engine, db_url, tmp_path, capsys):
    dovecot.drop(USER, make_mail(subject="before start"))
    port = free_port()
    cfg = write_config(tmp_path / "sink.toml", db_url, [imap_source(
        dovecot, tmp_path / "pw", interval=300, idle=True)], listen_port=port, log_level="info")
    sink = SinkProcess(cfg, port)
    try:
        assert wait_for(lambda: message_count(engine) == 1, 20), sink.log_tail()
        latencies = []
        for i in range(5):
            time.sleep(0.5)
            dropped = time.monotonic()
            dovecot.drop(USER, make_mail(subject=f"idle {i}"))
            assert wait_for(lambda: message_count(engine) == i + 2, 5), sink.log_tail()
            latencies.append(time.monotonic() - dropped)
        assert dovecot.files(USER) == [] or wait_for(lambda: dovecot.files(USER) == [], 5)
        # One pass per IDLE wake-up. A pass logs 'source.polled' after its EXPUNGE, so the
        # maildir can be empty a moment before the line of the last pass is written.
        assert wait_for(lambda: len(events(sink, "source.polled")) >= 6, 5), \
            [e.get("seconds") for e in events(sink, "source.polled")]
    finally:
        assert sink.stop() == 0
    with capsys.disabled():
        print(f"\n[imap idle] drop -> stored: max {max(latencies):.2f} s, "
              f"mean {sum(latencies) / len(latencies):.2f} s ({db_url.split(':')[0]})")


@pytest.mark.parametrize("kind", ["imap", "pop3"])
def test_kill_9_in_the_middle_of_a_poll_loses_nothing_and_stores_nothing_twice(
        dovecot, engine, db_url, tmp_path, kind, capsys):
    sent = [make_mail(subject=f"{kind} {i}", body=f"n {i}\n") for i in range(1500)]
    for raw in sent:
        dovecot.drop(USER, raw)
    port = free_port()
    make = imap_source if kind == "imap" else pop3_source
    cfg = write_config(tmp_path / "sink.toml", db_url, [make(
        dovecot, tmp_path / "pw", interval=1, **({"idle": False} if kind == "imap" else {}))],
        listen_port=port, log_level="info")
    started = time.monotonic()
    sink = SinkProcess(cfg, port, new_session=True)
    try:
        assert wait_for(lambda: message_count(engine) >= 100, 60), sink.log_tail()
    finally:
        sink.kill()
    at_kill = message_count(engine)
    assert at_kill < len(sent), "the pass finished before the kill: no mid-poll crash tested"
    sink = SinkProcess(cfg, port, new_session=True)
    try:
        assert wait_for(lambda: dovecot.files(USER) == [], 120), sink.log_tail()
        seconds = time.monotonic() - started
        assert wait_for(lambda: message_count(engine) == len(sent), 10)
    finally:
        assert sink.stop() == 0
    assert distinct_stored(engine) == len(sent) == message_count(engine)
    assert sorted(stored_raws(engine, kind)) == sorted(sent)
    with capsys.disabled():
        print(f"\n[{kind} kill -9] killed at {at_kill}/{len(sent)} stored; "
              f"{len(sent)} in {seconds:.1f} s incl. restart ({db_url.split(':')[0]})")


def test_dovecot_stopped_during_a_poll_backs_off_then_recovers(dovecot, engine, db_url,
                                                               tmp_path):
    sent = [make_mail(subject=f"down {i}") for i in range(1000)]
    for raw in sent:
        dovecot.drop(USER, raw)
    port = free_port()
    cfg = write_config(tmp_path / "sink.toml", db_url, [imap_source(
        dovecot, tmp_path / "pw", interval=8, idle=False)], listen_port=port, log_level="info")
    sink = SinkProcess(cfg, port)
    try:
        assert wait_for(lambda: message_count(engine) >= 50, 60), sink.log_tail()
        dovecot.stop()
        assert wait_for(lambda: len(events(sink, "source.failed")) >= 3, 30), sink.log_tail()
        failed = events(sink, "source.failed")
        retries = [e["retry_in"] for e in failed]
        assert retries[:3] == [2.0, 4.0, 8.0], retries         # doubling, capped at interval
        assert all("Password" not in json.dumps(e) and PASSWORD not in json.dumps(e)
                   for e in failed)
        late = make_mail(subject="while down")
        dovecot.drop(USER, late)
        dovecot.start()
        assert wait_for(lambda: message_count(engine) == len(sent) + 1, 60), sink.log_tail()
        assert wait_for(lambda: dovecot.files(USER) == [], 10)
    finally:
        assert sink.stop() == 0
    assert distinct_stored(engine) == len(sent) + 1


def test_two_instances_share_a_source_one_at_a_time_and_take_over_after_kill_9(
        dovecot, tmp_path, pg_available):
    require(pg_available, "PostgreSQL at 127.0.0.1:5432")
    from tests.conftest import create_pg_database, drop_pg_database, seeded
    name = f"sink_test_lease_{int(time.time() * 1000) % 10**9}"
    url = create_pg_database(name)
    engine = seeded(url)
    sinks = []
    try:
        ports = [free_port(), free_port()]
        source = imap_source(dovecot, tmp_path / "pw", interval=2, idle=False)
        for i, port in enumerate(ports):
            cfg = write_config(tmp_path / f"sink{i}.toml", url, [source], listen_port=port,
                               log_level="info")
            sinks.append(SinkProcess(cfg, port, new_session=True))
        for i in range(20):
            dovecot.drop(USER, make_mail(subject=f"shared {i}"))
        assert wait_for(lambda: message_count(engine) == 20, 30)
        time.sleep(3)
        polled = [len(events(s, "source.polled")) for s in sinks]
        assert sorted(polled)[0] == 0 and sorted(polled)[1] >= 2, polled   # one works it
        worker = polled.index(max(polled))
        other = sinks[1 - worker]
        assert events(other, "source.leased_elsewhere")
        sinks[worker].kill()
        for i in range(20):
            dovecot.drop(USER, make_mail(subject=f"after kill {i}"))
        # the other instance takes over within one interval (plus its pass)
        assert wait_for(lambda: message_count(engine) == 40, 15), other.log_tail()
        assert wait_for(lambda: events(other, "source.polled"), 10)    # logged after the pass
        assert distinct_stored(engine) == 40
        assert wait_for(lambda: dovecot.files(USER) == [], 10)
    finally:
        for sink in sinks:
            if sink.proc.poll() is None:
                sink.stop()
        engine.dispose()
        drop_pg_database(name)


def test_emldir_inside_serve_takes_files_renamed_in_and_stops_cleanly(engine, db_url,
                                                                       tmp_path):
    import os
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()
    cfg = write_config(tmp_path / "sink.toml", db_url, [
        {"kind": "emldir", "box": "crm@firma.cz", "path": str(spool), "interval": 0.5}],
        listen_port=port, log_level="info")
    sink = SinkProcess(cfg, port)
    try:
        sent = []
        for i in range(50):
            raw = make_mail(subject=f"dropped {i}")
            (tmp_path / f"{i}.tmp").write_bytes(raw)
            sent.append(raw)
        time.sleep(0.05)
        for i in range(50):
            os.rename(tmp_path / f"{i}.tmp", spool / f"{i}.eml")
        assert wait_for(lambda: message_count(engine) == 50, 15), sink.log_tail()
        assert wait_for(lambda: list(spool.iterdir()) == [], 5)
    finally:
        assert sink.stop() == 0
    assert sorted(stored_raws(engine, "emldir")) == sorted(sent)
