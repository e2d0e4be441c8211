"""Where a server's CPU goes under the benchmark's load: py-spy samples of the thread holding
the GIL (``--gil``: a Python process does one thing at a time; that is what limits it).

    python -m bench.profile --server sqlite --profile 4k-1 --seconds 10

needs ``py-spy`` (``pip install py-spy``; root or ptrace permission). Writes
``<out>/profile-<server>-<profile>.txt``: the share of each part of the pipeline, then the
functions with the most samples (self and cumulative).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import time
import sys
import tempfile
from pathlib import Path

from bench import corpus, procstat
from bench.run import RATE_CAP, drive, make_server, write_corpus
from bench.servers import ROOT, uvloop_available

# A sample belongs to the first part with a marker matching one frame of its stack. A marker is
# (a fragment of the frame's file, the frame's function or None for any): py-spy writes a frame
# as "function (file:line)" with the bare function name (no class) and site-packages stripped.
# The order decides where a frame belongs to two parts:
# - DKIM first: it runs in a thread pool (sink.storage.worker.with_dkim), whose stacks begin in
#   threading.py, and inline in Intake.prepare when no worker verified it;
# - then every SQL statement, wherever it is issued (the rules' read-only look-ups too): what
#   the database layer costs, apart from the Python of ours around it;
# - the rules: everything under the chain's loop in sink/pipeline/chain.py;
# - log lines before storage (log_one reads the decision), parse (Intake.prepare) before the
#   storage Python that calls it;
# - aiosmtpd before the parse fallbacks: it parses RCPT addresses with email/, and that is
#   protocol work.
# Stacks of coroutines run by uvloop are cut at the C loop, so module paths decide where the
# root frame is missing.
PARTS = (
    ("DKIM: sink.mail.dkim, dkimpy (a thread pool)", (("sink/mail/dkim.py", None),
                                                       ("dkim/", None),
                                                       ("sink/storage/worker.py", "with_dkim"))),
    ("storage: SQL statements and commit (SQLAlchemy, driver, sink.db)",
     (("sqlalchemy/", None), ("psycopg/", None), ("psycopg_binary/", None), ("sink/db/", None))),
    ("rules: sink.pipeline.chain.evaluate", (("sink/pipeline/chain.py", None),)),
    ("log lines", (("sink/intake/core.py", "log_delivery"), ("sink/intake/core.py", "log_one"),
                   ("sink/storage/batching.py", "log_batch"), ("structlog/", None))),
    ("parse: sha256, MIME parse, unwrap, attachment listing",
     (("sink/intake/core.py", "prepare"),)),
    ("storage: the Python around the statements (intake, savepoints, executor)",
     (("sink/storage/batching.py", "store_one"), ("sink/storage/batching.py", "commit_batch"),
      ("sink/executor.py", None), ("sink/intake/", None))),
    ("frames to and from the storage workers", (("sink/storage/frames.py", None),
                                                ("sink/storage/pool.py", None),
                                                ("pickle", None))),
    ("protocol: aiosmtpd on the event loop", (("aiosmtpd/", None), ("sink/sources/", None),
                                              (None, "run_forever"))),
    ("parse: sha256, MIME parse, unwrap, attachment listing",
     (("email/", None), ("sink/mail/", None))),
    ("rules: sink.pipeline.chain.evaluate", (("sink/pipeline/", None), ("icalendar/", None))),
    ("protocol: aiosmtpd on the event loop", (("asyncio/", None), ("uvloop", None))),
    ("thread hand-offs", (("threading.py", None), ("concurrent/futures", None),
                          ("sink/storage/batching.py", None))),
    ("the storage worker's loop: batches, replies", (("sink/storage/worker.py", None),)),
)


def _frame(frame: str) -> tuple[str, str]:
    """``function (file:line)`` -> (function, file)."""
    function, _, where = frame.rpartition(" (")
    return function, where.rstrip(")").rpartition(":")[0] or where.rstrip(")")


def _named(func: str, function: str) -> bool:
    """Whether py-spy's name of a frame is ``function``: py-spy 0.4 qualifies a method with its
    class (``Intake.prepare``) and a nested function with its parents (``f.<locals>.g``)."""
    return func == function or func.endswith("." + function)


def part_of(frames: list[str]) -> str:
    """The part of :data:`PARTS` a stack of py-spy frames (root first) belongs to."""
    parsed = [_frame(f) for f in frames]
    for name, markers in PARTS:
        for path, function in markers:
            if any((path is None or path in file) and (function is None or _named(func, function))
                   for func, file in parsed):
                return name
    return "other"


def _short(frame: str) -> str:
    for prefix in (sys.prefix + "/lib/python", str(ROOT) + "/"):
        frame = frame.replace(prefix, "")
    return frame.split("site-packages/")[-1]


def summarize(raw: Path, top: int = 30) -> str:
    parts, own, cumulative, total = collections.Counter(), collections.Counter(), \
        collections.Counter(), 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            cumulative[frame] += n
        parts[part_of(frames)] += n
    out = [f"{total} samples of the thread holding the GIL", "", "| part | share |", "|---|---:|"]
    out += [f"| {name} | {n / total * 100:.0f}% |" for name, n in parts.most_common()]
    out += ["", "self:"] + [f"{n / total * 100:5.1f}%  {_short(f)}"
                            for f, n in own.most_common(top)]
    out += ["", "cumulative:"] + [f"{n / total * 100:5.1f}%  {_short(f)}"
                                  for f, n in cumulative.most_common(top)]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    p.add_argument("--server", default="sqlite", help="bare, sqlite, postgres (NAME:asyncio too)")
    p.add_argument("--profile", default="4k-1", choices=corpus.PROFILES)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "docs" / "bench"))
    args = p.parse_args(argv)
    # Made before the run, not after it: a missing --out directory lost a whole profile.
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.server.startswith("dovecot"):
        raise SystemExit("py-spy samples Python processes; Dovecot is not one (use perf)")
    if not shutil.which("py-spy"):
        raise SystemExit("py-spy is not installed: pip install py-spy")
    args.uvloop, args.log_level, args.storage_threads = uvloop_available(), "info", None
    work = Path(tempfile.mkdtemp(prefix="sink-profile-"))
    try:
        corpus_file = work / "corpus.pickle"
        # enough for the whole run at RATE_CAP, but at most ~600 MB of mail: a profile that
        # runs out stops early, and its figures per message stay right (divided by the sent)
        count = min(int(RATE_CAP[args.profile] * (args.seconds + 1) * 1.2),
                    600 * 1024 * 1024 // corpus.SIZES[args.profile.split("-")[0]])
        write_corpus(corpus_file, corpus.build(args.profile, count))
        with make_server(args.server, work, args) as server:
            time.sleep(0.5)                     # the storage workers are up
            pids = procstat.tree(server.pid)    # the server and its storage workers
            spies = {pid: subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--gil", "--nonblocking", "--rate",
                 "200", "--format", "raw", "--duration", str(args.seconds), "--output",
                 str(work / f"samples-{pid}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for pid in pids}
            cpu0 = {pid: procstat.cpu_seconds(pid) for pid in pids}
            try:
                result = drive(server, corpus_file, sessions=args.sessions, warmup=0.3,
                               duration=args.seconds)
                cpu1 = {pid: procstat.cpu_seconds(pid) for pid in pids}
                for spy in spies.values():
                    spy.wait(args.seconds + 30)
            finally:
                for spy in spies.values():
                    if spy.poll() is None:
                        spy.kill()
                        spy.wait()
        sent = max(1, result["sent_total"])
        head = (f"`python -m bench.profile --server {args.server} --profile {args.profile} "
                f"--seconds {args.seconds}`: {result['rate']} msgs/s, server CPU "
                f"{result.get('server_cpu_ms')} ms/msg, p99 {result['p99_ms']} ms"
                + (f" (ran out of its {count} messages: the rate is a lower bound)"
                   if result["exhausted"] else "") + "\n\n")
        text = head
        for number, pid in enumerate(pids):
            role = "protocol process" if number == 0 else f"storage worker {number}"
            text += (f"## {role} (pid {pid}): {(cpu1[pid] - cpu0[pid]) / sent * 1000:.3f} ms "
                     f"of CPU per message over the whole run\n\n"
                     + summarize(work / f"samples-{pid}.txt") + "\n")
        target = Path(args.out) / f"profile-{args.server.replace(':', '-')}-{args.profile}.txt"
        target.write_text(text)
        print(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
