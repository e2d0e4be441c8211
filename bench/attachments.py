"""The cost of attachment records (issue 17) on the benchmark's mail: per message, the rules'
parse, the listing from the raw bytes, and ``store_attachments`` (listing and INSERT, inside a
transaction on SQLite like the storage's). Short: a few seconds.

    python -m bench.attachments [--profile 100k-1] [--count 300]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from sqlalchemy import insert

from bench.corpus import build
from sink.db import schema as t
from sink.db.attachments import store_attachments
from sink.db.engine import make_engine
from sink.db.migrate import upgrade
from sink.mail.attachments import list_attachments
from sink.mail.parse import parse_message


def _row(i: int) -> dict:
    from datetime import datetime, timezone
    return dict(uuid=f"00000000-0000-0000-0000-{i:012d}", received_at=datetime.now(timezone.utc),
                channel="cli", box="crm@firma.cz", rcpt_to=[], to_addrs=[], cc_addrs=[],
                date_header="", subject="", size=0, sha256=f"{i:064d}", status="processed",
                trace=[])


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--profile", default="100k-1")
    args.add_argument("--count", type=int, default=300)
    opts = args.parse_args()
    raws = [m.raw for m in build(opts.profile, opts.count, seed=3)]
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        upgrade(engine)
        parse_only, listing, with_records, records = [], [], [], 0
        for raw in raws:                  # warm: imports, caches
            parse_message(raw)
            list_attachments(raw)
        for i, raw in enumerate(raws):
            started = time.perf_counter()
            parse_message(raw)
            parse_only.append(time.perf_counter() - started)
            started = time.perf_counter()
            list_attachments(raw)
            listing.append(time.perf_counter() - started)
            with engine.begin() as conn:
                message_id = conn.execute(insert(t.messages).values(**_row(i))
                                          ).inserted_primary_key[0]
                started = time.perf_counter()
                records += len(store_attachments(conn, message_id, raw).attachments)
                with_records.append(time.perf_counter() - started)
        engine.dispose()
    size = statistics.mean(len(r) for r in raws)

    def ms(values):
        return f"mean {statistics.mean(values) * 1000:.2f} ms, median " \
               f"{statistics.median(values) * 1000:.2f} ms"
    print(f"{opts.profile}: {len(raws)} messages, mean {size / 1024:.0f} KiB, "
          f"{records} attachment records")
    print(f"  the rules' parse:                  {ms(parse_only)}")
    print(f"  list_attachments (from raw bytes): {ms(listing)}")
    print(f"  store_attachments (listing+INSERT): {ms(with_records)}")
    extra = statistics.mean(with_records)
    print(f"  cost of the records: {extra * 1000:.2f} ms per message "
          f"({extra / statistics.mean(parse_only) * 100:.0f}% of the parse)")


if __name__ == "__main__":
    main()
