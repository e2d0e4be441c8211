"""Garbage-collector pauses of every Python process started with this folder on PYTHONPATH.

    PYTHONPATH=bench/gcprobe python -m bench.run compare --profiles 4k-1 --servers sqlite \
        --rounds 1 --duration 10 --out /tmp/gcprobe

Each process (the benchmark, its driver, ``sink serve`` and its storage workers, which inherit
PYTHONPATH) writes /tmp/gcpauses-PID.txt at exit: its command line, then every full (generation
2) collection and every collection longer than 3 ms as (seconds since start, generation, ms,
objects collected). Used for docs/PERFORMANCE.md item 12.
"""

import atexit
import gc
import os
import sys
import time

_T0 = time.monotonic()
_EVENTS: list[tuple] = []
_STARTED: dict[int, float] = {}


def _timed(phase: str, info: dict) -> None:
    generation = info["generation"]
    if phase == "start":
        _STARTED[generation] = time.perf_counter()
        return
    took = time.perf_counter() - _STARTED.get(generation, time.perf_counter())
    if generation == 2 or took > 0.003:
        _EVENTS.append((round(time.monotonic() - _T0, 2), generation, round(took * 1000, 1),
                        info.get("collected")))


def _write() -> None:
    with open(f"/tmp/gcpauses-{os.getpid()}.txt", "w") as out:
        out.write(" ".join(sys.argv) + "\n" + repr(_EVENTS) + "\n")


gc.callbacks.append(_timed)
atexit.register(_write)
