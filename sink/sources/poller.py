"""The loop every fetching source runs inside ``sink serve``, and what they share.

One :class:`Poller` per ``[[sources]]`` entry: outside the pause window, holding the lease,
it runs a pass of its worker (:mod:`sink.sources.imap`, :mod:`~sink.sources.pop3`,
:mod:`~sink.sources.emldir`), then waits for the interval (IMAP: in IDLE, so new mail is taken
within seconds). A failing pass is logged as ``source.failed`` and retried after a backoff that
doubles up to the interval (a refused login or token: the whole interval at once, never a
storm against the server or the tenant). Pollers are independent tasks: one that fails never
stops the others or the listeners.

The one promise: :func:`deliver` returns which messages were committed; a worker deletes,
flags, moves or remembers only those.
"""

from __future__ import annotations

import asyncio
import socket
import time as _time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Callable, Sequence

from sink.config import BoxConfig, Config, SourceConfig
from sink.intake import Envelope
from sink.log import get_logger
from sink.sources.state import Lease

log = get_logger("sink.sources")
FIRST_BACKOFF = 2.0


class LoginRefused(Exception):
    """The server or Entra ID refused our credentials: retried only after a whole interval."""


class SentTooMuch(Exception):
    """The server sent more for a fetch than ``max_message_size`` (and the sizes it declared)
    allow: the read stopped there, so the connection is mid-response and is dropped.
    ``keys``: the messages of that fetch (one: that message is the one; several: each is
    fetched alone on the next attempt, to find it)."""

    def __init__(self, keys: Sequence, detail: str):
        super().__init__(detail)
        self.keys = tuple(keys)


# A pass that meets a message sent larger than declared starts again without it (a new
# connection: the old one is mid-response); this many times, then the pass fails.
MAX_RESTARTS = 5


class ServerTooSlow(Exception):
    """The server did not complete an answer within its deadline; the connection was cut."""


# Every exchange with a server has a deadline (Worker.talk): ANSWER_DEADLINE seconds, plus one
# second per MIN_RATE bytes a body fetch declared; a pass's plan (the listing and the sizes of
# a whole mailbox) PLAN_ANSWERS times that, and the connection's set-up (greeting, TLS, login)
# CONNECT_ANSWERS times. The socket's own timeout does not bound a server that trickles a byte
# every 59 seconds.
ANSWER_DEADLINE = 120.0
MIN_RATE = 64 * 1024
PLAN_ANSWERS = 8
CONNECT_ANSWERS = 2     # the connection: TCP, greeting, STARTTLS or the TLS handshake, login


# --------------------------------------------------------------------------- pause window

def in_pause(now: time, start: time | None, stop: time | None) -> bool:
    """Inside ``[start, stop)``, local time; the window may cross midnight; start == stop is
    no window at all."""
    if start is None or stop is None or start == stop:
        return False
    if start < stop:
        return start <= now < stop
    return now >= start or now < stop


def pause_left(now: datetime, start: time | None, stop: time | None) -> float:
    """Seconds until the pause window ends (0 outside it)."""
    if not in_pause(now.time(), start, stop):
        return 0.0
    end = now.replace(hour=stop.hour, minute=stop.minute, second=0, microsecond=0)
    if end <= now:
        end += timedelta(days=1)
    return (end - now).total_seconds()


def backoff(failures: int, interval: float) -> float:
    """Seconds to wait after ``failures`` failed passes in a row: doubling, at most interval."""
    if failures <= 0:
        return 0.0
    return min(interval, FIRST_BACKOFF * 2 ** min(failures - 1, 30))


# ------------------------------------------------------------------------------ delivery

@dataclass
class PassResult:
    """One pass of one source: the JSON line ``sink poll`` prints (SPEC 2.2)."""
    fetched: int = 0
    stored: int = 0
    already_stored: int = 0
    removed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def as_json(self, source: SourceConfig) -> dict:
        return {"source": source.index, "kind": source.kind, "box": source.box,
                "fetched": self.fetched, "stored": self.stored,
                "already_stored": self.already_stored, "removed": self.removed,
                "skipped": self.skipped, "errors": list(self.errors)}


