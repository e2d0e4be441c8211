"""1. kill -9 under load: every acknowledged message is stored and processed exactly once.

A load client sends thousands of unique messages over many parallel LMTP sessions to a real
`sink serve` process and records every 250. The process is killed with SIGKILL at random
moments and restarted on the same port; the client sends again whatever got no reply (a 4xx or
a lost connection), as an MTA would. Afterwards every message is stored once, with its exact
bytes, processed once (its one activity exists once), and every acknowledged one is among them.
"""

from __future__ import annotations

import os
import random
import time
import uuid

import pytest

from tests.conftest import seeded
from tests.reliability.load import LoadClient, audit
from tests.support import SinkProcess, free_port, make_mail, require, write_config

pytestmark = pytest.mark.slow

SESSIONS = 16
KILLS = 5


def build_messages(count: int, tag: str) -> tuple[list[bytes], list[str]]:
    rng = random.Random(tag)
    ids = [f"<{tag}-{i}@load.test>" for i in range(count)]
    messages = [make_mail(subject=f"{tag} message {i}", message_id=mid,
                          body=f"Hello {i},\n" + "lorem ipsum dolor\n" * rng.randint(1, 200))
                for i, mid in enumerate(ids)]
    return messages, ids


def run_kill9(url: str, tmp_path, figures, count: int) -> None:
    engine = seeded(url)
    seed = int(os.environ.get("SINK_KILL9_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    messages, ids = build_messages(count, f"kill9-{uuid.uuid4().hex[:6]}")
    port = free_port()
    config = tmp_path / "sink.toml"
    write_config(config, url, port)
    sink = SinkProcess(config, port)
    load = LoadClient(port, messages, SESSIONS)
    kills = []
    # random moments, spread over the load whatever the server's speed: when a random share
    # of the messages has been acknowledged, plus a random delay
    moments = sorted(rng.uniform(0.05, 0.8) for _ in range(KILLS))
    try:
        load.start()
        for share in moments:
            deadline = time.monotonic() + 120
            while len(load.acks) < share * count and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.2))
            assert not load.done(), "the load ended before every kill"
            kills.append({"acknowledged": len(load.acks), "in_flight": len(load.in_flight)})
            sink.kill()
            sink = SinkProcess(config, port, log_path=sink.log_path)
        finished = load.wait(timeout=300)
    finally:
        load.stop.set()
        sink.stop()
    result = audit(engine, messages, ids)
    engine.dispose()
    figures(**load.figures(), kills=len(kills), seed=seed,
            in_flight_at_kills=[k["in_flight"] for k in kills],
            acknowledged_at_kills=[k["acknowledged"] for k in kills],
            lost=len(result["lost"]), duplicated=len(result["duplicated"]),
            damaged=len(result["damaged"]), unprocessed=len(result["unprocessed"]),
            records_not_once=len(result["records_not_once"]))
    assert finished, f"not every message was acknowledged: {load.figures()}"
    assert len(kills) == KILLS
    # the kills hit sessions with a message in flight, not an idle server
    assert sum(k["in_flight"] for k in kills) > 0
    assert load.refusals == [], load.refusals[:5]
    assert set(load.codes) <= {250, 451, 452}, load.codes
    assert result["lost"] == [] and result["duplicated"] == [] and result["damaged"] == []
    assert result["unprocessed"] == [], result["unprocessed"][:5]
    assert result["records_not_once"] == [], result["records_not_once"][:5]
    assert result["unexpected_rows"] == []
    # a resend after a lost reply was recognised: answered "already stored", not stored again
    assert load.no_reply > 0


def test_kill9_under_load_sqlite(tmp_path, figures):
    run_kill9(f"sqlite:///{tmp_path}/sink.db", tmp_path, figures, count=5000)


@pytest.mark.postgres
def test_kill9_under_load_postgresql(tmp_path, figures, pg_available):
    require(pg_available, "PostgreSQL at 127.0.0.1:5432")
    from tests.conftest import create_pg_database, drop_pg_database
    name = f"sink_kill9_{uuid.uuid4().hex[:10]}"
    url = create_pg_database(name)
    try:
        run_kill9(url, tmp_path, figures, count=3000)
    finally:
        drop_pg_database(name)
