"""Messages per second through the IMAP and POP3 sources (`sink poll`, storage in process,
the whole pipeline) from a private Dovecot: `python -m bench.sources_throughput [N] [pg]`."""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.conftest import create_pg_database, drop_pg_database, seeded
from tests.dovecot_harness import Dovecot
from tests.sources_support import (PASSWORD, USER, imap_source, message_count, pop3_source,
                                   run_poll, write_config)
from tests.support import make_mail


def run(kind: str, n: int, postgres: bool) -> float:
    work = Path(tempfile.mkdtemp(prefix="sink-bench-"))
    name = f"sink_bench_{uuid.uuid4().hex[:8]}"
    url = create_pg_database(name) if postgres else f"sqlite:///{work}/sink.db"
    engine = seeded(url)
    dovecot = Dovecot({USER: PASSWORD})
    try:
        for i in range(n):
            dovecot.drop(USER, make_mail(subject=f"bench {i}", body=f"body {i}\n" * 20))
        make = imap_source if kind == "imap" else pop3_source
        cfg = write_config(work / "sink.toml", url, [make(dovecot, work / "pw")])
        started = time.monotonic()
        code, lines = run_poll(cfg)
        seconds = time.monotonic() - started
        assert code == 0 and lines[0]["stored"] == n == message_count(engine), lines
        return n / seconds
    finally:
        dovecot.cleanup()
        engine.dispose()
        if postgres:
            drop_pg_database(name)


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    pg = "pg" in sys.argv[2:]
    for source_kind in ("imap", "pop3"):
        rate = run(source_kind, count, pg)
        print(f"{source_kind} {'postgresql' if pg else 'sqlite'}: {count} messages, "
              f"{rate:.0f} messages/s")