async def deliver(storage, source: SourceConfig, box: BoxConfig, raws: Sequence[bytes],
                  result: PassResult, hold: bool = False) -> list[bool]:
    """Submit every message at once (group commit takes them together); True for each one
    committed. False: not committed (storage answered 4xx) - leave it where it is. ``hold``:
    ``sink suspend --store`` is in force - stored pending, decided on resume."""
    envelope = Envelope(channel=source.kind, rcpt_tos=(box.address,), hold=hold)
    started = _time.perf_counter()
    futures = [storage.submit(raw, envelope, [box], started) for raw in raws]
    answers = await asyncio.gather(*futures, return_exceptions=True)
    committed = []
    for answer in answers:
        outcome = answer if isinstance(answer, BaseException) else list(answer)[0]
        if isinstance(outcome, BaseException):
            committed.append(False)
            reason = f"not committed: {type(outcome).__name__}"
            if reason not in result.errors:
                result.errors.append(reason)
            continue
        committed.append(True)
        if outcome.already_stored:
            result.already_stored += 1
        else:
            result.stored += 1
    return committed


async def pipelined(worker: "Worker", work: list, fetch, handle,
                    declared: Callable[[list], int] = lambda batch: 0) -> None:
    """``fetch(batch)`` (blocking, in the worker's thread, within its deadline for the
    ``declared(batch)`` bytes: :meth:`Worker.talk`) for each batch, then
    ``await handle(batch, fetched)``; the next batch is fetched while this one commits, so at
    most two batches are in hand. Stops between batches when the worker is stopping."""
    def start(batch):
        return asyncio.ensure_future(worker.talk(fetch, batch, size=declared(batch)))
    ahead = None
    try:
        for i, batch in enumerate(work):
            current = ahead or start(batch)
            ahead = None
            fetched = await current
            if i + 1 < len(work) and not worker.stopping.is_set():
                ahead = start(work[i + 1])
            await handle(batch, fetched)
            if worker.stopping.is_set():
                break
    except Exception:
        # A fetch ahead that met a message sent too large left the connection mid-answer, and
        # what ``handle`` then sent on it failed for that reason: say the cause, so that the
        # pass starts again (what this batch committed is found already stored then).
        if ahead is not None:
            failure, ahead = await _failure(ahead), None
            if isinstance(failure, SentTooMuch):
                raise failure from None
        raise
    finally:
        if ahead is not None:           # let the thread finish with it; the result is dropped
            await _failure(ahead)


async def _failure(future: asyncio.Future) -> BaseException | None:
    """``future``'s exception once it is done (None: it succeeded)."""
    try:
        await future
    except Exception as exc:
        return exc
    return None


