"""Storage stands alone: one promise for every ingress, whatever runs behind it.

Anything that delivers mail - a listener, a poller, the eml directory - calls
``storage.submit(raw, envelope, boxes)`` and awaits the future: it resolves, after the message's
commit, to one outcome per box (an object with ``message_id``, ``status`` and
``already_stored``), or to the exception to answer 4xx for (nothing of it was committed; the
source keeps the message and tries again). :func:`make_storage` holds every rule about what
runs behind that promise:

- ``[storage] workers`` storage worker processes (:mod:`sink.storage.pool`; the default: one
  per core, at least two on PostgreSQL - one parses and decides while the other waits for its
  commit - and at most four: SQLite's writes take turns on one lock, and beyond four workers
  the lock, not the parsing, is what they wait for; docs/PERFORMANCE.md). On SQLite the
  workers decide ahead of their turn (:mod:`sink.intake.ahead`), so more cores are more
  throughput there too;
- with ``workers = 0`` a group committer in this process's threads
  (:mod:`sink.storage.inprocess`): SQLite one writer, PostgreSQL ``[storage] threads`` writers
  (default 2; more cost more CPU than they save in waiting).

Group commit (:mod:`sink.storage.batching`) is the same code in both.
"""

from __future__ import annotations

import asyncio
import os
from typing import Protocol, Sequence

from sink.config import BoxConfig, Config
from sink.intake import Envelope, Intake


class Storage(Protocol):
    async def start(self) -> None:
        """Ready to take mail (a worker that cannot start raises RuntimeError with its reason)."""

    def submit(self, raw: bytes, envelope: Envelope, boxes: Sequence[BoxConfig],
               started: float | None = None) -> asyncio.Future:
        """One outcome per box once committed, or the exception to answer 4xx for."""

    async def close(self) -> None:
        """Answer everything in hand, then stop."""


def default_workers(dialect: str, cores: int | None = None) -> int:
    cores = cores or os.cpu_count() or 1
    return min(4, cores if dialect == "sqlite" else max(2, cores))


def make_storage(config: Config, engine=None, *, intake: Intake | None = None,
                 workers: int | None = None, threads: int | None = None,
                 stall_timeout: float = 300.0) -> Storage:
    """The storage ``serve`` runs: worker processes, or (``workers`` 0, or an ``intake`` whose
    rules are test doubles) group commit in this process. ``engine`` is disposed of when worker
    processes take over (each opens its own connections)."""
    if intake is not None:
        workers = 0
    if workers is None:
        workers = config.storage_workers
    if workers is None:
        workers = default_workers(engine.dialect.name)
    if workers:
        from sink.storage.pool import WorkerPool
        if engine is not None:
            engine.dispose()
        return WorkerPool(config, workers, stall_timeout=stall_timeout)
    from sink.storage.inprocess import InProcessStorage
    intake = intake or Intake(engine)
    writers = 1 if intake.engine.dialect.name == "sqlite" else (threads or config.storage_threads or 2)
    return InProcessStorage(intake, writers)
