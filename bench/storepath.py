"""The storage worker's path without the network: CPU per message of the client and of the
PostgreSQL backend, and the statements and round trips each message costs.

    DB=postgres python -m bench.storepath 4k-1 2400 8          # CPU per message
    DB=postgres python -m bench.storepath 4k-1 2400 8 count    # statements per message
    DB=postgres python -m bench.storepath 4k-1 2400 8 prof     # cProfile of the client
                                                   # (PROF_OUT=FILE: its stats kept there)
    DB=postgres python -m bench.storepath 4k-1 2400 8 plans    # server time per statement

It drives :func:`sink.storage.worker._commit` (parse, DKIM "none", rules, one transaction per
batch of B) over the bench corpus, the first 200 messages as a warm-up. Client CPU is
``time.process_time()`` of this process (best of ``REPEATS``, each over a fresh corpus with new
bytes, so nothing is "already stored"); the server's is the backend's utime + stime from
/proc (it runs on this machine: ``pg_backend_pid()``). ``count`` wraps the psycopg cursor and
tells the statements sent and the round trips they cost: one per ``execute`` outside a
pipeline, one per pipeline sync, and the implicit BEGIN psycopg sends before the first
statement of a transaction. ``plans`` loads auto_explain in the backend (PostgreSQL's own
contrib module; pg_stat_statements would need a restart) with its log sent to the client as
notices: the server's execution time per statement, and the slowest plan of each.
``DB=sqlite`` runs the same path on SQLite, for comparison. ``AHEAD=1`` decides before the
write, as a worker does where workers take turns to write (SQLite).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import corpus, procstat
from bench.servers import prepare_database

REPEATS = int(os.environ.get("REPEATS", "3"))
AHEAD = os.environ.get("AHEAD") == "1"     # decide before the write, as a worker among several does


def _database(workdir: Path, db: str) -> str:
    if db == "sqlite":
        return f"sqlite:///{workdir}/s.db"
    name = "sp" + uuid.uuid4().hex[:8]
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
                    f"create database {name}"], check=True)
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


class Counter:
    """What the psycopg cursors sent: statements (by their first words) and round trips.

    A round trip is a wait for the server: an ``execute`` outside a pipeline (and the implicit
    BEGIN psycopg sends on its own before it), the sync that ends a pipeline (``executemany``
    outside one is a pipeline of its own), an explicit sync, a fetch that must flush a pipeline
    to get its result. A statement sent in a pipeline waits for nothing."""

    def __init__(self) -> None:
        self.statements: collections.Counter[str] = collections.Counter()
        self.round_trips = 0
        self.executes = 0       # cursor executes (one per row of an executemany)
        self.rows = 0
        self._saved: list = []

    def install(self) -> None:
        import psycopg
        from psycopg import _pipeline
        counter = self
        execute, executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany
        exit_, sync = _pipeline.Pipeline.__exit__, _pipeline.Pipeline.sync
        fetch = psycopg.Cursor._fetch_pipeline
        self._saved = [(psycopg.Cursor, "execute", execute),
                       (psycopg.Cursor, "executemany", executemany),
                       (psycopg.Cursor, "_fetch_pipeline", fetch),
                       (_pipeline.Pipeline, "__exit__", exit_), (_pipeline.Pipeline, "sync", sync)]

        def kind(query) -> str:
            text = query if isinstance(query, str) else getattr(query, "as_string", str)(None)
            return " ".join(str(text).split()[:3])[:40]

        def begins(cursor) -> int:
            conn = cursor.connection
            idle = conn.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE
            return 1 if idle and not conn.autocommit and not conn._pipeline else 0

        def counted_execute(self, query, params=None, **kw):
            pipelined = self.connection._pipeline is not None
            counter.executes += 1
            parts = query.split("; ") if params is None and isinstance(query, str) else [query]
            for part in parts:      # a simple query of several commands: each is a statement
                counter.statements[kind(part)] += 1
            counter.statements["BEGIN"] += begins(self)
            counter.round_trips += 0 if pipelined else 1 + begins(self)
            return execute(self, query, params, **kw)

        def counted_executemany(self, query, params_seq, **kw):
            params_seq = list(params_seq)
            counter.statements[kind(query)] += len(params_seq)
            counter.statements["BEGIN"] += begins(self)
            counter.rows += len(params_seq)
            counter.executes += len(params_seq)
            return executemany(self, query, params_seq, **kw)    # its pipeline's exit counts

        def counted_exit(self, *exc):
            counter.round_trips += 1 if self.level == 1 else 0    # the outermost: a sync
            return exit_(self, *exc)

        def counted_sync(self):
            counter.round_trips += 1
            return sync(self)

        def counted_fetch(self):
            pipeline = self._conn._pipeline
            if pipeline is not None and pipeline.result_queue and not self.pgresult:
                counter.round_trips += 1
            return fetch(self)

        psycopg.Cursor.execute = counted_execute
        psycopg.Cursor.executemany = counted_executemany
        psycopg.Cursor._fetch_pipeline = counted_fetch
        _pipeline.Pipeline.__exit__ = counted_exit
        _pipeline.Pipeline.sync = counted_sync

    def uninstall(self) -> None:
        for owner, name, original in self._saved:
            setattr(owner, name, original)
        self._saved = []

    def report(self, messages: int) -> str:
        lines = [f"round trips {self.round_trips / messages:.2f}/msg, statements "
                 f"{sum(self.statements.values()) / messages:.2f}/msg in "
                 f"{self.executes / messages:.2f} executes/msg:"]
        for what, count in self.statements.most_common():
            lines.append(f"  {count / messages:6.2f}  {what}")
        return "\n".join(lines)


class Plans:
    """auto_explain's notices, by statement: count, total and slowest execution, its plan."""

    def __init__(self) -> None:
        self.by_query: dict[str, list] = {}

    def install(self, engine) -> None:
        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def load(dbapi_conn, _record):
            dbapi_conn.add_notice_handler(self.notice)
            dbapi_conn.autocommit = True
            for sql in ("LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0",
                        "SET auto_explain.log_analyze = on",
                        "SET auto_explain.log_level = notice"):
                dbapi_conn.execute(sql)
            dbapi_conn.autocommit = False

    def notice(self, diag) -> None:
        text = diag.message_primary or ""
        if not text.startswith("duration:"):
            return
        ms = float(text.split()[1])
        query = text.split("Query Text:", 1)[-1].strip().splitlines()[0]
        key = " ".join(query.split())[:70]
        entry = self.by_query.setdefault(key, [0, 0.0, 0.0, ""])
        entry[0] += 1
        entry[1] += ms
        if ms >= entry[2]:
            entry[2], entry[3] = ms, text

    def report(self, messages: int) -> str:
        rows = sorted(self.by_query.items(), key=lambda kv: -kv[1][1])
        lines = [f"server execution {sum(e[1] for _, e in rows) * 1000 / messages:.0f} us/msg "
                 f"(auto_explain, with its own overhead):"]
        for key, (count, total, _, _) in rows:
            lines.append(f"  {total * 1000 / messages:7.1f} us/msg {count / messages:5.2f}/msg  "
                         f"{key}")
        for key, (_, _, slowest, text) in rows[:5]:
            lines.append(f"--- slowest {slowest:.3f} ms: {text}")
        return "\n".join(lines)


