"""One command for the benchmarks of docs/PERFORMANCE.md.

    python -m bench.run compare      # Dovecot LMTP vs bare aiosmtpd vs sink/SQLite vs
                                     # sink/PostgreSQL (default)
    python -m bench.run pipeline     # parse + rules alone, one core
    python -m bench.run memory       # RSS over a 100,000-message run
    python -m bench.run big          # peak memory for one 40 MB message
    python -m bench.run all          # all four

Each writes ``<out>/<label>-<command>.json`` and ``.md`` (default ``docs/bench/``). Every
process it starts (servers, drivers) is stopped before it returns, also on error or Ctrl-C;
every PostgreSQL database it creates is dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import corpus, procstat
from bench.servers import ROOT, Bare, Dovecot, Sink, uvloop_available

# Upper bounds of the rate per profile, to build a corpus that cannot run out in the window.
# A run that runs out measures its sessions draining, not its rate (a lower bound, marked
# EXHAUSTED): on the 2026-12-03 machine Dovecot took 100 KB mail at ~900 a second and ran
# out of the 2,160 messages that the old bound of 600 built, bare aiosmtpd came within 15 %
# of the 4 KB bound. Twice what was seen; the 100 KB corpus is then ~450 MB (built in ~3 s).
RATE_CAP = {"4k-1": 6000, "4k-5": 3000, "100k-1": 1200, "100k-5": 1000}
SERVERS = ("dovecot", "bare", "sqlite", "postgres")
# The delivery agent every figure is also a ratio to: what a mail admin already runs.
REFERENCE = "dovecot"


# ---------------------------------------------------------------------------------- helpers

def machine() -> dict:
    info = {"python": platform.python_version(), "kernel": platform.release(),
            "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions = {}
    for name in ("aiosmtpd", "sqlalchemy", "psycopg", "uvloop"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            versions[name] = None
    info["versions"] = versions
    import sqlite3
    info["versions"]["sqlite"] = sqlite3.sqlite_version
    try:
        from sqlalchemy import create_engine, text
        from bench.servers import PG_ADMIN_URL
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            info["versions"]["postgresql"] = conn.execute(text("show server_version")).scalar()
        engine.dispose()
    except Exception:
        info["versions"]["postgresql"] = None
    return info


def fsync_ms(directory: Path, count: int = 50) -> float:
    """Median time of a 4 KB write + fsync where the SQLite file lives (the commit floor)."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            t = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    return round(statistics.median(times) * 1000, 2)


def write_corpus(path: Path, mails: list) -> None:
    items = [(m.mail_from.encode(), tuple(r.encode() for r in m.rcpts), corpus.dot_stuff(m.raw))
             for m in mails]
    with open(path, "wb") as f:
        pickle.dump(items, f, protocol=pickle.HIGHEST_PROTOCOL)


