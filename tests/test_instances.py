"""Real `sink serve` processes: several instances on one PostgreSQL database, and SIGTERM."""

from __future__ import annotations


import pytest
from sqlalchemy import func, select

from sink.db import schema as t
from sink.db.engine import make_engine
from sink.db.migrate import upgrade
from tests.support import (MailClient, SinkProcess, free_port, make_mail, side_by_side,
                           write_config)


@pytest.mark.postgres
def test_two_instances_on_one_postgres_record_a_message_once(pg_engine, tmp_path):
    url = pg_engine.url.render_as_string(hide_password=False)
    sinks = []
    try:
        for i in range(2):
            port = free_port()
            write_config(tmp_path / f"sink{i}.toml", url, port)
            sinks.append(SinkProcess(tmp_path / f"sink{i}.toml", port))
        rounds = 15
        for n in range(rounds):
            raw = make_mail(message_id=f"<twice-{n}@test>", subject=f"round {n}")
            # the first instance gets the message, the second a forwarded copy of it
            copies = [raw, b"X-Forwarded-Copy: yes\r\n" + raw]
            clients = [MailClient(s.port) for s in sinks]
            for c in clients:
                c.hello()
            replies = [None, None]

            def send(i):
                replies[i] = clients[i].send(copies[i])[-1]
            side_by_side(send, range(2), timeout=30)
            for c in clients:
                c.close()
            assert [r[0] for r in replies] == [250, 250], replies
        with pg_engine.connect() as conn:
            verdicts = conn.execute(select(t.messages.c.verdict, func.count())
                                    .group_by(t.messages.c.verdict)).all()
            activities = conn.execute(select(func.count()).select_from(t.activities)).scalar()
        assert dict(verdicts) == {"PROCESSED": rounds, "DUPLICATE": rounds}
        assert activities == rounds
    finally:
        for s in sinks:
            s.stop()


def test_sigterm_stops_serve_cleanly_after_committing(tmp_path):
    url = f"sqlite:///{tmp_path}/sink.db"
    engine = make_engine(url)
    upgrade(engine)
    port = free_port()
    write_config(tmp_path / "sink.toml", url, port)
    sink = SinkProcess(tmp_path / "sink.toml", port)
    try:
        client = MailClient(port)
        client.hello()
        assert client.send(make_mail())[-1][0] == 250
        # an idle session stays open while we stop the server
    finally:
        status = sink.stop()
    assert status == 0, sink.log_tail()
    log = sink.log_tail(100)
    assert '"event": "server.stopped"' in log and '"event": "durability.ok"' in log
    # uvloop is a dependency on Linux (pyproject.toml): serve runs on it, not asyncio's loop
    assert '"loop": "uvloop"' in log and '"event": "server.event_loop"' in log
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.messages)).scalar() == 1


def test_serve_refuses_a_database_without_schema(tmp_path):
    import subprocess
    import sys
    port = free_port()
    write_config(tmp_path / "sink.toml", f"sqlite:///{tmp_path}/none.db", port)
    result = subprocess.run([sys.executable, "-m", "sink", "--config",
                             str(tmp_path / "sink.toml"), "serve"], capture_output=True,
                            timeout=60)
    assert result.returncode == 2 and b"sink db upgrade" in result.stderr
