"""9. Durability settings asserted: `sink serve` refuses to run on storage that could lose an
acknowledged message (SQLite not WAL + synchronous=FULL on every connection, PostgreSQL with
``fsync`` or ``synchronous_commit`` off). The unit checks are in tests/test_storage.py; these run
the real command against real, misconfigured servers."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import create_engine, text

from sink.db.engine import make_engine
from sink.db.migrate import upgrade
from tests.support import SinkProcess, free_port, require, write_config


def serve(tmp_path, url: str) -> subprocess.CompletedProcess:
    write_config(tmp_path / "sink.toml", url, free_port())
    return subprocess.run([sys.executable, "-m", "sink", "--config", str(tmp_path / "sink.toml"),
                           "serve"], capture_output=True, timeout=60)


@pytest.mark.postgres
def test_serve_refuses_postgres_with_fsync_off(tmp_path, private_pg):
    cluster = private_pg(settings={"fsync": "off"})
    url = cluster.create_database("sink")
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    result = serve(tmp_path, url)
    assert result.returncode != 0
    assert b"refusing to start" in result.stderr and b"fsync" in result.stderr, result.stderr
    assert b'"durability.refused"' in result.stderr          # and the log says why


@pytest.mark.postgres
def test_serve_refuses_a_database_with_synchronous_commit_off(tmp_path, pg_available):
    require(pg_available, "PostgreSQL at 127.0.0.1:5432")
    from tests.conftest import PG_ADMIN_URL, create_pg_database, drop_pg_database
    name = f"sink_async_{uuid.uuid4().hex[:10]}"
    url = create_pg_database(name)
    try:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        # set for this database only: every new session of the sink gets it
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
        admin.dispose()
        result = serve(tmp_path, url)
    finally:
        drop_pg_database(name)
    assert result.returncode != 0
    assert b"refusing to start" in result.stderr, result.stderr
    assert b"synchronous_commit" in result.stderr


def test_every_sqlite_connection_is_wal_and_synchronous_full(tmp_path):
    url = f"sqlite:///{tmp_path}/sink.db"
    engine = make_engine(url, pool_size=4)
    upgrade(engine)
    # several connections open at once: the settings are per connection, each must have them
    conns = [engine.raw_connection() for _ in range(4)]
    try:
        for conn in conns:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2     # FULL
    finally:
        for conn in conns:
            conn.close()
    engine.dispose()
    # and the running service reports what it checked
    port = free_port()
    write_config(tmp_path / "sink.toml", url, port)
    sink = SinkProcess(tmp_path / "sink.toml", port)
    sink.stop()
    events = [json.loads(line) for line in open(sink.log_path, encoding="utf-8")
              if line.startswith("{")]
    [ok] = [e for e in events if e.get("event") == "durability.ok"]
    assert (ok["journal_mode"], ok["synchronous"]) == ("wal", "FULL")