def main(argv: list[str]) -> int:
    from sink.config import parse_config
    from sink.db.engine import make_engine
    from sink.intake import Envelope, Intake
    from sink.log import configure
    from sink.storage.batching import log_batch
    from sink.storage.worker import WriteTurn, _commit

    profile = argv[0] if argv else "4k-1"
    n = int(argv[1]) if len(argv) > 1 else 2400
    batch = int(argv[2]) if len(argv) > 2 else 8
    mode = argv[3] if len(argv) > 3 else "time"
    db = os.environ.get("DB", "postgres")
    workdir = Path(tempfile.mkdtemp())
    configure("info", str(workdir / "log.json"))
    url = _database(workdir, db)
    prepare_database(url)
    config = parse_config({"database": {"url": url}, "listeners": [],
                           "boxes": [{"address": b} for b in corpus.BOXES]})
    boxes = {b.address: b for b in config.boxes}
    engine = make_engine(url, pool_size=1)
    plans = Plans() if mode == "plans" else None
    if plans:
        plans.install(engine)
    intake = Intake(engine)
    turn = WriteTurn.for_database(intake.engine)
    backend = None
    if db != "sqlite":
        with intake.engine.connect() as conn:
            backend = conn.exec_driver_sql("select pg_backend_pid()").scalar()

    def jobs(seed: int) -> list:
        return [((i, Envelope("lmtp", "a@b", (corpus.BOXES[0],)), [corpus.BOXES[0]], None),
                 m.raw) for i, m in enumerate(corpus.build(profile, n, seed=seed))]

    def run(js: list) -> None:
        for k in range(0, len(js), batch):
            done, prepared, outcomes, _ = _commit(intake, turn, js[k:k + batch], boxes,
                                                  ahead=AHEAD)
            # a batch that failed costs less than one stored: never a figure of it
            failed = [r for _, results in done for r in results if r[0] != "stored"]
            if failed:
                raise SystemExit(f"not stored: {failed[0]}")
            log_batch(intake, prepared, outcomes)

    first = jobs(7)
    run(first[:200])
    rest = first[200:]
    if mode == "prof":
        import cProfile
        import pstats
        pr = cProfile.Profile(time.process_time)      # CPU, not time spent waiting
        pr.enable()
        run(rest)
        pr.disable()
        if os.environ.get("PROF_OUT"):        # for pstats' callers and callees
            pr.dump_stats(os.environ["PROF_OUT"])
        stats = pstats.Stats(pr)
        stats.sort_stats("cumulative").print_stats(50)
        stats.sort_stats("tottime").print_stats(40)
        return 0
    if plans:
        plans.by_query.clear()
        run(rest)
        print(f"{profile} B={batch} {db}: " + plans.report(len(rest)))
        return 0
    if mode == "count":
        counter = Counter()
        counter.install()
        # the backend's own count of the times it waited (for the client's next message, for
        # its WAL flush, for a lock): a check of the round trips counted here
        woke = procstat.status_kb(backend, "voluntary_ctxt_switches") if backend else 0
        run(rest)
        woke = (procstat.status_kb(backend, "voluntary_ctxt_switches") - woke) if backend else 0
        print(f"{profile} B={batch} {db}: " + counter.report(len(rest)))
        if backend:
            print(f"backend voluntary context switches {woke / len(rest):.2f}/msg")
        return 0
    best = None
    for repeat in range(REPEATS):
        js = rest if repeat == 0 else jobs(100 + repeat)[200:]
        s0 = procstat.cpu_seconds(backend) if backend else 0.0
        t0, w0 = time.process_time(), time.perf_counter()
        run(js)
        t1, w1 = time.process_time(), time.perf_counter()
        s1 = procstat.cpu_seconds(backend) if backend else 0.0
        one = (1e6 * (t1 - t0) / len(js), 1e6 * (s1 - s0) / len(js), 1e6 * (w1 - w0) / len(js))
        print(f"  client {one[0]:.0f} us/msg  server {one[1]:.0f} us/msg  wall {one[2]:.0f}",
              file=sys.stderr)
        best = one if best is None or one[0] + one[1] < best[0] + best[1] else best
    print(f"{profile} B={batch} {db}: client {best[0]:.0f} us/msg, server {best[1]:.0f} "
          f"us/msg, wall {best[2]:.0f} us/msg (best of {REPEATS})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
