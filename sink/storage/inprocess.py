"""Storage in the listener's own process: parse, rules and group commit in threads
(``[storage] workers = 0``, and tests whose rules are test doubles)."""

from __future__ import annotations

import asyncio

from sink.intake import Envelope, Intake
from sink.storage.batching import GroupCommitter


class InProcessStorage:
    """:class:`sink.storage.pool.WorkerPool` is the other kind."""

    def __init__(self, intake: Intake, writers: int):
        self.committer = GroupCommitter(intake, writers=writers)

    async def start(self) -> None:
        pass

    def submit(self, raw: bytes, envelope: Envelope, boxes, started: float) -> asyncio.Future:
        return asyncio.wrap_future(self.committer.submit(raw, envelope, boxes, started))

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.committer.close)