def drive(server, corpus_file: Path, *, sessions: int, warmup: float, duration: float,
          progress=None, timeout: float = 600, lockstep: bool = False) -> dict:
    """Run one driver process against ``server``; add the server's CPU and memory figures.
    ``lockstep``: never pipeline (the rounds before the sink offered PIPELINING)."""
    pid = server.pid
    procstat.reset_tree_peak(pid)
    rss_before = procstat.tree_rss_mb(pid)
    db_cpu = procstat.GroupCpu("postgres") if getattr(server, "kind", "") == "postgres" else None
    args = [sys.executable, "-m", "bench.driver", str(corpus_file), "--port", str(server.port),
            "--sessions", str(sessions), "--warmup", str(warmup), "--duration", str(duration)]
    if progress is not None:
        args.append("--progress")
    if lockstep:
        args.append("--lockstep")
    delivered_before = server.delivered()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    result, cpu0, cpu1, sys0, sys1 = None, None, None, None, None
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        for line in proc.stdout:
            line = line.strip()
            if line == "START":
                cpu0, sys0 = procstat.tree_cpu_seconds(pid), procstat.system_cpu_seconds()
                if db_cpu:
                    db_cpu.start()
            elif line == "END":
                cpu1, sys1 = procstat.tree_cpu_seconds(pid), procstat.system_cpu_seconds()
                db_cpu_s = db_cpu.stop() if db_cpu else None
            elif line.startswith("PROGRESS") and progress is not None:
                progress(int(line.split()[1]))
            elif line.startswith("{"):
                result = json.loads(line)
        proc.wait()
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if result is None:
        raise RuntimeError(f"driver failed (exit {proc.returncode}) against {server.name}")
    n = max(1, result["messages"])
    if cpu0 is not None and cpu1 is not None:
        result["server_cpu_ms"] = round((cpu1 - cpu0) / n * 1000, 3)
        result["machine_cpu_ms"] = round((sys1 - sys0) / n * 1000, 3)
        if db_cpu:
            result["db_cpu_ms"] = round(db_cpu_s / n * 1000, 3)
        # CPU of everything else on the machine in the window (not the server, not its
        # PostgreSQL, not the driver): interference, reported so that a noisy run shows.
        driver_s = result["driver_cpu_s"] * result["messages"] / max(1, result["sent_total"])
        others = (sys1 - sys0) - (cpu1 - cpu0) - (db_cpu_s or 0.0) - driver_s
        result["others_cpu_share"] = round(max(0.0, others) / result["window_s"]
                                           / (os.cpu_count() or 1), 2)
    result["peak_rss_mb"] = round(procstat.tree_peak_rss_mb(pid), 1)
    result["rss_before_mb"] = round(rss_before, 1)
    if delivered_before is not None:
        check_delivered(result, server.delivered() - delivered_before)
    return result


def check_delivered(result: dict, files: int) -> None:
    """A server whose messages can be counted on disk (Dovecot's maildirs) must have written
    one file for every 250 it answered over the whole load (warm-up and tail included, as
    ``codes`` are): a 250 without a file would be a rate that was never delivered."""
    answered = result["codes"].get("250", 0)
    result["delivered"] = files
    result["delivered_mismatch"] = files - answered


def wait_quiet(max_wait: float, busy_below: float = 0.15) -> float:
    """Wait (at most ``max_wait`` s) until the machine is nearly idle; return its busy share.

    Other work on the machine (a test suite, a build) takes CPU from whichever server happens
    to run at that moment; waiting for a quiet moment keeps the alternating rounds comparable.
    """
    deadline = time.monotonic() + max_wait
    cores = os.cpu_count() or 1
    while True:
        before = procstat.system_cpu_seconds()
        time.sleep(0.25)
        busy = (procstat.system_cpu_seconds() - before) / 0.25 / cores
        if busy < busy_below or time.monotonic() >= deadline:
            return round(busy, 2)


def make_server(name: str, workdir: Path, args):
    """``dovecot`` (no options: the reference as Debian ships it), ``bare``, ``sqlite`` or
    ``postgres``, with options after colons: ``:asyncio`` runs it on
    asyncio's own loop even when uvloop is installed, ``:wN`` gives the sink ``[storage]
    workers = N`` (``:w0``: parse, rules and storage in the protocol process), ``:lockstep``
    (any server, Dovecot too) drives it without PIPELINING; ``@DIR`` at the
    end runs the sink of another checkout (e.g. ``sqlite@/tmp/before``: a same-run A/B of two
    versions of the code; the database is prepared by this checkout, so both must share the
    schema)."""
    spec, _, checkout = name.partition("@")
    kind, *options = spec.split(":")
    lockstep = "lockstep" in options
    if kind == REFERENCE:
        if set(options) - {"lockstep"}:
            raise SystemExit(f"{name}: dovecot takes no options but lockstep")
        server = Dovecot(workdir)
        server.name, server.lockstep = name, lockstep
        return server
    uvloop = args.uvloop and "asyncio" not in options
    if kind == "bare":
        server = Bare(workdir, uvloop=uvloop)
        server.name = name
        server.lockstep = lockstep
        return server
    storage = {}
    if args.storage_threads:
        storage["threads"] = args.storage_threads
    for option in options:
        if option.startswith("w") and option[1:].isdigit():
            storage["workers"] = int(option[1:])
    extra = "".join(["\n[storage]\n"] + [f"{k} = {v}\n" for k, v in storage.items()]) \
        if storage else ""
    server = Sink(kind, workdir, log_level=args.log_level, uvloop=uvloop, name=name,
                  extra_config=extra, root=Path(checkout) if checkout else None)
    server.lockstep = lockstep
    return server


