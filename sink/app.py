"""``sink serve``, assembled in one place: storage, listeners, sources, background tasks,
signals and the order things stop in.

Start: the error mails' sender (it stops last: every part may notify while it stops), storage
(no listener takes mail before the storage can), the suspension state (a suspended instance
must not take one message before it knows), then the listeners, then the sources and
background tasks. Stop (SIGTERM/SIGINT): the listeners stop accepting, the sources stop
fetching (whatever they submitted is still answered), every message in flight is committed and
answered, the sessions close, the storage answers what it holds and stops, and the background
tasks (work after a commit) stop last, then the suspension poller and the error mails' sender.

A *component* (a source, a background task) is any object with ``async start()`` and
``async stop()``; ``start`` returns once it runs, ``stop`` once it has finished its work in hand.
Sources deliver mail (they stop before the storage does); background tasks work after commits
or beside the mail (calendar sync, metrics: they stop after the storage).
"""

from __future__ import annotations

import asyncio
import signal
from typing import Protocol, Sequence

from sink.config import Config
from sink.log import get_logger
from sink.runtime import freeze_long_lived
from sink.sources.listeners import Listeners

log = get_logger("sink.app")


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class SinkApp:
    """One running instance: ``storage`` (:mod:`sink.storage`), the listeners, ``sources`` and
    ``background`` tasks (components, each list in the order they start)."""

    def __init__(self, config: Config, storage, *, sources: Sequence[Component] = (),
                 background: Sequence[Component] = (), suspension=None, notifier=None):
        from sink.operations import Ops
        self.config = config
        self.storage = storage
        # what every part asks or tells operations (sink.operations): app.suspension.active /
        # .store, app.notifier.notify(kind, subject, body), app.metrics
        self.ops = Ops(suspension, notifier=notifier)
        self.suspension, self.notifier, self.metrics = (self.ops.suspension, self.ops.notifier,
                                                        self.ops.metrics)
        self.listeners = Listeners(config, storage, self.ops)
        self.sources = list(sources)
        self.background = list(background)

    async def start(self) -> list[tuple[str, int]]:
        """Start everything; the bound (host, port) of each listener, in config order."""
        self.listeners.prepare()        # a listener's unusable file: before anything runs
        await self.notifier.start()     # first and last: every part may notify meanwhile
        await self.storage.start()
        if hasattr(self.suspension, "start"):
            await self.suspension.start()
        bound = await self.listeners.start()
        for component in (*self.sources, *self.background):
            await component.start()
        return bound

    async def stop(self, grace: float = 60.0) -> None:
        self.listeners.stop_accepting()
        for source in reversed(self.sources):
            await source.stop()
        left = await self.listeners.stop(grace)
        await self.storage.close()
        for task in reversed(self.background):
            await task.stop()
        if hasattr(self.suspension, "stop"):
            await self.suspension.stop()
        await self.notifier.stop()
        log.info("server.stopped", in_flight_at_stop=left)


async def serve_until_signal(app: SinkApp) -> None:
    await app.start()
    freeze_long_lived()             # everything loaded so far lives as long as the process
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("server.stopping", in_flight=len(app.listeners.tracker.futures))
    await app.stop()


def build(config: Config, engine) -> SinkApp:
    """The app ``sink serve`` runs for ``config``: storage, the suspension state, error mails
    (``app.notifier``: started first, stopped last, so every other part can still notify
    while it stops), the ``[[sources]]``, ``[calendar]`` and ``[metrics]``."""
    from sink.notify import Notifier
    from sink.storage import make_storage
    from sink.suspension import Suspension
    notifier = Notifier(config.notify)
    storage = make_storage(config, engine)
    app = SinkApp(config, storage, suspension=Suspension(engine, config.boxes),
                  notifier=notifier)
    if hasattr(storage, "on_restart"):
        storage.on_restart = lambda number, status, lost: notifier.notify(
            "worker_restarted", f"storage worker {number} restarted",
            f"Storage worker {number} exited (exit status {status}); another is being "
            f"started in its place (the log says worker.started, or worker.restart_failed "
            f"while it cannot be). {lost} message(s) it had in hand were answered 451 and "
            f"will be resent by the MTA.\n\nSee the log (worker.exited) and: sink status")
    from sink.sources.poller import make_sources
    app.sources.extend(make_sources(config, storage, engine, app.ops))
    if config.calendar is not None:     # issue 15: in the background, never on a mail's path
        from sink.calendar.service import CalendarSync
        app.background.append(CalendarSync(config.calendar, engine, notify=notifier.notify))
    if config.backup is not None:
        from sink.backup import Backup      # writes committed messages, after their reply
        app.background.append(Backup(config.backup, engine, notify=lambda kind, text:
                                     notifier.notify(kind, "backup directory failing", text)))
    from sink.expiry import CertificateWatch     # certificates about to expire (SPEC 7)
    watch = CertificateWatch(config, notifier.notify)
    if watch.files:
        app.background.append(watch)
    if config.metrics is not None:
        from sink.metrics import MetricsServer
        app.background.append(MetricsServer(config.metrics, app, engine))
    return app


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
        import uvloop  # a dependency wherever it builds (pyproject.toml)
        runner = uvloop.run
    except ImportError:                 # a platform without it: asyncio's own loop
        runner = asyncio.run
    log.info("server.event_loop", loop="asyncio" if runner is asyncio.run else "uvloop")
    app = build(config, engine)
    try:
        runner(serve_until_signal(app))
    except RuntimeError as error:       # a storage worker could not start: say why
        log.error("server.start_failed", reason=str(error))
        raise SystemExit(f"sink: error: {error}") from None
    return 0
