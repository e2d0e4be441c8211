"""The configured LMTP/SMTP listeners on one event loop, all handing mail to one storage."""

from __future__ import annotations

import asyncio
import ssl

from sink.config import Config, ConfigError, ListenerConfig
from sink.log import get_logger
from sink.sources.smtp_handler import Handler, InFlight
from sink.sources.auth import Authenticator, UsersFileError
from sink.sources.smtp_protocol import COMMAND_LINE_LIMIT, ListenerState, SinkLMTP, SinkSMTP

log = get_logger("sink.sources.listeners")


def _tls_context(listener: ListenerConfig, key: str) -> ssl.SSLContext | None:
    """TLS 1.2 or later; with ``tls_client_ca`` a client certificate is asked for and, when
    shown, must verify against that CA (whether one must be shown, and its name, is decided
    after the handshake: :meth:`Handler.handle_STARTTLS`). A file that cannot be used is a
    ConfigError naming its key (``key``: ``listeners[N]``), never "storage unavailable"."""
    if not listener.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(listener.tls_cert, listener.tls_key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"{key}.tls_cert / tls_key: not a usable certificate and key "
                          f"({listener.tls_cert}, {listener.tls_key}: {_reason(error)})") from None
    if listener.tls_client_ca:
        try:
            context.load_verify_locations(cafile=listener.tls_client_ca)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"{key}.tls_client_ca: not a usable CA file "
                              f"({listener.tls_client_ca}: {_reason(error)})") from None
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _authenticator(listener: ListenerConfig, state: ListenerState, key: str):
    if listener.auth != "required":
        return None
    try:
        return Authenticator(listener.auth_users_file, state.limiter)
    except UsersFileError as error:
        raise ConfigError(f"{key}.auth_users_file: {error}") from None


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or getattr(error, "reason", None) or str(error) \
        or type(error).__name__


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
        self.states: list[ListenerState] = []
        self._factories: list | None = None

    def prepare(self) -> None:
        """Build every listener's TLS context and AUTH users before anything starts: a file
        that cannot be used stops ``sink serve`` with a ConfigError (exit 2) naming its key."""
        if self._factories is None:
            self._factories = [self._factory(listener, f"listeners[{i}]")
                               for i, listener in enumerate(self.config.listeners)]

    def _factory(self, listener: ListenerConfig, key: str):
        handler = Handler(self.config, self.storage, listener, self.tracker, self.ops)
        base = SinkLMTP if listener.protocol == "lmtp" else SinkSMTP
        # One protocol class per listener: its state, and the stream limit for command lines
        # (aiosmtpd reads line_length_limit in __init__, hence a class attribute); DATA
        # raises it to what the size limit needs (a message line may be as long as that:
        # RFC 5322's 998 is a SHOULD, and a stored message must equal what was sent).
        state = ListenerState(listener, self.live)
        protocol = type(f"{base.__name__}_{listener.port}", (base,), {
            "state": state,
            "line_length_limit": COMMAND_LINE_LIMIT,
        })
        tls = _tls_context(listener, key)
        authenticator = _authenticator(listener, state, key)
        return state, lambda: protocol(handler, data_size_limit=listener.max_message_size,
                                enable_SMTPUTF8=True, decode_data=False,
                                hostname=listener.hostname, ident="crm-sink", tls_context=tls,
                                timeout=listener.timeout, auth_require_tls=True,
                                auth_required=authenticator is not None,
                                authenticator=authenticator)

    async def start(self) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        bound = []
        self.prepare()
        for i, (listener, (state, factory)) in enumerate(zip(self.config.listeners,
                                                             self._factories)):
            self.states.append(state)
            try:
                server = await loop.create_server(factory, listener.host, listener.port)
            except OSError as error:        # in use, not an address of this host, a low port
                raise ConfigError(f"listeners[{i}].address: cannot listen on "
                                  f"{listener.address} ({_reason(error)})") from None
            self.servers.append(server)
            host, port = server.sockets[0].getsockname()[:2]
            bound.append((host, port))
            state.address = f"{host}:{port}"
            log.info("listener.started", protocol=listener.protocol, address=f"{host}:{port}")
        return bound

    def stop_accepting(self) -> None:
        """SPEC 7: no new connection, and no new transaction (MAIL or DATA: 421 4.3.2)."""
        for state in self.states:
            state.stopping = True
        for server in self.servers:
            server.close()

    def in_data(self) -> int:
        return sum(state.in_data for state in self.states)

    async def stop(self, grace: float = 60.0) -> int:
        """Stop accepting, let every message already in DATA arrive, commit and get its reply
        written, then close every session; returns how many sessions were in DATA when the
        stop began."""
        self.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        left = self.in_data()
        # A session leaves DATA only after its reply was pushed (and drained to the socket):
        # waiting for none in DATA is waiting for every reply, not a hopeful sleep.
        while self.in_data() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await self.tracker.drain(max(0.0, deadline - loop.time()))
        for proto in list(self.live):
            if proto.transport is not None:
                proto.transport.close()
        for server in self.servers:
            await server.wait_closed()
        return left