def _median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


# ---------------------------------------------------------------------------------- compare

def cmd_compare(args, workdir: Path) -> dict:
    profiles = args.profiles.split(",")
    servers = args.servers.split(",")
    files = {}
    for profile in profiles:
        count = int(RATE_CAP[profile] * (args.warmup + args.duration) * 1.2)
        files[profile] = workdir / f"corpus-{profile}.pickle"
        write_corpus(files[profile], corpus.build(profile, count, seed=args.seed))
    rounds = []
    for r in range(args.rounds):
        order = servers[r % len(servers):] + servers[:r % len(servers)]
        this_round = {}
        for name in order:
            with make_server(name, workdir, args) as server:
                for profile in profiles:
                    idle = wait_quiet(args.quiet_wait)
                    res = drive(server, files[profile], sessions=args.sessions,
                                warmup=args.warmup, duration=args.duration,
                                lockstep=args.lockstep or server.lockstep)
                    res["busy_before"] = idle
                    res["round"] = r
                    this_round[(name, profile)] = res
                    _say(f"round {r + 1}/{args.rounds} {name:8} {profile:7} "
                         f"{res['rate']:8.1f} msg/s  p50 {res['p50_ms']} ms  "
                         f"p99 {res['p99_ms']} ms  cpu {res.get('server_cpu_ms')} ms/msg  "
                         f"rss {res['peak_rss_mb']} MB  codes {res['codes']}  "
                         f"others {res.get('others_cpu_share')}"
                         + ("  EXHAUSTED" if res["exhausted"] else "")
                         + (f"  DELIVERED {res['delivered']} files for {res['codes']}"
                            if res.get("delivered_mismatch") else "")
                         + (f"  errors {res['errors'][:2]}" if res["errors"] else ""))
                if isinstance(server, Sink):
                    this_round[(name, "stored")] = server.stored()
        rounds.append(this_round)
    summary = []
    for profile in profiles:
        for name in servers:
            runs = [rd[(name, profile)] for rd in rounds]
            floor = _floor(name, servers)
            reference = REFERENCE if REFERENCE in servers and name != REFERENCE else None
            summary.append({
                "profile": profile, "server": name,
                "rate": _median(r["rate"] for r in runs),
                "ratio": _round_ratio(rounds, profile, name, floor),
                "ratio_dovecot": _round_ratio(rounds, profile, name, reference),
                "p50_ms": _median(r["p50_ms"] for r in runs),
                "p99_ms": _median(r["p99_ms"] for r in runs),
                "server_cpu_ms": _median(r.get("server_cpu_ms") for r in runs),
                "db_cpu_ms": _median(r.get("db_cpu_ms") for r in runs),
                "machine_cpu_ms": _median(r.get("machine_cpu_ms") for r in runs),
                "driver_cpu_ms": _median(r["driver_cpu_s"] / max(1, r["messages"]) * 1000
                                         for r in runs),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "others_cpu_share": _median(r.get("others_cpu_share") for r in runs),
                "non_250": sum(sum(n for c, n in r["codes"].items() if c != "250")
                               for r in runs),
                "exhausted": sum(1 for r in runs if r.get("exhausted")),
                "rates": [r["rate"] for r in runs],
                "vs": floor,
                "vs_dovecot": reference,
                **_delivery_check(runs),
            })
    stored = {f"{name} round {i + 1}": rd[(name, "stored")] for i, rd in enumerate(rounds)
              for name in servers if (name, "stored") in rd}
    return {"summary": summary, "stored": stored,
            "rounds": [{f"{k[0]}/{k[1]}": v for k, v in rd.items()} for rd in rounds]}


