"""2. Database outage: PostgreSQL stops in the middle of a load.

A private PostgreSQL cluster is crashed (``pg_ctl stop -m immediate``: no checkpoint, crash
recovery at the next start) while a patient MTA-like client sends over parallel LMTP sessions
to a real `sink serve`. While the database is away the sink answers only 4xx — never a 5xx, and
never a 250 for anything not committed; after it returns the deferred messages are sent again
and every message is stored and processed exactly once.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from sink.db.engine import make_engine
from tests.conftest import seeded
from tests.reliability.load import LoadClient, audit
from tests.reliability.test_kill9 import build_messages
from tests.support import SinkProcess, free_port, write_config

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

OUTAGE_SECONDS = 4.0


def test_postgres_outage_under_load_defers_and_loses_nothing(tmp_path, private_pg, figures):
    cluster = private_pg()
    url = cluster.create_database("sink")
    engine = seeded(url)
    messages, ids = build_messages(1500, f"outage-{uuid.uuid4().hex[:6]}")
    port = free_port()
    write_config(tmp_path / "sink.toml", url, port)
    sink = SinkProcess(tmp_path / "sink.toml", port)
    load = LoadClient(port, messages, 8, backoff=0.1)
    timeline = {}

    def outage():
        while len(load.acks) < 300 and not load.stop.is_set():
            time.sleep(0.02)
        timeline["acked_before"] = len(load.acks)
        timeline["codes_before"] = dict(load.codes)
        cluster.stop("immediate")
        started = time.monotonic()
        time.sleep(OUTAGE_SECONDS)
        timeline["acked_during"] = len(load.acks) - timeline["acked_before"]
        timeline["deferred_during"] = sum(v for k, v in load.codes.items() if 400 <= k < 500)
        cluster.start()
        timeline["outage_seconds"] = round(time.monotonic() - started, 2)
    try:
        load.start()
        breaker = threading.Thread(target=outage)
        breaker.start()
        breaker.join(120)
        finished = load.wait(timeout=180)
        alive = sink.proc.poll() is None
    finally:
        load.stop.set()
        sink.stop()
    engine.dispose()        # its connections died with the server; a fresh pool reads back
    engine = make_engine(url)
    result = audit(engine, messages, ids)
    engine.dispose()
    figures(**load.figures(), **timeline, lost=len(result["lost"]),
            duplicated=len(result["duplicated"]), damaged=len(result["damaged"]),
            unprocessed=len(result["unprocessed"]))
    assert alive, "sink serve died during the outage:\n" + sink.log_tail()
    assert finished, f"not every message was acknowledged after the outage: {load.figures()}"
    # the outage was real: messages were deferred while the database was down ...
    assert timeline["deferred_during"] > 0, timeline
    # ... with 4xx only: no 5xx for a message, ever
    assert load.refusals == [], load.refusals[:5]
    assert set(load.codes) <= {250, 451, 452}, load.codes
    assert load.codes[451] + load.codes[452] >= timeline["deferred_during"]
    # every 250 (before, during, after the outage) is a committed message, stored once
    assert result["lost"] == [] and result["duplicated"] == [] and result["damaged"] == []
    assert result["unprocessed"] == [] and result["records_not_once"] == []
    assert result["unexpected_rows"] == []
    assert '"message.deferred"' in sink.log_tail(10_000)
