"""The LMTP/SMTP protocol classes: connection admission and the bulk DATA reader.

This is the one module that reaches into aiosmtpd's private attributes (``_reader``,
``_writer``, ``_timeout_handle``, ``_reset_timeout``, ``_set_post_data_state``,
``_call_handler_hook``, ``_original_transport``, ``_getaddr``, ``_authenticate``,
``_authenticator``, ``_handler_coroutine``, ``_smtp_methods``, ``_timeout_cb``), the module
function ``aiosmtpd.smtp.sanitized_log`` (replaced: see :func:`_sanitized_log`) and asyncio's
``StreamReader._buffer`` and ``._limit``; keep it so: no other module of the sink may touch
them. ``tests/test_door.py`` (:data:`AIOSMTPD_PRIVATES`) names them, so an aiosmtpd upgrade
that changes them fails loudly (and pyproject pins aiosmtpd below 1.5).

Issue 16 (CPU per message): aiosmtpd parses every MAIL FROM and RCPT TO path with the RFC 5322
header parser and defines a class on every call (a quarter of the protocol process's CPU);
:func:`simple_path` answers the common RFC 5321 forms itself, with exactly aiosmtpd's result,
and hands every other path to aiosmtpd (``tests/test_edge_speed.py`` proves the agreement).

Issue 13 (trust at the door): command lines are read with a 4,096-octet stream limit (only
DATA raises it, to what the size limit needs), so eight unterminated lines cannot park 500 MB;
connections are limited per client address too; the whole DATA phase has a deadline; the size
limit counts the message as stored (RFC 1870: dot-stuffing excluded); MAIL needs STARTTLS when
``require_tls`` and AUTH when ``auth = "required"``; AUTH failures are limited per address; at
shutdown new transactions get ``421 4.3.2`` and every message in DATA is answered first.

AUTH's password check (scrypt: ~50-100 ms of CPU and 16 MiB) runs in a thread of
:data:`AUTH_CHECKS`, never on the event loop that every other session shares: aiosmtpd calls
its ``authenticator`` synchronously, so :meth:`_Guarded._authenticate` keeps what the
client sent and ``auth_PLAIN`` / ``auth_LOGIN`` verify it in the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from concurrent.futures import ThreadPoolExecutor

import aiosmtpd.smtp
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, syntax

from sink.config import ListenerConfig
from sink.log import get_logger
from sink.sources.auth import FailureLimiter
from sink.sources.replies import (REPLY_AUTH_BLOCKED, REPLY_BUSY, REPLY_BUSY_CLIENT,
                                  REPLY_DATA_DEADLINE, REPLY_NEED_TLS, REPLY_NO_MAIL,
                                  REPLY_NOT_ALLOWED, REPLY_SHUTTING_DOWN, REPLY_TLS_ACTIVE,
                                  REWRITE, with_status_code)

log = get_logger("sink.sources.smtp")

_END_OF_DATA = b"\r\n.\r\n"
COMMAND_LINE_LIMIT = 4096          # SPEC 2.1, whatever max_message_size is
DATA_PIECE = 1024 * 1024           # DATA is read in pieces of at most this (memory)
AIOSMTPD_PRIVATES = ("_reader", "_writer", "_timeout_handle", "_reset_timeout",
                     "_set_post_data_state", "_call_handler_hook", "_original_transport",
                     "_getaddr", "_authenticate", "_authenticator", "_handler_coroutine",
                     "_smtp_methods", "_timeout_cb")
STREAM_PRIVATES = ("_buffer", "_limit")
MAX_HELD_REPLIES = 64              # replies held for one write (PIPELINING): a bound anyway
GROUP_COMMANDS = ("MAIL", "RCPT", "RSET")  # may stand anywhere in a pipelined group (RFC 2920)
ANSWERED_AT_ONCE = (*GROUP_COMMANDS, "DATA")  # may follow a held reply: they never wait first
IN_TRANSACTION = ("RCPT", "DATA", "NOOP", "RSET")   # timed from their transaction's MAIL
SYNTAX_ATTRIBUTES = ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__")
# Password checks of every listener: two at a time (each holds 16 MiB while it runs); the
# sessions waiting for one wait on the loop without holding it up.
AUTH_CHECKS = ThreadPoolExecutor(2, thread_name_prefix="sink-auth")
_NOT_VERIFIED = AuthResult(success=False, handled=False)    # 535, should aiosmtpd ever use it

_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_aiosmtpd_sanitized_log = aiosmtpd.smtp.sanitized_log


def _sanitized_log(func, msg, *args, **kwargs) -> None:
    """aiosmtpd's ``sanitized_log``, asking its logger first. aiosmtpd escapes every command
    line twice (for a DEBUG and an INFO line of its logger "mail.log") before the logger,
    which sink.log sets to WARNING, throws both away: 1.71 -> 0.59 us per command line,
    ~3.4 us of the protocol process per message of one recipient (MAIL, RCPT, DATA; issue
    16). A logger that would log them still gets them as before."""
    logger = getattr(func, "__self__", None)
    level = _LOG_LEVELS.get(getattr(func, "__name__", ""))
    if isinstance(logger, logging.Logger) and level is not None \
            and not logger.isEnabledFor(level):
        return
    _aiosmtpd_sanitized_log(func, msg, *args, **kwargs)


aiosmtpd.smtp.sanitized_log = _sanitized_log    # _handle_client looks the name up there

# RFC 5321 Dot-string (= RFC 5322 dot-atom of ASCII atext), for both sides of the "@": the only
# form whose parse by the header parser is the text itself. Anything else (quoted strings,
# address literals, source routes, comments, non-ASCII, encoded words) goes to aiosmtpd.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_SIMPLE_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>")
_WSP = " \t"


def simple_path(arg: str) -> tuple[str, str] | None:
    """``(address, rest)`` exactly as aiosmtpd's ``SMTP._getaddr`` (before its local-part
    limit) returns it for ``<>`` and ``<dot-string@dot-string>`` followed by anything, or None
    to let aiosmtpd parse. ``rest`` is what the header parser leaves after the path: after
    ``<>`` everything as it is; after an angle-addr the folding white space is consumed
    (``str.lstrip`` once it starts with a space or tab), and a comment there declines."""
    if arg[:2] == "<>":
        return "<>", arg[2:]
    found = _SIMPLE_PATH.match(arg)
    if found is None:
        return None
    address = found.group(1)
    if "=?" in address:         # the header parser decodes RFC 2047 encoded words in atoms
        return None
    rest = arg[found.end():]
    if rest and rest[0] in _WSP:
        rest = rest.lstrip()
    if rest[:1] == "(":         # a comment (CFWS): the header parser's business
        return None
    return address, rest


def stuffed_bound(limit: int) -> int:
    """The most bytes a message of ``limit`` octets can take on the wire: dot-stuffing adds
    at most one octet per line, and the shortest stuffed line ("." CRLF) is three octets."""
    return limit + limit // 3 + 8


class ListenerState:
    """Shared by every connection of one listener: limits and the live connection count."""

    def __init__(self, listener: ListenerConfig, live: set):
        self.listener = listener
        self.address = listener.address
        self.live = live
        self.networks = [ipaddress.ip_network(n, strict=False) for n in listener.allowed_networks]
        self.connections = 0
        self.per_client: dict[str, int] = {}
        self.limiter = FailureLimiter()
        self._auth_turns: dict[str, list] = {}      # client -> [lock, sessions using it]
        self.stopping = False       # SIGTERM: no new transaction
        self.in_data = 0            # sessions between DATA and the reply to it

    @contextlib.asynccontextmanager
    async def auth_turn(self, client: str):
        """The client's turn to have a password checked (a lock per client, dropped when no
        session of it waits: bounded by the connections the listener admits)."""
        turn = self._auth_turns.setdefault(client, [asyncio.Lock(), 0])
        turn[1] += 1
        try:
            async with turn[0]:
                yield
        finally:
            turn[1] -= 1
            if turn[1] == 0:
                del self._auth_turns[client]

    def client_of(self, peer) -> str:
        """Who a connection counts against for ``max_connections_per_client`` and the AUTH
        failure limit: its IPv4 address, or the /64 of its IPv6 address (one host has a whole
        /64 to choose addresses from)."""
        host = str(peer[0]).split("%")[0] if peer else "?"
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host
        if address.version == 6:
            if address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return host

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
    _client = "?"
    _progress_at = 0.0          # loop time of the session's start, or of its last DATA
    _mail_at = 0.0              # loop time of the transaction's accepted MAIL
    _command: str | None = None     # the command being answered (None: none, or a bad line)
    _input_ended = False        # the client half-closed: nothing more will arrive
    _slot_given_back = False
    hello_commands: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._held: list[bytes] = []        # replies held for one write (push)
        # every command goes through _command_for (the no-mail deadline, the reply's status
        # code); aiosmtpd dispatches from this table, built in its __init__
        self._smtp_methods = {name: self._command_for(name, method)
                              for name, method in self._smtp_methods.items()}

    def _command_for(self, name: str, method):
        async def command(arg):
            if self._without_mail_too_long(name):
                seconds = self.state.listener.timeout
                log.warning("session.no_mail", peer=self._client, listener=self.state.address,
                            command=name, seconds=seconds)
                return await self._refuse_and_close(REPLY_NO_MAIL.format(seconds=seconds))
            if self._held and name not in ANSWERED_AT_ONCE:
                await self._send_held()     # AUTH, STARTTLS ... may wait: what is held goes now
            self._command = name
            try:
                return await method(arg)
            finally:
                self._command = None
        for attr in SYNTAX_ATTRIBUTES:      # aiosmtpd's HELP reads them off this table
            if hasattr(method, attr):
                setattr(command, attr, getattr(method, attr))
        return command

    def _without_mail_too_long(self, name: str) -> bool:
        """aiosmtpd restarts the session's timeout on every command, so a client sending NOOP,
        LHLO or any command it gets an error for just inside ``timeout`` held a connection
        slot for ever: a few addresses could hold every slot (found in review). A session that
        has answered no message for longer than the listener's ``timeout`` is closed at its
        next command - except QUIT, and the commands of a transaction (RCPT, DATA, and NOOP
        and RSET inside it) within ``timeout`` of the MAIL that opened it: that MAIL was held
        to the deadline, and so is the next one: a session without a message is cut at most
        ``timeout`` after its last MAIL, within twice ``timeout`` of its last message."""
        if name == "QUIT":
            return False
        since = self._progress_at
        if name in IN_TRANSACTION and self.envelope is not None and self.envelope.mail_from:
            since = max(since, self._mail_at)
        return asyncio.get_running_loop().time() - since > self.state.listener.timeout

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
        client = state.client_of(peer)
        if not state.allowed(peer):
            refusal = REPLY_NOT_ALLOWED
        elif state.connections >= state.listener.max_connections:
            refusal = REPLY_BUSY
        elif state.per_client.get(client, 0) >= state.listener.max_connections_per_client:
            # one host's idle connections must not lock the real MTA out
            refusal = REPLY_BUSY_CLIENT
        if refusal:
            self._refused = True
            log.warning("connection.refused", peer=_peer(peer), reply=refusal[:3],
                        listener=state.address)
            transport.write(refusal.encode() + b"\r\n")
            transport.close()
            return
        state.connections += 1
        state.per_client[client] = state.per_client.get(client, 0) + 1
        self._client = client
        self._progress_at = asyncio.get_running_loop().time()
        state.live.add(self)
        log.info("connection.open", peer=_peer(peer), listener=state.address,
                 protocol=state.listener.protocol)
        super().connection_made(transport)
        self._end_with_the_input()

    def connection_lost(self, error):
        if self._refused:
            return
        self._give_the_slot_back()
        super().connection_lost(error)

    def _give_the_slot_back(self) -> None:
        """Once per connection: from connection_lost, or from a TLS handshake cut by the
        timeout (asyncio then never calls connection_lost)."""
        if self._slot_given_back:
            return
        self._slot_given_back = True
        self.state.connections -= 1
        left = self.state.per_client.get(self._client, 1) - 1
        if left > 0:
            self.state.per_client[self._client] = left
        else:
            self.state.per_client.pop(self._client, None)
        self.state.live.discard(self)
        log.info("connection.close", peer=_peer(self.session.peer if self.session else None),
                 listener=self.state.address)

    def eof_received(self):
        if self._refused:
            return False
        if self.transport is not None and self.transport.get_extra_info("ssl_object") is None:
            # The client half-closed its side (shutdown(SHUT_WR), as `nc -N` does): it may
            # have sent the rest of its session first - pipelined, RFC 2920 - and is reading
            # the replies. aiosmtpd cancels the session here, so what was buffered went
            # unanswered and a message being stored lost its 250 (the MTA sent it again).
            # The session now answers every whole command line that arrived, and ends where
            # the input ends (:meth:`_end_with_the_input`). (Over TLS the peer's close ends
            # the session, as before.)
            self._input_ended = True
            keep_open = asyncio.StreamReaderProtocol.eof_received(self)
        else:
            keep_open = super().eof_received()
        # Either way the session's task ends and the connection is left to it. A task that
        # ended before its command loop - while the greeting is written, as when a probe
        # (`sink status`, a TCP monitor) connects and closes at once - closed nothing: the
        # connection sat in CLOSE-WAIT holding a slot until the timeout, and 20 of them
        # locked the local MTA out (found in review). Once the task has ended, close it.
        task = self._handler_coroutine
        if task is not None:
            task.add_done_callback(self._close_after_session)
        return keep_open

    def _close_after_session(self, _task) -> None:
        if self.transport is not None:
            self.transport.close()

    def _end_with_the_input(self) -> None:
        """Let reading past the end of the input end the session, as QUIT does in aiosmtpd:
        its command loop answers an IncompleteReadError as a handler error (a 451 and an
        error logged for a client that merely closed, or a 500 for ever once the input has
        ended). A line or message cut off by the end is never acted on. For the whole
        session (the same reader after STARTTLS): the read waiting when the end arrives is
        the one that meets it."""
        reader = self._reader
        read = reader.readuntil

        async def readuntil(separator=b"\n"):
            try:
                return await read(separator)
            except asyncio.IncompleteReadError:
                self._end_session()
        reader.readuntil = readuntil    # this session's reader only

    def _end_session(self):
        """End the session as aiosmtpd's own command loop ends on CancelledError."""
        self._writer.close()
        raise asyncio.CancelledError

    # RFC 2920 (PIPELINING, which RFC 2033 5 requires of an LMTP server): a client may send
    # MAIL, its RCPTs and DATA in one write. The replies to the commands inside such a group
    # are held while the next command line is already here, and go out with the reply that
    # ends the group (DATA's 354, or any reply that is not a group command's 250): one write
    # and one segment instead of one per command. A reply is held only while that next line
    # is read without waiting - every command pushes a reply before it waits for the
    # network - so the order never changes and nothing waits on the client.
    async def push(self, status):
        if isinstance(status, str):
            status = REWRITE.get(status, status)
            if self.session is not None and self.session.extended_smtp \
                    and self._command not in self.hello_commands:
                status = with_status_code(status)
            # a reply may quote what the client sent (an RCPT address that is not UTF-8, kept
            # by aiosmtpd as surrogates): shown escaped, never an error (it was a 451 for a
            # permanently bad address, so the MTA retried it for days)
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii",
                                   "backslashreplace")
        if self._may_hold(status):
            self._held.append(status + b"\r\n")
            return
        if self._held:
            status = b"".join(self._held) + status
            self._held.clear()
        await super().push(status)

    async def _send_held(self) -> None:
        held = b"".join(self._held)
        self._held.clear()
        await super().push(held[:-2])           # aiosmtpd's push ends it with CRLF again

    def _may_hold(self, status: bytes) -> bool:
        if len(self._held) >= MAX_HELD_REPLIES:
            return False
        if status[3:4] == b"-":         # a line of a multi-line reply: its last line follows
            return True
        # a group command's success, while the next line can be read without waiting
        return (self._command in GROUP_COMMANDS and status[:4] == b"250 "
                and 0 <= self._reader._buffer.find(b"\n", 0, self._reader._limit))

    async def _refuse_and_close(self, reply: str) -> None:
        await self.push(reply)
        if self.transport is not None:
            self.transport.close()

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str):
        if self._input_ended:
            # A client whose input has ended can send no handshake: answering 220 left the
            # session waiting for one (asyncio's 60 s, and with a shorter ``timeout`` its
            # slot was never given back). The session ends as at the end of its input.
            self._end_session()
        if self._original_transport is not None:
            # aiosmtpd starts a TLS layer inside TLS (RFC 3207 4: a client MUST NOT ask), and
            # a connection whose inner handshake never came never gave its slot back
            return await self.push(REPLY_TLS_ACTIVE)
        return await super().smtp_STARTTLS(arg)

    def _timeout_cb(self):
        """aiosmtpd's timeout closes the transport. close() first sends what is buffered,
        so a client that sends and never reads (its receive window shut) kept the session
        and its slot for ever; a TLS handshake that never came left the slot taken (asyncio
        calls connection_lost only after a handshake); and a TLS session already ended
        (QUIT, or its input) waited on the client's close alert. These are cut here, at the
        socket's own transport (under TLS the one beneath the session's)."""
        socket_transport = self._original_transport or self.transport
        if socket_transport is None:
            return
        handshaking = self._original_transport is not None and not self.session.ssl
        unsent = socket_transport.get_write_buffer_size()
        ended = self._handler_coroutine is not None and self._handler_coroutine.done()
        if handshaking or unsent or ended:
            log.info("session.timeout", peer=self._client, listener=self.state.address,
                     unsent=unsent, handshaking=handshaking)
            socket_transport.abort()
            if handshaking:
                self._handler_coroutine.cancel()
                self._give_the_slot_back()
            return
        super()._timeout_cb()

    def _getaddr(self, arg: str):
        """aiosmtpd's path parser (MAIL, RCPT, VRFY), with :func:`simple_path` first."""
        found = simple_path(arg) if arg else None
        if found is None:
            return super()._getaddr(arg)
        limit = self.local_part_limit
        if limit and len(found[0].rpartition("@")[0]) > limit:
            return None, None
        return found

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg):
        if self.state.stopping:
            return await self._refuse_and_close(REPLY_SHUTTING_DOWN)
        if self.state.listener.require_tls and self.session.ssl is None:
            return await self.push(REPLY_NEED_TLS)
        self._mail_at = asyncio.get_running_loop().time()
        return await super().smtp_MAIL(arg)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg):
        # a guesser gets a few tries per address and window, then is shown the door
        if await self._shown_the_door():
            return
        return await super().smtp_AUTH(arg)

    async def _shown_the_door(self) -> bool:
        """Whether this client is over its AUTH failure limit, and so was closed (421)."""
        if not self.state.limiter.blocked(self._client):
            return False
        log.warning("auth.blocked", peer=self._client, listener=self.state.address)
        await self._refuse_and_close(REPLY_AUTH_BLOCKED)
        return True

    _auth_data = None

    def _authenticate(self, mechanism, auth_data):
        # aiosmtpd's built-in auth_PLAIN and auth_LOGIN end with this synchronous call to the
        # authenticator; keep what they read for the thread (below) instead of running it here
        self._auth_data = (mechanism, auth_data)
        return _NOT_VERIFIED

    async def auth_PLAIN(self, _, args):
        return await self._verified(super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _, args):
        return await self._verified(super().auth_LOGIN(_, args))

    async def _verified(self, reading):
        """The AuthResult of the client's exchange ``reading``, its check run in AUTH_CHECKS."""
        self._auth_data = None
        result = await reading
        if result is not _NOT_VERIFIED or self._auth_data is None:
            return result                   # it ended before a check (bad base64, "*")
        (mechanism, auth_data), self._auth_data = self._auth_data, None
        if self._authenticator is None:     # no `auth` configured: aiosmtpd's refusal
            return SMTP._authenticate(self, mechanism, auth_data)
        # One check per client address at a time: guesses sent side by side on many
        # connections each wait for the one before and then see its failure, so the failure
        # limit holds for them too (before, 20 connections got 20 checks, not 5). A right
        # password waits for one check at most: the ones after it are answered from the
        # cache of verified logins.
        async with self.state.auth_turn(self._client):
            if await self._shown_the_door():
                return AuthResult(success=False, handled=True)
            return await asyncio.get_running_loop().run_in_executor(
                AUTH_CHECKS, self._authenticator, self, self.session, self.envelope,
                mechanism, auth_data)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if self.state.stopping:
            return await self._refuse_and_close(REPLY_SHUTTING_DOWN)
        self.state.in_data += 1         # shutdown waits until this session has its reply
        try:
            await self._data(arg)
        finally:
            self.state.in_data -= 1

    async def _data(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message in bulk instead of line by line.

        aiosmtpd awaits one line at a time; a line already buffered returns without yielding,
        so a message of millions of short lines kept the event loop - every other session -
        busy for seconds (15 MB of "a" lines: 13 s). Here the end mark CRLF "." CRLF is found
        by the stream's own search (C speed, resumed where it stopped), the dot-stuffing undone
        with one replace, and the semantics are aiosmtpd's: lines end with CRLF only (a bare LF
        or CR is data, so no end-of-data smuggling), a line's leading dot is removed, the size
        limit counts the message as stored (RFC 1870: not the stuffing) and, when exceeded, the
        rest is read and dropped before the 552. The session timeout measures silence during
        the transfer and is suspended while the message is stored; ``data_deadline`` bounds the
        whole transfer however steadily the bytes trickle."""
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
        wire_limit = stuffed_bound(limit) if limit else 0
        chunks: list[bytes] = []
        self._receiving_data = True         # the session timeout now measures silence
        # Read in pieces of at most DATA_PIECE: the stream's readuntil copies what it returns
        # twice over (a slice of its buffer, then bytes of that), which for a 40 MB message in
        # one piece held three copies at once.
        reader._limit = DATA_PIECE
        try:
            async with asyncio.timeout(self.state.listener.data_deadline):
                too_much = await self._read_data(reader, chunks, wire_limit)
        except TimeoutError:
            log.warning("data.deadline", peer=self._client, listener=self.state.address)
            chunks.clear()
            return await self._refuse_and_close(REPLY_DATA_DEADLINE)
        finally:
            self._receiving_data = False
            reader._limit = COMMAND_LINE_LIMIT
        if too_much:
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()
            return
        original_content = _content(chunks)
        if limit and len(original_content) > limit:     # the size as stored (RFC 1870)
            del original_content
            await self.push("552 Error: Too much mail data")
            self._set_post_data_state()
            return
        await self._deliver(original_content)

    async def _read_data(self, reader, chunks: list, wire_limit: int) -> bool:
        """Read up to the end mark into ``chunks``; past ``wire_limit`` stuffed octets the
        message is certainly too big and the rest is read and dropped."""
        size, too_much = -2, False
        while True:
            try:
                chunk = await reader.readuntil(_END_OF_DATA)
                done = True
            except asyncio.LimitOverrunError as error:
                # No end mark within the stream's limit (the size limit and some): take
                # what is certainly not part of it; the message is too big in any case.
                chunk = await reader.read(error.consumed)
                done = False
            # (the input ending before the end mark ends the session: _end_with_the_input)
            size += len(chunk)
            if too_much or (wire_limit and size - (3 if done else 0) > wire_limit):
                too_much = True
                chunks.clear()
            else:
                chunks.append(chunk)
            if done:
                return too_much

    async def _deliver(self, original_content: bytes) -> None:
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
        self._progress_at = asyncio.get_running_loop().time()   # see _without_mail_too_long

    _receiving_data = False

    def data_received(self, data: bytes) -> None:
        # aiosmtpd restarts the timeout on each command only, so a message whose transfer
        # took longer than ``timeout`` was cut off however steadily it arrived (a big message
        # over a slow link could never be delivered). During DATA any bytes count as activity.
        if self._receiving_data:
            self._reset_timeout()
        super().data_received(data)


def _content(chunks: list[bytes]) -> bytes:
    """The message from the pieces read: ``CRLF`` + the dot-stuffed lines + ``CRLF . CRLF``,
    un-stuffed (a line's leading dot removed). The pieces are emptied. With nothing to
    un-stuff (most mail) the message is their join alone - the one copy a message costs here
    beside its pieces, which are let go at once."""
    if len(chunks) > 1 and len(chunks[0]) >= 2 and len(chunks[-1]) >= 3:
        chunks[0], chunks[-1] = chunks[0][2:], chunks[-1][:-3]
        content = b"".join(chunks)
    else:                               # one piece, or pieces cut inside CRLF / the end mark
        content = b"".join(chunks)[2:-3]
    chunks.clear()
    return unstuffed(content)


def unstuffed(content: bytes) -> bytes:
    """``content`` with the leading dot of each line removed: what
    ``(CRLF + content).replace(CRLF + ".", CRLF)[2:]`` gives, with one search and one copy
    (that expression copied the message three times and searched it twice: ~190 us of the
    protocol process per 100 KB message with a stuffed line, against ~60)."""
    if content.startswith(b"."):
        at = 0                          # the first line (after the DATA command's line end)
    else:
        at = content.find(b"\r\n.")
        if at < 0:
            return content
        at += 2                         # the dot after the line end
    pieces, start = [], 0
    while at >= 0:
        pieces.append(content[start:at])
        start = at + 1
        at = content.find(b"\r\n.", start)   # the next stuffed line begins after this dot
        if at >= 0:
            at += 2
    pieces.append(content[start:])
    return b"".join(pieces)


# The hello whose reply needs no status code (RFC 2034 3); in LMTP, HELO and EHLO are
# unknown commands, answered 500 5.5.2 like any other.
class SinkSMTP(_Guarded, SMTP):
    hello_commands = ("HELO", "EHLO")


class SinkLMTP(_Guarded, LMTP):
    hello_commands = ("LHLO",)


def _peer(peer) -> str | None:
    if not peer:
        return None
    return f"{peer[0]}:{peer[1]}" if len(peer) >= 2 else str(peer[0])