class Worker:
    """What a source kind implements; blocking work goes through :meth:`call` (its own thread,
    so a slow server never blocks the event loop the listeners share)."""

    def __init__(self, source: SourceConfig, config: Config, storage, engine):
        self.source = source
        self.box = config.box(source.box)
        self.storage = storage
        self.engine = engine
        self.stopping = asyncio.Event()
        self.hold = False               # set by the poller while `sink suspend --store` holds
        self.notifier = None            # set by the poller in `sink serve` (sink.notify)
        self.too_big_logged: set = set()
        self.sent_too_much: set = set()     # messages a server sent larger than it declared
        self.wire: socket.socket | None = None  # the connection's socket, for cut() (watch)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"source{source.index}")

    def leave_on_server(self, result: PassResult, key, size: int | None, **where) -> None:
        """A message larger than ``max_message_size`` - declared so (``size``), or sent so
        (None: more than the limit arrived although less was declared) - stays on the server
        and counts as skipped; it is logged and notified once (SPEC 2.2), never deleted."""
        result.skipped += 1
        if key in self.too_big_logged:
            return
        self.too_big_logged.add(key)
        limit = self.source.max_message_size
        log.warning("source.message_too_big", source=self.source.index, size=size,
                    sent_more_than_declared=size is None, limit=limit, **where)
        if self.notifier is not None:
            what = ", ".join(f"{k} {v}" for k, v in where.items())
            how = (f"{size} bytes" if size is not None else
                   "declared smaller, but the server sent more than that")
            self.notifier.notify(
                "message_too_big", f"source {self.source.index}: a message too large to take",
                f"Source {self.source.index} ({self.source.describe()}, box {self.source.box}) "
                f"left a message on the server: {what}; {how}, max_message_size is {limit}."
                f"\nIt is never deleted there. Raise max_message_size for the source, or "
                f"deal with the message in the mailbox.\n\nRun: sink status")

    async def restarting(self, attempt) -> None:
        """``await attempt()``, and again after each SentTooMuch (its connection dropped, its
        message marked: :meth:`sent_too_much_in`), at most MAX_RESTARTS times."""
        restarts = 0
        while True:
            try:
                return await attempt()
            except SentTooMuch as lie:
                if restarts >= MAX_RESTARTS:
                    raise
                restarts += 1
                await self.sent_too_much_in(lie.keys)

    async def sent_too_much_in(self, keys: tuple) -> None:
        """A fetch of the messages ``keys`` brought more than allowed, and its connection is
        already closed. Here (one message a fetch) the key is that message: the next plan
        leaves it on the server. A kind that fetches several at once says how to find it."""
        self.sent_too_much.update(keys)

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def talk(self, fn, *args, size: int = 0, answers: int = 1, waiting: float = 0.0):
        """:meth:`call` for work that waits on the server: ``answers`` exchanges' deadline
        (ANSWER_DEADLINE each), a second per MIN_RATE of the ``size`` declared, and the
        ``waiting`` that is the work's own (IDLE). Past it the connection is cut from this
        thread (:meth:`cut`: the blocked read then returns) and ServerTooSlow raised; the
        pass fails and is tried again after the backoff."""
        seconds = ANSWER_DEADLINE * answers + size / MIN_RATE + waiting
        future = asyncio.ensure_future(self.call(fn, *args))
        try:
            return await asyncio.wait_for(asyncio.shield(future), seconds)
        except asyncio.TimeoutError:
            self.cut()
            await _failure(future)
            raise ServerTooSlow(f"no complete answer within {seconds:.0f} s; the connection "
                                f"was cut") from None

    tokens = None                       # an OAuth2 source's token source (sink.sources.oauth)

    async def connect(self):
        """``self._connect(token)`` in the source's thread within CONNECT_ANSWERS answers'
        deadline: the TCP connection, greeting, TLS and login. The OAuth2 token is fetched
        first, outside that deadline (Entra ID's time is not the server's; msal bounds its
        own). Whatever fails, the socket watched for :meth:`cut` is let go."""
        token = await self.call(self.tokens.token) if self.source.oauth else None
        try:
            return await self.talk(self._connect, token, answers=CONNECT_ANSWERS)
        except BaseException:
            self.unwatch()
            raise

    def watch(self, sock: socket.socket) -> None:
        """Called by the connecting thread the moment the TCP connection stands, before the
        greeting or a TLS handshake is read: from then on :meth:`cut` can end it. A duplicate
        descriptor of the same socket: it stays valid when TLS wraps (detaches) the original,
        and shutting it down ends the connection for both."""
        self.unwatch()
        self.wire = sock.dup()

    def unwatch(self) -> None:
        """The connection is closed (or was never made): forget its socket."""
        wire, self.wire = self.wire, None
        if wire is not None:
            wire.close()

    def cut(self) -> None:
        """Shut the server connection's socket, from any thread: the read blocked on it in
        the source's thread returns."""
        wire = self.wire
        if wire is not None:
            try:
                wire.shutdown(socket.SHUT_RDWR)
            except OSError:                 # already closed, by either side
                pass

    async def run_pass(self) -> PassResult:
        raise NotImplementedError

    async def wait(self, seconds: float) -> None:
        """Between passes: sleep (IMAP overrides it with IDLE)."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def close(self) -> None:
        """Drop the connection (after a failure, or at stop)."""

    def shutdown(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


# -------------------------------------------------------------------------------- poller

class Poller:
    """One source inside ``sink serve``: a component (async start/stop)."""

    def __init__(self, worker: Worker, *, clock: Callable[[], datetime] = datetime.now,
                 lease: Lease | None = None, ops=None):
        self.worker = worker
        self.ops = ops                  # sink.operations.Ops: suspension, notifier (serve)
        if ops is not None:
            worker.notifier = ops.notifier
        self.source = worker.source
        self.clock = clock
        self.lease = lease or Lease(worker.engine, worker.source.key)
        self.task: asyncio.Task | None = None
        self.failures = 0
        self.last_success: float | None = None
        self.last_error: str | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"source{self.source.index}")

    async def stop(self) -> None:
        self.worker.stopping.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 60)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self.task.cancel()
        await self.worker.call(self.lease.release)
        self.worker.shutdown()

    async def _run(self) -> None:
        while not self.worker.stopping.is_set():
            try:
                delay = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:           # a bug here must not end this source for good
                log.exception("source.loop_error", source=self.source.index)
                delay = self.source.interval
            if delay:
                await self.worker.wait(delay)

    async def step(self) -> float:
        """One turn of the loop; returns how long to wait before the next one."""
        source = self.source
        paused = pause_left(self.clock(), source.stop_from, source.stop_to)
        if paused:
            await self.worker.close()
            log.info("source.paused", source=source.index, seconds=round(paused))
            return min(paused, 60.0)        # the clock is looked at again each minute
        suspension = self.ops.suspension if self.ops is not None else None
        if suspension is not None and suspension.active and not suspension.store:
            await self.worker.close()       # `sink suspend`: no connection until resumed
            return 1.0
        self.worker.hold = bool(suspension is not None and suspension.store)
        try:
            if not await self.worker.call(self.lease.acquire):
                log.info("source.leased_elsewhere", source=source.index)
                await self.worker.close()
                return source.interval
            started = _time.monotonic()
            result = await self.worker.run_pass()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return await self._failed(exc)
        self.failures, self.last_success, self.last_error = 0, _time.time(), None
        await self._record(None)
        log.info("source.polled", source=source.index, kind=source.kind, box=source.box,
                 seconds=round(_time.monotonic() - started, 3),
                 **{k: v for k, v in result.as_json(source).items()
                    if k not in ("source", "kind", "box")})
        return source.interval

    async def _failed(self, exc: Exception) -> float:
        self.failures += 1
        reason = describe_error(exc)
        self.last_error = reason
        await self.worker.close()
        delay = (self.source.interval if isinstance(exc, LoginRefused)
                 else backoff(self.failures, self.source.interval))
        log.warning("source.failed", source=self.source.index, kind=self.source.kind,
                    box=self.source.box, where=self.source.describe(), reason=reason,
                    failures=self.failures, retry_in=round(delay, 1))
        await self._record(reason)
        if self.ops is not None:
            self.ops.notifier.notify(
                "source_failing", f"source {self.name} failing",
                f"Source {self.name} ({self.source.describe()}, box {self.source.box}) failed "
                f"{self.failures} time(s) in a row: {reason}\nNothing is removed from it "
                f"until its messages are committed; next try in {round(delay)} s.\n\n"
                f"Run: sink status; sink poll --source {self.source.index}")
        return delay

    @property
    def name(self) -> str:
        """The source as `sink status` and the metric label name it."""
        return f"{self.source.index}:{self.source.describe()}"

    async def _record(self, error: str | None) -> None:
        """The pass's outcome in ``source_status`` (sink status, the last-success metric);
        a database that does not answer costs the record, never the pass."""
        from sink.db.source_status import record_error, record_success

        def write():
            with self.worker.engine.begin() as conn:
                if error is None:
                    record_success(conn, self.name)
                else:
                    record_error(conn, self.name, error)
        try:
            await self.worker.call(write)
        except Exception as exc:
            log.warning("source.status_unrecorded", source=self.source.index,
                        error=type(exc).__name__)


def describe_error(exc: BaseException) -> str:
    """A one-line reason for logs and ``sink poll``: the exception's type and message, cut
    short (our exceptions never carry a secret; a server's reply is at most quoted)."""
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def make_worker(source: SourceConfig, config: Config, storage, engine,
                tokens=None) -> Worker:
    if source.kind == "imap":
        from sink.sources.imap import ImapWorker
        return ImapWorker(source, config, storage, engine, tokens)
    if source.kind == "pop3":
        from sink.sources.pop3 import Pop3Worker
        return Pop3Worker(source, config, storage, engine, tokens)
    from sink.sources.emldir import EmlDirWorker
    return EmlDirWorker(source, config, storage, engine)


def token_sources(config: Config) -> dict:
    """One msal application per distinct app registration (its token cache shared)."""
    from sink.sources.oauth import TokenSource
    found: dict = {}
    for source in config.sources:
        if source.oauth is not None and source.oauth not in found:
            found[source.oauth] = TokenSource(source.oauth)
    return found


def make_sources(config: Config, storage, engine, ops=None) -> list[Poller]:
    """The components ``sink serve`` adds: one poller per ``[[sources]]`` entry; ``ops``
    (sink.operations.Ops) for suspend, status and error mails."""
    tokens = token_sources(config)
    return [Poller(make_worker(s, config, storage, engine, tokens.get(s.oauth)), ops=ops)
            for s in config.sources]
