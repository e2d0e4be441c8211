"""A PostgreSQL batch's deferred rows, sent two ways in turns in one process: as psycopg's
executemany in one pipeline (one prepared execute per row), and as one INSERT of column arrays
per table (:func:`sink.db.fastpath.flush`'s way since the sixth round of issue 16).

    python -m bench.pg_flush [BATCHES] [PAIRS]

The rows are those of a batch of eight 4 KB messages on the bench load: eight raw messages,
sixteen dedup keys, eleven activity links, one attachment record, written through the real
statements (:mod:`sink.intake.rows`, :mod:`sink.executor`, :mod:`sink.db.attachments`) into a
database migrated like the service's. Each side runs BATCHES transactions (each rolled back,
so both sides write the same keys), in PAIRS alternations; it prints the client's CPU
(``time.process_time``) and the backend's (/proc) per batch for each, and the median of the
per-pair ratios. Comparing the two in the same process and the same minute is what makes the
figure hold on a machine whose speed wanders.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
import subprocess

from datetime import datetime, timezone

from sqlalchemy import text

from bench import procstat
from bench.servers import prepare_database
from sink.db import fastpath
from sink.db import schema as t
from sink.db.attachments import _INSERT as INSERT_ATTACHMENTS
from sink.db.engine import make_engine
from sink.executor import _INSERT_ACTIVITY_COMPANIES, _INSERT_ACTIVITY_CONTACTS
from sink.intake import rows


def _rows(message_ids: list[int]) -> list[tuple[fastpath.Fast, dict]]:
    made: list[tuple[fastpath.Fast, dict]] = []
    for i, message_id in enumerate(message_ids):
        made.append((rows.INSERT_RAW, {"message_id": message_id,
                                       "content": bytes([i]) * 4096}))
        for kind in ("mid", "body"):
            made.append((rows.INSERT_DEDUP_KEYS, {
                "box": "crm@firma.cz", "kind": kind, "digest": f"{kind}{i:04d}".ljust(64, "0"),
                "message_id": message_id}))
    # links to activities that exist only as ids here (the bench drops their foreign key)
    for n in range(6):
        made.append((_INSERT_ACTIVITY_CONTACTS, {"activity_id": 1000 + n, "contact_id": n + 1}))
    for n in range(5):
        made.append((_INSERT_ACTIVITY_COMPANIES, {"activity_id": 1000 + n, "company_id": n + 1}))
    made.append((INSERT_ATTACHMENTS, {
        "message_id": message_ids[0], "position": 1, "part": "2", "name": "offer.pdf",
        "content_type": "application/pdf", "size": 81234, "sha256": "f" * 64,
        "content_id": None, "inline": False, "nested_subject": None, "defect": None}))
    return made


def _as_executemany(fast: fastpath.Fast, conn, params: list[dict]) -> None:
    """The way before (``Fast._send_deferred`` as it was at d3bb06e): every row a prepared
    execute in the flush's pipeline."""
    c = fast._compiled(conn)
    bound = [fast._bind(c, row) for row in params]
    if fast.ordered:
        bound.sort(key=lambda row: tuple(row.values()))
    fastpath._send(conn, c, bound, pipeline=True)


def main(argv: list[str]) -> int:
    batches = int(argv[0]) if argv else 300
    pairs = int(argv[1]) if len(argv) > 1 else 6
    name = "pf" + uuid.uuid4().hex[:8]
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
                    f"create database {name}"], check=True)
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        prepare_database(url)
        engine = make_engine(url, pool_size=1)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE activity_contacts DROP CONSTRAINT IF EXISTS "
                              "fk_activity_contacts_activity_id_activities"))
            conn.execute(text("ALTER TABLE activity_companies DROP CONSTRAINT IF EXISTS "
                              "fk_activity_companies_activity_id_activities"))
        try:
            return _run(engine, batches, pairs)
        finally:
            engine.dispose()
    finally:
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
                        f"drop database if exists {name}"], check=False)


def _run(engine, batches: int, pairs: int) -> int:
    with engine.connect() as conn:
        backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        ids = _messages(conn)
        conn.commit()
        made = _rows(ids)

        def batch(columns: bool) -> None:
            trans = conn.begin()
            by_statement: dict[fastpath.Fast, list[dict]] = {}
            for fast, params in made:
                by_statement.setdefault(fast, []).append(params)
            dbapi = conn.connection.dbapi_connection
            with dbapi.pipeline():
                for fast, params in by_statement.items():
                    if columns:
                        fast._send_deferred(conn, params)
                    else:
                        _as_executemany(fast, conn, params)
            trans.rollback()

        def side(columns: bool) -> tuple[float, float]:
            for _ in range(20):
                batch(columns)
            client, server = time.process_time(), procstat.cpu_seconds(backend)
            for _ in range(batches):
                batch(columns)
            return ((time.process_time() - client) / batches * 1e6,
                    (procstat.cpu_seconds(backend) - server) / batches * 1e6)

        ratios_client, ratios_both = [], []
        for n in range(pairs):
            old_c, old_s = side(False)
            new_c, new_s = side(True)
            ratios_client.append(new_c / old_c)
            ratios_both.append((new_c + new_s) / (old_c + old_s))
            print(f"pair {n + 1}: executemany client {old_c:6.0f} us server {old_s:6.0f} us"
                  f" | column arrays client {new_c:6.0f} us server {new_s:6.0f} us per batch")
        print(f"{len(made)} rows of a batch of 8: column arrays / executemany, median of "
              f"{pairs} pairs: client {statistics.median(ratios_client):.3f} "
              f"({min(ratios_client):.2f}-{max(ratios_client):.2f}), client + server "
              f"{statistics.median(ratios_both):.3f} "
              f"({min(ratios_both):.2f}-{max(ratios_both):.2f})")
    return 0


def _messages(conn) -> list[int]:
    """Eight message rows for the raw bytes and dedup keys to belong to."""
    return [rows.INSERT_MESSAGE.insert(conn, rows.storable_row(t.messages, dict(
        uuid=rows.message_uuid(), received_at=datetime.now(timezone.utc), channel="lmtp",
        box="crm@firma.cz", mail_from="", rcpt_to=[], sender=None, to_addrs=[], cc_addrs=[],
        date_header="", subject=f"holder {i}", message_id=None, size=4096,
        sha256=f"{i:064d}", parent_id=None, dkim="none", status="pending", verdict=None,
        direction=None, trace=[], processed_at=None, error=None))) for i in range(8)]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
