"""The configured LMTP/SMTP listeners on one event loop, all handing mail to one storage."""

from __future__ import annotations

import asyncio
import ssl

from sink.config import Config, ListenerConfig
from sink.log import get_logger
from sink.sources.smtp_handler import Handler, InFlight
from sink.sources.smtp_protocol import ListenerState, SinkLMTP, SinkSMTP

log = get_logger("sink.sources.listeners")


def _tls_context(listener: ListenerConfig) -> ssl.SSLContext | None:
    if not listener.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(listener.tls_cert, listener.tls_key)
    return context



class Listeners:
    """Every ``[[listeners]]`` entry, bound by :meth:`start`; :meth:`stop` ends them with every
    message in flight answered."""

    def __init__(self, config: Config, storage, ops=None):
        self.config = config
        self.storage = storage
        self.ops = ops          # sink.operations.Ops: suspension, metrics, notifications
        self.tracker = InFlight()
        self.servers: list[asyncio.AbstractServer] = []
        self.live: set = set()      # open sessions of every listener, closed at shutdown


    def _factory(self, listener: ListenerConfig):
        handler = Handler(self.config, self.storage, listener, self.tracker, self.ops)
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

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()

    async def stop(self, grace: float = 60.0) -> int:
        """Stop accepting, let every message in flight commit and get its reply, then close
        every session; returns how many were still in flight when the stop began."""
        self.stop_accepting()
        left = await self.tracker.drain(grace)
        await asyncio.sleep(0.2)          # let the finished handlers write their replies
        for proto in list(self.live):
            if proto.transport is not None:
                proto.transport.close()
        for server in self.servers:
            await server.wait_closed()
        return left
