"""Assembly: the clients and syncer for a ``[calendar]`` config, and the background component
``sink serve`` runs every ``interval`` seconds.

The pass runs in a worker thread (httpx and the database are blocking), never on a message's
path: the listeners' event loop only awaits it. ``stop()`` lets the pass finish the page in hand
and returns; the next start resumes from the database state.
"""

from __future__ import annotations

import asyncio
import threading

from sink.calendar.graph import GraphClient
from sink.calendar.sync import CalendarSyncer, Stopped
from sink.calendar.token import TokenProvider
from sink.config.calendar import CalendarConfig
from sink.log import get_logger

log = get_logger("sink.calendar")


def make_syncer(config: CalendarConfig, engine, *, tokens: TokenProvider | None = None,
                **graph_options) -> CalendarSyncer:
    tokens = tokens or TokenProvider(config, retry_after=max(900.0, config.interval))
    graph = GraphClient(config.graph_url, tokens, ca_file=config.ca_file, **graph_options)
    return CalendarSyncer(config, engine, graph)


class CalendarSync:
    """Background component: one pass now, then one every ``interval`` seconds."""

    def __init__(self, config: CalendarConfig, engine, syncer: CalendarSyncer | None = None,
                 notify=None):
        self.config = config
        self.notify = notify            # (kind, subject, body): the [notify] error mails
        self._stopping = threading.Event()
        self.syncer = syncer or make_syncer(config, engine, sleep=self._sleep)
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.passes = 0

    def _sleep(self, seconds: float) -> None:
        """A Retry-After wait that SIGTERM cuts short: shutdown never waits for Graph."""
        if self._stopping.wait(seconds):
            raise Stopped()

    def _notify(self, reports) -> None:
        """A refused secret or failing users in an error mail (the notifier holds back
        repeats of a kind for its min_interval, so a standing problem is one mail)."""
        if self.notify is None:
            return
        refused = [r for r in reports if r.status == "token-refused"]
        failed = [r for r in reports if r.status in ("failed", "no-mailbox")]
        if refused:
            self.notify("credential", "calendar: Entra ID refuses the client secret",
                        f"{refused[0].error}\nNo user's calendar is synchronised until "
                        f"{self.config.client_secret_file} holds a valid secret.\n\n"
                        f"Run: sink calendar sync --json")
        elif failed:
            lines = "\n".join(f"{r.user}: {r.status}: {r.error}" for r in failed[:20])
            self.notify("calendar", f"calendar: {len(failed)} user(s) not synchronised",
                        f"{lines}\nThe others were synchronised.\n\n"
                        f"Run: sink calendar sync --user EMAIL --json")

    async def start(self) -> None:
        self._stopping.clear()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="calendar-sync")

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                reports = await asyncio.to_thread(self.syncer.run, None, self._stopping.is_set)
                self.passes += 1
                log.info("calendar.pass", users=len(reports),
                         failed=sum(r.status == "failed" for r in reports))
                self._notify(reports)
            except Exception:               # the next interval tries again
                log.exception("calendar.pass_crashed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.config.interval)
            except asyncio.TimeoutError:
                pass

    async def stop(self) -> None:
        self._stopping.set()
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        self.syncer.graph.close()
