"""3. Disk full: the SQLite database lives on a small filesystem (a tmpfs mounted by the test)
that fills up under load. The sink answers 452 4.3.1 (or 451) — never 5xx, never 250 for what it
could not store; every message acknowledged before is intact; the sink survives a kill -9 while
the disk is full; once space is back the deferred messages are stored, each exactly once."""

from __future__ import annotations

import base64
import os
import random
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid

import pytest

from tests.conftest import seeded
from tests.reliability.load import LoadClient, audit
from tests.support import SinkProcess, free_port, make_mail, require, write_config

pytestmark = pytest.mark.slow


def _mount(path: str, size: str) -> bool:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           path], capture_output=True).returncode == 0


@pytest.fixture
def small_fs():
    """A tmpfs of the given size, unmounted and removed after the test."""
    mounts = []

    def make(size: str) -> str:
        path = tempfile.mkdtemp(prefix="sink-full-")
        if os.geteuid() != 0 or shutil.which("mount") is None or not _mount(path, size):
            os.rmdir(path)
            require(False, "root and mount(8) to create a small tmpfs")
        mounts.append(path)
        return path
    yield make
    for path in mounts:
        subprocess.run(["umount", path], capture_output=True)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", path], capture_output=True)
        os.rmdir(path)


def resize(path: str, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", path], check=True,
                   capture_output=True)


def stored_content(db: str, message_id: str) -> bytes | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT r.content FROM raw_messages r JOIN messages m "
                           "ON m.id = r.message_id WHERE m.message_id = ?",
                           (message_id,)).fetchone()
        return bytes(row[0]) if row else None
    finally:
        conn.close()


def deferral_reasons(log_path) -> dict:
    import json
    from collections import Counter
    reasons = Counter()
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if '"message.deferred"' in line:
                reasons[json.loads(line).get("reason", "")[:120]] += 1
            elif line.startswith("{") and '"error"' in line:
                reasons[line[:200]] += 1
    return dict(reasons)


def test_disk_full_defers_with_452_and_damages_nothing(tmp_path, small_fs, figures):
    mount = small_fs("6m")
    db = os.path.join(mount, "sink.db")
    url = f"sqlite:///{db}"
    seeded(url).dispose()
    rng = random.Random(7)
    tag = f"full-{uuid.uuid4().hex[:6]}"
    ids = [f"<{tag}-{i}@load.test>" for i in range(150)]
    messages = [make_mail(subject=f"{tag} {i}", message_id=mid, body=base64.encodebytes(
        rng.randbytes(rng.randint(40_000, 120_000))).decode()) for i, mid in enumerate(ids)]
    port = free_port()
    config = tmp_path / "sink.toml"          # config and log off the small filesystem
    write_config(config, url, port)
    sink = SinkProcess(config, port)
    load = LoadClient(port, messages, 4, backoff=0.1)
    state = {}
    try:
        load.start()
        deadline = time.monotonic() + 90
        while load.codes[452] + load.codes[451] < 20 and time.monotonic() < deadline:
            assert not load.done(), "the filesystem never filled up"
            time.sleep(0.05)
        state["acknowledged_when_full"] = len(load.acks)
        state["df_when_full"] = shutil.disk_usage(mount).free
        # the disk is full: whatever was acknowledged is intact, byte for byte
        with load.lock:
            acked = list(load.acks)
        damaged = [i for i in acked if stored_content(db, ids[i]) != messages[i]]
        assert damaged == [], damaged[:5]
        # a crash while the disk is full: the sink must come back (recovery needs no space)
        sink.kill()
        sink = SinkProcess(config, port, log_path=sink.log_path)
        state["restarted_while_full"] = True
        time.sleep(1.0)
        assert sink.proc.poll() is None, sink.log_tail()
        resize(mount, "64m")
        finished = load.wait(timeout=120)
    finally:
        load.stop.set()
        sink.stop()
    conn = sqlite3.connect(db)
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    from sink.db.engine import make_engine
    engine = make_engine(url)
    result = audit(engine, messages, ids)
    engine.dispose()
    figures(**load.figures(), **state, integrity=integrity, lost=len(result["lost"]),
            duplicated=len(result["duplicated"]), damaged=len(result["damaged"]))
    assert finished, (load.figures(), deferral_reasons(sink.log_path))
    assert load.refusals == [] and set(load.codes) <= {250, 451, 452}, load.codes
    assert load.codes[452] > 0, load.codes          # out of space is said as such
    assert integrity == "ok"
    assert result["lost"] == [] and result["duplicated"] == [] and result["damaged"] == []
    assert result["unprocessed"] == [] and result["records_not_once"] == []
