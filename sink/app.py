"""``sink serve``, assembled in one place: storage, listeners, sources, background tasks,
signals and the order things stop in.

Start: storage first (no listener takes mail before the storage can), then the listeners, then
the sources and background tasks. Stop (SIGTERM/SIGINT): the listeners stop accepting, the
sources stop fetching (whatever they submitted is still answered), every message in flight is
committed and answered, the sessions close, the storage answers what it holds and stops, and
the background tasks (work after a commit) stop last.

A *component* (a source, a background task) is any object with ``async start()`` and
``async stop()``; ``start`` returns once it runs, ``stop`` once it has finished its work in hand.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Protocol, Sequence

from sink.config import Config
from sink.log import get_logger
from sink.sources.listeners import Listeners

log = get_logger("sink.app")


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class SinkApp:
    """One running instance: ``storage`` (:mod:`sink.storage`), the listeners, and
    ``components`` (sources, background tasks) in the order they start."""

    def __init__(self, config: Config, storage, components: Sequence[Component] = ()):
        self.config = config
        self.storage = storage
        self.listeners = Listeners(config, storage)
        self.components = list(components)

    async def start(self) -> list[tuple[str, int]]:
        """Start everything; the bound (host, port) of each listener, in config order."""
        await self.storage.start()
        bound = await self.listeners.start()
        for component in self.components:
            await component.start()
        return bound

    async def stop(self, grace: float = 60.0) -> None:
        self.listeners.stop_accepting()
        for component in reversed(self.components):
            await component.stop()
        left = await self.listeners.stop(grace)
        await self.storage.close()
        log.info("server.stopped", in_flight_at_stop=left)


async def serve_until_signal(app: SinkApp) -> None:
    await app.start()
    from sink.storage.worker import freeze_long_lived
    freeze_long_lived()             # everything loaded so far lives as long as the process
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("server.stopping", in_flight=len(app.listeners.tracker.futures))
    await app.stop()


def build(config: Config, engine) -> SinkApp:
    """The app ``sink serve`` runs for ``config``."""
    from sink.storage import make_storage
    components: list[Component] = []
    if config.backup is not None:
        from sink.backup import Backup      # writes committed messages, after their reply
        components.append(Backup(config.backup, engine))
    return SinkApp(config, make_storage(config, engine), components)


def run(config: Config, engine) -> int:
    """``sink serve``: refuse storage that is not durable, then serve until SIGTERM."""
    from sink.db.engine import DurabilityError, check_durability
    try:
        settings = check_durability(engine)
    except DurabilityError as exc:
        log.error("durability.refused", reason=str(exc))
        raise SystemExit(f"sink: error: refusing to start: {exc}") from None
    log.info("durability.ok", **settings)
    try:
        import uvloop  # noqa: F401 - optional speed-up
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    app = build(config, engine)
    try:
        runner(serve_until_signal(app))
    except RuntimeError as error:       # a storage worker could not start: say why
        log.error("server.start_failed", reason=str(error))
        raise SystemExit(f"sink: error: {error}") from None
    return 0
