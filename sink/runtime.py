"""Process-wide tuning shared by the listener process and the storage workers."""

from __future__ import annotations

import gc


def freeze_long_lived() -> None:
    """Keep the objects that live as long as the process - modules, the directory snapshot
    (thousands of contacts), SQLAlchemy's caches - out of the cyclic garbage collector's way: a
    full collection walked all of them, ~30 ms during which this worker answered nobody (a p99
    of its own). Called once they are loaded, and again after a directory import (the old
    snapshot, freed by reference counting, is first collected with everything else)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