def _round_ratio(rounds: list[dict], profile: str, name: str, other: str | None):
    """The median of ``name``'s rate over ``other``'s, each ratio taken inside one round (the
    machine's speed drifts between rounds more than the servers differ)."""
    if not other:
        return None
    ratios = [rd[(name, profile)]["rate"] / rd[(other, profile)]["rate"]
              for rd in rounds if rd[(other, profile)]["rate"]]
    return _median(ratios)


def _delivery_check(runs: list[dict]) -> dict:
    """Files on disk against 250s, summed over the rounds (only for a countable server)."""
    if not any("delivered" in r for r in runs):
        return {}
    return {"delivered": sum(r["delivered"] for r in runs),
            "delivered_mismatch": sum(r["delivered_mismatch"] for r in runs)}


def _floor(name: str, servers: list[str]) -> str | None:
    """The bare server a sink variant is compared with: the one on the same event loop."""
    if name.startswith("bare"):
        return None
    on_asyncio = "asyncio" in name.split(":")[1:]
    for candidate in (("bare:asyncio", "bare") if on_asyncio else ("bare",)):
        if candidate in servers:
            return candidate
    return None


def md_compare(data: dict) -> str:
    """The table of a compare run; also of a JSON written before Dovecot was a server (its
    rows have no ``ratio_dovecot``: the column stays empty)."""
    lines = ["| load | server | msgs/s (median) | × dovecot | × bare | p50 ms | p99 ms | "
             "server CPU ms/msg | PostgreSQL CPU ms/msg | peak RSS MB | non-250 | other load | "
             "runs msgs/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in data["summary"]:
        lines.append(
            f"| {s['profile']} | {s['server']} | {s['rate']:.0f} | "
            f"{_ratio(s.get('ratio_dovecot'))} | {_ratio(s['ratio'])} | "
            f"{_f(s['p50_ms'])} | {_f(s['p99_ms'])} | {_f(s['server_cpu_ms'])} | "
            f"{_f(s['db_cpu_ms'])} | {s['peak_rss_mb']:.0f} | {s['non_250']} | "
            f"{_f(s['others_cpu_share'])} | "
            f"{', '.join(f'{r:.0f}' for r in s['rates'])} |")
    short = [s for s in data["summary"] if s.get("exhausted")]
    if short:
        lines.append("")
        lines.append("**Ran out of corpus** (those rates include the sessions draining: "
                     "lower bounds, and every ratio to them is too high): " + "; ".join(
                         f"{s['server']} {s['profile']} in {s['exhausted']} of "
                         f"{len(s['rates'])} runs" for s in short) + ".")
    checked = [s for s in data["summary"] if "delivered" in s]
    if checked:
        lines.append("")
        lines.append("Files on disk against 250s: " + "; ".join(
            f"{s['server']} {s['profile']} {s['delivered']} files, "
            + ("one per 250" if not s["delivered_mismatch"] else
               f"**{s['delivered_mismatch']:+d} against the 250s**") for s in checked) + ".")
    return "\n".join(lines)


def _ratio(value) -> str:
    return "" if value is None else f"{value:.2f}"


def _f(v) -> str:
    return "" if v is None else f"{v:.2f}" if v < 100 else f"{v:.0f}"


# ---------------------------------------------------------------------------------- pipeline

def cmd_pipeline(args, workdir: Path) -> dict:
    """parse_message + evaluate over the corpus in this process, pinned to one core."""
    from sink.mail.parse import parse_message
    from sink.pipeline import evaluate
    from bench.rules_profile import setup
    box, directory = setup(workdir)
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    except (AttributeError, OSError):
        pass
    out = {}
    for profile in args.pipeline_profiles.split(","):
        mails = corpus.build(profile, args.count, seed=args.seed + 100)
        raws = [m.raw for m in mails]
        seen_keys: set = set()

        def seen(keys):
            return any(k in seen_keys for k in keys)

        best = {}
        for _ in range(args.repeat):
            seen_keys.clear()
            # CPU time of this single-threaded process: what one core does, and robust to other
            # work on the machine (which only stretches the wall clock)
            t0 = time.process_time()
            parsed = [parse_message(raw) for raw in raws]
            t1 = time.process_time()
            verdicts: dict[str, int] = {}
            for p in parsed:
                d = evaluate(p, box, directory, seen)
                verdicts[str(d.verdict)] = verdicts.get(str(d.verdict), 0) + 1
                if d.verdict != "DUPLICATE":
                    seen_keys.update(d.dedup_keys)
            t2 = time.process_time()
            for key, value in (("parse", t1 - t0), ("rules", t2 - t1), ("both", t2 - t0)):
                best[key] = min(best.get(key, value), value)
        n = len(raws)
        out[profile] = {"messages": n,
                        "parse_per_s": round(n / best["parse"]),
                        "rules_per_s": round(n / best["rules"]),
                        "parse_and_rules_per_s": round(n / best["both"]),
                        "parse_us": round(best["parse"] / n * 1e6, 1),
                        "rules_us": round(best["rules"] / n * 1e6, 1),
                        "verdicts": verdicts}
        _say(f"pipeline {profile}: {out[profile]}")
    return out


def md_pipeline(data: dict) -> str:
    lines = ["| corpus | messages | parse msgs/s | rules msgs/s | parse + rules msgs/s | "
             "parse µs | rules µs |", "|---|---:|---:|---:|---:|---:|---:|"]
    for profile, r in data.items():
        lines.append(f"| {profile} | {r['messages']} | {r['parse_per_s']} | {r['rules_per_s']} "
                     f"| {r['parse_and_rules_per_s']} | {r['parse_us']} | {r['rules_us']} |")
    verdicts = next(iter(data.values()))["verdicts"]
    lines.append("")
    lines.append("Verdicts over the corpus: " + ", ".join(
        f"{k} {v}" for k, v in sorted(verdicts.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- memory

def cmd_memory(args, workdir: Path) -> dict:
    out = {}
    for name in args.memory_servers.split(","):
        corpus_file = workdir / "corpus-memory.pickle"
        if not corpus_file.exists():
            _say(f"building {args.messages} messages ...")
            write_corpus(corpus_file, corpus.build("4k-1", args.messages, seed=args.seed + 200))
        samples = []
        with make_server(name, workdir, args) as server:
            started = time.perf_counter()

            def progress(done, pid=server.pid):
                samples.append((round(time.perf_counter() - started, 1), done,
                                round(procstat.tree_rss_mb(pid), 1)))

            res = drive(server, corpus_file, sessions=args.sessions, warmup=0.0,
                        duration=1e6, progress=progress, timeout=3600, lockstep=args.lockstep)
        by_tenth = []
        for tenth in range(1, 11):
            target = args.messages * tenth / 10
            point = next((s for s in samples if s[1] >= target), samples[-1] if samples else None)
            if point:
                by_tenth.append({"messages": point[1], "rss_mb": point[2], "t_s": point[0]})
        out[name] = {"messages": res["sent_total"], "rate": res["rate"],
                     "p99_ms": res["p99_ms"], "codes": res["codes"],
                     "peak_rss_mb": res["peak_rss_mb"], "rss": by_tenth, "samples": samples}
        _say(f"memory {name}: {[(p['messages'], p['rss_mb']) for p in by_tenth]}")
    return out


def md_memory(data: dict) -> str:
    lines = []
    for name, r in data.items():
        pts = r["rss"]
        lines.append(f"**{name}**: {r['messages']} messages at {r['rate']:.0f} msgs/s, "
                     f"p99 {r['p99_ms']} ms, replies {r['codes']}, peak RSS "
                     f"{r['peak_rss_mb']:.0f} MB.\n")
        lines.append("| messages | " + " | ".join(str(p["messages"]) for p in pts) + " |")
        lines.append("|---|" + "---:|" * len(pts))
        lines.append("| RSS MB | " + " | ".join(f"{p['rss_mb']:.0f}" for p in pts) + " |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- big

def big_message(size: int) -> corpus.Mail:
    import base64
    import random
    head = corpus.Builder("4k-1", 999).next(0)
    boundary = "=_big_boundary"
    headers, _, _ = head.raw.partition(b"\r\n\r\n")
    headers = b"\r\n".join(line for line in headers.split(b"\r\n")
                           if not line.lower().startswith((b"content-type",
                                                           b"content-transfer-encoding")))
    blob = base64.encodebytes(random.Random(5).randbytes(int(size * 0.75))).replace(b"\n",
                                                                                    b"\r\n")
    raw = (headers + b'\r\nContent-Type: multipart/mixed; boundary="' + boundary.encode()
           + b'"\r\n\r\n--' + boundary.encode() + b"\r\nContent-Type: text/plain; "
           b"charset=utf-8\r\n\r\nThe drawings, see the attachment.\r\n--" + boundary.encode()
           + b"\r\nContent-Type: application/zip; name=\"drawings.zip\"\r\n"
           b"Content-Disposition: attachment; filename=\"drawings.zip\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + blob + b"--" + boundary.encode()
           + b"--\r\n")
    return corpus.Mail(head.mail_from, head.rcpts, raw)


class TreeRssSampler:
    """The largest total RSS of a process and its descendants, sampled every ``interval``."""

    def __init__(self, pid: int, interval: float = 0.002):
        self.pid, self.interval = pid, interval
        self.pids = procstat.tree(pid)
        self.before_mb = self.peak_mb = procstat.tree_rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0.0
            for pid in self.pids:
                try:
                    total += procstat.rss_mb(pid)
                except OSError:
                    continue
            self.peak_mb = max(self.peak_mb, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def cmd_big(args, workdir: Path) -> dict:
    mail = big_message(args.size_mb * 1024 * 1024)
    corpus_file = workdir / "corpus-big.pickle"
    write_corpus(corpus_file, [mail])
    out = {}
    for name in args.big_servers.split(","):
        with make_server(name, workdir, args) as server:
            time.sleep(0.5)
            sampler = TreeRssSampler(server.pid)
            with sampler:
                res = drive(server, corpus_file, sessions=1, warmup=0.0, duration=1e6,
                            timeout=900)
        size_mb = len(mail.raw) / 1024 / 1024
        # Two figures for a server of several processes: the sum of each process's own peak
        # (an upper bound: they need not peak at once) and the largest total seen by sampling
        # every process every 2 ms (what the machine really had to hold at one moment).
        growth = res["peak_rss_mb"] - res["rss_before_mb"]
        together = sampler.peak_mb - sampler.before_mb
        out[name] = {"size_mb": round(size_mb, 1),
                     "rss_before_mb": res["rss_before_mb"], "peak_rss_mb": res["peak_rss_mb"],
                     "growth_mb": round(growth, 1),
                     "growth_x_size": round(growth / size_mb, 2),
                     "sampled_peak_mb": round(sampler.peak_mb, 1),
                     "sampled_growth_x_size": round(together / size_mb, 2),
                     "processes": len(sampler.pids),
                     "seconds": res["driver_wall_s"], "codes": res["codes"]}
        _say(f"big {name}: {out[name]}")
    return out


def md_big(data: dict) -> str:
    lines = ["| server | processes | message MB | RSS before MB | sum of peaks MB | growth / size "
             "(sum of peaks) | sampled peak MB | growth / size (sampled) | seconds | reply |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in data.items():
        lines.append(f"| {name} | {r['processes']} | {r['size_mb']} | {r['rss_before_mb']:.0f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['growth_x_size']} | "
                     f"{r['sampled_peak_mb']:.0f} | {r['sampled_growth_x_size']} | "
                     f"{r['seconds']:.1f} | {r['codes']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- main

COMMANDS = {"compare": (cmd_compare, md_compare), "pipeline": (cmd_pipeline, md_pipeline),
            "memory": (cmd_memory, md_memory), "big": (cmd_big, md_big)}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("command", nargs="?", default="compare", choices=[*COMMANDS, "all"])
    p.add_argument("--label", default="latest", help="name of the result files")
    p.add_argument("--out", default=str(ROOT / "docs" / "bench"), help="results directory")
    p.add_argument("--workdir", default=None,
                   help="scratch directory for databases and logs (default: a new one in "
                        "$TMPDIR; it must be on the disk you want to measure)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--seed", type=int, default=1)
    g = p.add_argument_group("compare")
    g.add_argument("--rounds", type=int, default=3)
    g.add_argument("--duration", type=float, default=2.5, help="measured seconds per load")
    g.add_argument("--warmup", type=float, default=0.5)
    g.add_argument("--sessions", type=int, default=16)
    g.add_argument("--profiles", default=",".join(corpus.PROFILES))
    g.add_argument("--servers", default=",".join(SERVERS))
    g.add_argument("--quiet-wait", type=float, default=20.0,
                   help="before each load, wait up to this many seconds for an idle machine")
    g.add_argument("--log-level", default="info", help="the sink's log level (info: one line "
                                                        "per message, as in production)")
    g.add_argument("--storage-threads", type=int, default=None,
                   help="the sink's [storage] threads (PostgreSQL writers)")
    g.add_argument("--no-uvloop", dest="uvloop", action="store_false",
                   help="run the bare server on asyncio's loop even when uvloop is installed")
    g.add_argument("--lockstep", action="store_true",
                   help="the driver never pipelines, even where a server offers PIPELINING "
                        "(the load of the rounds before the sink offered it)")
    g = p.add_argument_group("pipeline")
    g.add_argument("--count", type=int, default=3000)
    g.add_argument("--repeat", type=int, default=3)
    g.add_argument("--pipeline-profiles", default="4k-1,100k-1")
    g = p.add_argument_group("memory")
    g.add_argument("--messages", type=int, default=100_000)
    g.add_argument("--memory-servers", default="sqlite")
    g = p.add_argument_group("big")
    g.add_argument("--size-mb", type=int, default=40)
    g.add_argument("--big-servers", default="bare,sqlite,postgres")
    args = p.parse_args(argv)
    if args.uvloop:
        args.uvloop = uvloop_available()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    commands = list(COMMANDS) if args.command == "all" else [args.command]
    workdir = Path(tempfile.mkdtemp(prefix="sink-bench-", dir=args.workdir))
    # mkdtemp makes it 0700; Dovecot's unprivileged processes must enter it to reach their
    # maildirs and sockets (search only: they still cannot list it)
    os.chmod(workdir, 0o711)
    try:
        env = {"machine": machine(), "fsync_ms": fsync_ms(workdir), "workdir": str(workdir),
               "uvloop": args.uvloop, "argv": sys.argv[1:] if argv is None else argv}
        _say(f"machine: {env}")
        for command in commands:
            run, render = COMMANDS[command]
            started = time.time()
            data = run(args, workdir)
            record = {"command": command, "label": args.label, "when": time.strftime(
                "%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - started, 1),
                **env, "results": data}
            base = out_dir / f"{args.label}-{command}"
            base.with_suffix(".json").write_text(json.dumps(record, indent=1, default=str))
            md = (f"`python -m bench.run {' '.join(record['argv']) or command}` — "
                  f"{record['when']}, {record['seconds']} s, {env['machine'].get('cpu')}, "
                  f"{env['machine']['cores']} cores, fsync {env['fsync_ms']} ms, "
                  f"uvloop {'on' if args.uvloop else 'off'}\n\n{render(data)}\n")
            base.with_suffix(".md").write_text(md)
            print(md)
    finally:
        if args.keep:
            _say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
