"""Where :func:`sink.pipeline.evaluate` spends its CPU on the bench corpus: cProfile over the
rules alone (the MIME parse is done before the profiler starts).

    python -m bench.rules_profile --profile 4k-1 --count 2000 --top 30

Prints the functions with the most cumulative and own time, and the rules' microseconds per
message without the profiler (best of ``--repeat``). The directory and box are the ones
``python -m bench.run pipeline`` uses, so the figures compare with its ``rules`` column.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path


def setup(workdir: Path):
    """(box, directory) as the pipeline bench builds them: a fresh SQLite database."""
    from bench import corpus
    from bench.servers import prepare_database
    from sink.config import parse_config
    from sink.db.directory_store import load_directory
    from sink.db.engine import make_engine
    url = f"sqlite:///{workdir}/rules-profile.db"
    prepare_database(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        directory = load_directory(conn)
    engine.dispose()
    config = parse_config({"database": {"url": url}, "listeners": [],
                           "boxes": [{"address": b} for b in corpus.BOXES]})
    return config.boxes[0], directory


def run_rules(parsed, box, directory):
    """Every message through the chain, with the bench's dedup memory."""
    from sink.pipeline import evaluate
    seen_keys: set = set()

    def seen(keys):
        return any(k in seen_keys for k in keys)

    for p in parsed:
        d = evaluate(p, box, directory, seen)
        if d.verdict != "DUPLICATE":
            seen_keys.update(d.dedup_keys)


def by_rule(parsed, box, directory) -> dict[str, float]:
    """CPU seconds spent in each rule's ``run`` (a cached Context fact is charged to the first
    rule that asks for it), with the chain's own bookkeeping as "(chain)"."""
    from sink.pipeline import chain as chain_module
    spent: dict[str, float] = {}
    clock = time.perf_counter

    def timed(rule):
        def run(ctx):
            t0 = clock()
            try:
                return rule.run(ctx)
            finally:
                spent[rule.name] = spent.get(rule.name, 0.0) + clock() - t0
        return chain_module.Rule(rule.name, run)

    original = chain_module.chain_for
    chain_module.chain_for = lambda box, own=(): tuple(timed(r) for r in original(box, own))
    try:
        t0 = clock()
        run_rules(parsed, box, directory)
        total = clock() - t0
    finally:
        chain_module.chain_for = original
    spent["(chain)"] = total - sum(spent.values())
    return spent


def main(argv=None) -> int:
    from bench import corpus
    from sink.mail.parse import parse_message
    ap = argparse.ArgumentParser(prog="python -m bench.rules_profile")
    ap.add_argument("--profile", default="4k-1")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rules-profile-") as tmp:
        box, directory = setup(Path(tmp))
    # the same seed offset as bench.run's pipeline command: the same messages
    raws = [m.raw for m in corpus.build(args.profile, args.count, seed=args.seed + 100)]
    parsed = [parse_message(raw) for raw in raws]
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.process_time()
        run_rules(parsed, box, directory)
        best = min(best, time.process_time() - t0)
    print(f"rules {args.profile}: {best / len(parsed) * 1e6:.1f} us/msg "
          f"(best of {args.repeat}, {len(parsed)} messages)")
    spent = by_rule(parsed, box, directory)
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:20s} {seconds / len(parsed) * 1e6:7.1f} us/msg")
    profiler = cProfile.Profile()
    profiler.enable()
    run_rules(parsed, box, directory)
    profiler.disable()
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(args.top)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
