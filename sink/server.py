"""The LMTP/SMTP listeners: a thin aiosmtpd shell around :class:`sink.intake.Intake`.

Everything a mail administrator sees on the wire is decided in this module:

==========================================  =================================================
situation                                   reply
==========================================  =================================================
RCPT for an address that is not a box       ``550 5.1.1`` at RCPT
more RCPTs than ``max_recipients``          ``452 4.5.3`` (the client sends the rest later)
message over ``max_message_size``           ``552 5.3.4`` (after the data, RFC 5321 4.2.5)
stored and processed (or rules failed:      ``250 2.0.0`` with the stored message id
stored as ``failed`` for replay)
database or storage unavailable             ``451 4.3.0`` - the MTA keeps it and retries
out of disk or database space               ``452 4.3.1``
any error of our own                        ``451 4.3.0`` (never aiosmtpd's default ``500``)
client outside ``allowed_networks``         ``554 5.7.1`` greeting, then close
over ``max_connections``                    ``421 4.7.0`` greeting, then close
==========================================  =================================================

LMTP answers once per accepted RCPT after DATA, in RCPT order (RFC 2033 4.2); aiosmtpd sends
one reply, so the handler returns the per-recipient lines joined by CRLF. Storage runs in
storage worker processes (:mod:`sink.workerpool`; with ``[storage] workers = 0`` in this
process's threads, :mod:`sink.batching`): every message ready at the moment shares one
transaction and one fsync, and each session is answered after its own message's commit. It is
shielded from cancellation: a client that times out or disconnects after the final dot cannot
interrupt a commit half-way (its resend is then recognised as already stored).
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import ssl
import time

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Envelope as SmtpEnvelope, Session, syntax

from sink.batching import GroupCommitter
from sink.config import Config, ListenerConfig
from sink.errors import classify
from sink.intake import Envelope, Intake
from sink.log import get_logger
from sink.textnorm import fold_address

log = get_logger("sink.server")

REPLY_TRANSIENT = "451 4.3.0 Temporary storage failure, try again later"
REPLY_NO_SPACE = "452 4.3.1 Insufficient system storage, try again later"
REPLY_TOO_BIG = "552 5.3.4 Message too big for this system"
REPLY_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
REPLY_NOT_ALLOWED = "554 5.7.1 Your address is not allowed to use this service"
REPLY_BUSY = "421 4.7.0 Too many connections, try again later"

# aiosmtpd's own replies that must not reach an MTA as they are (a bare 500 for a long line
# would bounce the message; its 552 has no enhanced status code).
_REWRITE = {
    "552 Error: Too much mail data": REPLY_TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": REPLY_TOO_BIG,
}


_END_OF_DATA = b"\r\n.\r\n"


def reply_for(error: BaseException) -> str:
    transient = classify(error)
    if transient is not None and transient.no_space:
        return REPLY_NO_SPACE
    return REPLY_TRANSIENT


class ListenerState:
    """Shared by every connection of one listener: limits and the live connection count."""

    def __init__(self, listener: ListenerConfig, live: set):
        self.listener = listener
        self.address = listener.address
        self.live = live
        self.networks = [ipaddress.ip_network(n, strict=False) for n in listener.allowed_networks]
        self.connections = 0

    def allowed(self, peer) -> bool:
        if not peer:
            return False
        try:
            address = ipaddress.ip_address(peer[0].split("%")[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)


class _Guarded:
    """Connection admission and reply rewriting shared by the SMTP and LMTP protocols."""

    state: ListenerState
    _refused = False

    def connection_made(self, transport):
        if getattr(self, "_original_transport", None) is not None:
            # STARTTLS: the TLS layer announces the same connection again. It was admitted
            # and counted once already (counting it twice leaked one slot per TLS session
            # until the listener answered 421 to everyone).
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        state = self.state
        refusal = None
        if not state.allowed(peer):
            refusal = REPLY_NOT_ALLOWED
        elif state.connections >= state.listener.max_connections:
            refusal = REPLY_BUSY
        if refusal:
            self._refused = True
            log.warning("connection.refused", peer=_peer(peer), reply=refusal[:3],
                        listener=state.address)
            transport.write(refusal.encode() + b"\r\n")
            transport.close()
            return
        state.connections += 1
        state.live.add(self)
        log.info("connection.open", peer=_peer(peer), listener=state.address,
                 protocol=state.listener.protocol)
        super().connection_made(transport)

    def connection_lost(self, error):
        if self._refused:
            return
        self.state.connections -= 1
        self.state.live.discard(self)
        log.info("connection.close", peer=_peer(self.session.peer if self.session else None),
                 listener=self.state.address)
        super().connection_lost(error)

    def eof_received(self):
        if self._refused:
            return False
        return super().eof_received()

    async def push(self, status):
        if isinstance(status, str):
            status = _REWRITE.get(status, status)
        await super().push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message in bulk instead of line by line.

        aiosmtpd awaits one line at a time; a line already buffered returns without yielding,
        so a message of millions of short lines kept the event loop - every other session -
        busy for seconds (15 MB of "a" lines: 13 s). Here the end mark CRLF "." CRLF is found
        by the stream's own search (C speed, resumed where it stopped), the dot-stuffing undone
        with one replace, and the semantics are aiosmtpd's: lines end with CRLF only (a bare LF
        or CR is data, so no end-of-data smuggling), a line's leading dot is removed, the size
        limit counts the stuffed bytes and, when exceeded, the rest is read and dropped before
        the 552. The session timeout measures silence during the transfer and is suspended while
        the message is stored."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        reader = self._reader
        # The line end before the data (the DATA command's) belongs to the first end mark, so
        # that an empty message - "." as the first line - ends it too.
        reader._buffer[0:0] = b"\r\n"
        limit = self.data_size_limit
        chunks: list[bytes] = []
        size, too_much = -2, False
        self._receiving_data = True         # the session timeout now measures silence
        try:
            while True:
                try:
                    chunk = await reader.readuntil(_END_OF_DATA)
                    done = True
                except asyncio.LimitOverrunError as error:
                    # No end mark within the stream's limit (the size limit and some): take
                    # what is certainly not part of it; the message is too big in any case.
                    chunk = await reader.read(error.consumed)
                    done = False
                except asyncio.IncompleteReadError:
                    self._writer.close()    # the client went away before the end mark
                    raise asyncio.CancelledError from None
                size += len(chunk)
                if too_much or (limit and size - (3 if done else 0) > limit):
                    too_much = True
                    chunks.clear()
                else:
                    chunks.append(chunk)
                if done:
                    break
        finally:
            self._receiving_data = False
        if too_much:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()
            return
        data = b"".join(chunks)
        chunks.clear()
        chunk = None                  # (the last chunk may be ``data`` itself)
        # At most one copy beside ``data`` (a 40 MB message must not cost five): with no
        # line to un-stuff, the content is one slice.
        if data.find(b"\r\n.", 0, len(data) - 3) < 0:
            original_content = data[2:-3]
        else:
            original_content = data.replace(b"\r\n.", b"\r\n")[2:-2]
        del data
        self.envelope.content = original_content
        self.envelope.original_content = original_content
        del original_content              # the handler decides how long the bytes live
        # Storing is our time, not the client's silence: no timeout until the reply is out
        # (cutting the session then only loses the reply and makes the client send again).
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            if self.transport is not None:      # not after the connection is gone
                self._reset_timeout()
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    _receiving_data = False

    def data_received(self, data: bytes) -> None:
        # aiosmtpd restarts the timeout on each command only, so a message whose transfer
        # took longer than ``timeout`` was cut off however steadily it arrived (a big message
        # over a slow link could never be delivered). During DATA any bytes count as activity.
        if self._receiving_data:
            self._reset_timeout()
        super().data_received(data)


class SinkSMTP(_Guarded, SMTP):
    pass


class SinkLMTP(_Guarded, LMTP):
    pass


def _peer(peer) -> str | None:
    if not peer:
        return None
    return f"{peer[0]}:{peer[1]}" if len(peer) >= 2 else str(peer[0])


class InProcessStorage:
    """Parse, rules and group commit in this process's threads (``[storage] workers = 0``, and
    tests whose rules are test doubles); :class:`sink.workerpool.WorkerPool` is the other kind."""

    def __init__(self, intake: Intake, writers: int):
        self.committer = GroupCommitter(intake, writers=writers)

    async def start(self) -> None:
        pass

    def submit(self, raw: bytes, envelope: Envelope, boxes, started: float) -> asyncio.Future:
        return asyncio.wrap_future(self.committer.submit(raw, envelope, boxes, started))

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.committer.close)


class Handler:
    """aiosmtpd handler hooks: RCPT admission and DATA -> storage -> replies."""

    def __init__(self, config: Config, storage, listener: ListenerConfig, tracker: "InFlight"):
        self.boxes = {b.address: b for b in config.boxes}
        self.storage = storage
        self.listener = listener
        self.lmtp = listener.protocol == "lmtp"
        self.tracker = tracker

    async def handle_RCPT(self, server, session: Session, envelope: SmtpEnvelope, address: str,
                          rcpt_options):
        if fold_address(address) not in self.boxes:
            return f"550 5.1.1 <{address}>: Recipient address rejected: not a box of this sink"
        if len(envelope.rcpt_tos) >= self.listener.max_recipients:
            return REPLY_TOO_MANY_RCPTS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session: Session, envelope: SmtpEnvelope):
        started = time.perf_counter()
        rcpts = [fold_address(r) for r in envelope.rcpt_tos]
        boxes = [self.boxes[a] for a in dict.fromkeys(rcpts)]
        meta = Envelope(channel=self.listener.protocol, mail_from=envelope.mail_from,
                        rcpt_tos=tuple(rcpts))
        outcomes = await self._store(meta, boxes, _take_content(envelope), started)
        if not self.lmtp:
            return _reply(outcomes)
        # LMTP: each box has its own outcome (its own savepoint in the batch) and its own
        # reply, repeated for every RCPT that named it, in RCPT order.
        per_box = {box.address: _reply([outcome]) for box, outcome in zip(boxes, outcomes)}
        return "\r\n".join(per_box[a] for a in rcpts)

    async def _store(self, meta: Envelope, boxes, raw: bytes, started: float) -> list:
        """One outcome per box: a Delivery (or the worker's account of one), or the error to
        answer 4xx for."""
        try:
            future = self.storage.submit(raw, meta, boxes, started)
            del raw
            self.tracker.add(future)
            return list(await asyncio.shield(future))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if classify(error) is None:
                log.exception("message.store_error", error=type(error).__name__)
            return [error] * len(boxes)

    async def handle_exception(self, error: Exception) -> str:
        log.error("session.error", error=f"{type(error).__name__}: {error}"[:300])
        return reply_for(error)


def _take_content(envelope: SmtpEnvelope) -> bytes:
    """The message's bytes, no longer held by the session: once a storage worker has them this
    process keeps no copy while it waits (a 40 MB message would otherwise be held here and in
    the worker at once)."""
    raw = envelope.original_content
    envelope.content = envelope.original_content = None
    return raw


def _reply(outcomes) -> str:
    """The one reply for these outcomes: 4xx when any failed, else 250 with the ids."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            return reply_for(outcome)
    ids = ", ".join(f"#{d.message_id}" for d in outcomes)
    if any(d.status == "failed" for d in outcomes):
        return f"250 2.0.0 Ok: stored as {ids} (rules failed, kept for replay)"
    if any(d.already_stored for d in outcomes):
        return f"250 2.0.0 Ok: already stored as {ids}"
    return f"250 2.0.0 Ok: stored as {ids}"


class InFlight:
    """Storage futures not yet finished: SIGTERM waits for them before exiting."""

    def __init__(self):
        self.futures: set[asyncio.Future] = set()

    def add(self, future: asyncio.Future) -> None:
        self.futures.add(future)
        future.add_done_callback(self.futures.discard)

    async def drain(self, timeout: float) -> int:
        pending = set(self.futures)
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        return len(pending)


def _tls_context(listener: ListenerConfig) -> ssl.SSLContext | None:
    if not listener.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(listener.tls_cert, listener.tls_key)
    return context


class SinkServer:
    """All configured listeners on one event loop, sharing one storage: ``workers`` storage
    worker processes (:mod:`sink.workerpool`), or with ``workers=0`` a group committer in this
    process's threads around ``intake``."""

    def __init__(self, config: Config, intake: Intake | None = None, *, workers: int = 0,
                 threads: int | None = None, stall_timeout: float = 300.0):
        self.config = config
        if workers:
            from sink.workerpool import WorkerPool
            self.storage = WorkerPool(config, workers, stall_timeout=stall_timeout)
        else:
            if intake is None:
                raise ValueError("in-process storage needs an Intake")
            # SQLite has one write lock: one writer, whose batches carry everything.
            # PostgreSQL takes several writers (each with its own batches and connection);
            # more than two cost more CPU than they save in waiting (docs/PERFORMANCE.md).
            if intake.engine.dialect.name == "sqlite":
                writers = 1
            else:
                writers = threads or config.storage_threads or 2
            self.storage = InProcessStorage(intake, writers)
        self.tracker = InFlight()
        self.servers: list[asyncio.AbstractServer] = []
        self.live: set = set()      # open sessions of every listener, closed at shutdown

    def _factory(self, listener: ListenerConfig):
        handler = Handler(self.config, self.storage, listener, self.tracker)
        base = SinkLMTP if listener.protocol == "lmtp" else SinkSMTP
        # One protocol class per listener: its state, and a line limit that only the size limit
        # bounds (RFC 5322's 998 is a SHOULD; a stored message must equal what was sent).
        # aiosmtpd reads line_length_limit in __init__, hence a class attribute.
        state = ListenerState(listener, self.live)
        protocol = type(f"{base.__name__}_{listener.port}", (base,), {
            "state": state,
            "line_length_limit": listener.max_message_size + 1024,
        })
        tls = _tls_context(listener)
        return state, lambda: protocol(handler, data_size_limit=listener.max_message_size,
                                enable_SMTPUTF8=True, decode_data=False,
                                hostname=listener.hostname, ident="crm-sink", tls_context=tls,
                                timeout=listener.timeout)

    async def start(self) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        await self.storage.start()          # no listener before the storage can take mail
        bound = []
        for listener in self.config.listeners:
            state, factory = self._factory(listener)
            server = await loop.create_server(factory, listener.host, listener.port)
            self.servers.append(server)
            host, port = server.sockets[0].getsockname()[:2]
            bound.append((host, port))
            state.address = f"{host}:{port}"
            log.info("listener.started", protocol=listener.protocol, address=f"{host}:{port}")
        return bound

    async def stop(self, grace: float = 60.0) -> None:
        """Stop accepting, let every message in flight commit and get its reply, then close."""
        for server in self.servers:
            server.close()
        left = await self.tracker.drain(grace)
        await asyncio.sleep(0.2)          # let the finished handlers write their replies
        for proto in list(self.live):
            if proto.transport is not None:
                proto.transport.close()
        for server in self.servers:
            await server.wait_closed()
        await self.storage.close()
        log.info("server.stopped", in_flight_at_stop=left)


async def serve_until_signal(server: SinkServer) -> None:
    await server.start()
    from sink.worker import freeze_long_lived
    freeze_long_lived()             # everything loaded so far lives as long as the process
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("server.stopping", in_flight=len(server.tracker.futures))
    await server.stop()


def run(config: Config, engine) -> int:
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
    workers = (default_workers(engine) if config.storage_workers is None
               else config.storage_workers)
    if workers:
        engine.dispose()            # the workers open their own connections
        server = SinkServer(config, workers=workers)
    else:
        server = SinkServer(config, Intake(engine))
    try:
        runner(serve_until_signal(server))
    except RuntimeError as error:       # a storage worker could not start: say why
        log.error("server.start_failed", reason=str(error))
        raise SystemExit(f"sink: error: {error}") from None
    return 0


def default_workers(engine) -> int:
    """Storage worker processes when ``[storage] workers`` is not set (docs/PERFORMANCE.md):
    SQLite one - it has one write lock, and on two cores a second worker only adds overhead;
    PostgreSQL two - one parses and decides while the other waits for its commit."""
    return 1 if engine.dialect.name == "sqlite" else 2
