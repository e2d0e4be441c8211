"""POP3 source (poplib): USER/PASS or XOAUTH2, UIDL, DELE after commit.

A pass: UIDL and LIST (sizes), in keep mode minus the UIDLs remembered; messages larger than
``max_message_size`` stay on the server (logged and notified once); the rest are RETRieved in
bounded batches, submitted together, and only the committed ones are DELEted (or remembered).
POP3 applies DELE at QUIT: a connection lost before it deletes nothing, and the next pass finds
those messages already stored.

LIST's sizes are the server's word. A RETR reads at most what ``max_message_size`` allows (in
octets on the wire, dot-stuffing allowed for): a server that sends more for a message it
declared smaller is stopped there, the connection dropped, and the pass starts again without
that message, which stays on the server like any other too large one.
"""

from __future__ import annotations

import poplib

from sink.log import get_logger
from sink.sources.imap import tls_context
from sink.sources.oauth import xoauth2_b64
from sink.sources.poller import (PLAN_ANSWERS, LoginRefused, PassResult, SentTooMuch, Worker,
                                 deliver, pipelined)
from sink.sources.state import batches, pop3_forget, pop3_remember, pop3_seen, uids_to_fetch

log = get_logger("sink.sources.pop3")
BATCH_COUNT = 100
BATCH_BYTES = 32 * 1024 * 1024
TIMEOUT = 60.0
MAX_LINE = 1024 * 1024     # poplib's 2,048 refuses real mail with long lines; still a bound
LISTING = 64 * 1024 * 1024  # octets of a UIDL or LIST answer (100,000 messages: ~3 MB)


class _OverBudget(Exception):
    """More octets arrived than ``_Limits.budget`` allowed."""


class _Limits:
    """poplib reads lines up to its module-wide 2,048 octets; mail (base64 without breaks,
    long headers) has longer ones. This raises the bound for our connections only. And poplib
    reads a multi-line answer whole, however long: ``budget`` (octets, None: no bound) bounds
    what one answer may bring."""

    budget: int | None = None
    on_socket = None    # called with the TCP socket before the greeting is read (Worker.watch)

    def __init__(self, *args, on_socket=None, **kwargs):
        self.on_socket = on_socket
        super().__init__(*args, **kwargs)

    def _tcp_socket(self, timeout):
        sock = poplib.POP3._create_socket(self, timeout)
        if self.on_socket is not None:
            self.on_socket(sock)
        return sock

    def _getline(self):
        line = self.file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise poplib.error_proto("line too long")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        octets = len(line)
        if self.budget is not None:
            self.budget -= octets
            if self.budget < 0:
                raise _OverBudget()
        if line[-2:] == b"\r\n":
            return line[:-2], octets
        if line[:1] == b"\r":
            return line[1:-1], octets
        return line[:-1], octets


class POP3(_Limits, poplib.POP3):
    def _create_socket(self, timeout):
        return self._tcp_socket(timeout)


class POP3_SSL(_Limits, poplib.POP3_SSL):
    def _create_socket(self, timeout):
        # poplib's own, with the socket handed over before the TLS handshake
        return self.context.wrap_socket(self._tcp_socket(timeout), server_hostname=self.host)


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace")


class Pop3Worker(Worker):
    def __init__(self, source, config, storage, engine, tokens=None):
        super().__init__(source, config, storage, engine)
        self.tokens = tokens

    def _connect(self, token: str | None) -> poplib.POP3:
        s = self.source
        context = tls_context(s.ca_file)
        if s.tls == "ssl":
            client = POP3_SSL(s.host, s.port, timeout=TIMEOUT, context=context,
                              on_socket=self.watch)
        else:
            client = POP3(s.host, s.port, timeout=TIMEOUT, on_socket=self.watch)
        try:
            if s.tls == "starttls":
                client.stls(context)
            self._login(client, token)
        except BaseException:
            _close(client)
            raise
        return client

    def _login(self, client: poplib.POP3, token: str | None) -> None:
        s = self.source
        try:
            if s.oauth is not None:
                # RFC 5034 AUTH; poplib has no public call for it, so the two lines are sent
                # with its own command helper (a "+ " continuation, then the initial response)
                client._shortcmd("AUTH XOAUTH2")
                client._shortcmd(xoauth2_b64(s.user, token))
            else:
                client.user(s.user)
                client.pass_(s.password.reveal())
        except poplib.error_proto as exc:
            text = " ".join(str(exc).split())[:200]
            raise LoginRefused(f"login refused for {s.user}: {text}") from None

    def _plan(self, client: poplib.POP3) -> list[tuple[tuple[int, str], int]]:
        uidls: dict[int, str] = {}
        for line in _listing(client, client.uidl):
            number, _, uidl = _text(line).partition(" ")
            uidls[int(number)] = uidl.strip()
        sizes = {}
        for line in _listing(client, client.list):
            number, _, size = _text(line).partition(" ")
            sizes[int(number)] = int(size.split()[0])
        wanted = set(uidls.values())
        if self.source.after == "keep":
            seen = pop3_seen(self.engine, self.source.key)
            if seen - wanted:
                pop3_forget(self.engine, self.source.key, seen - wanted)
            wanted = set(uids_to_fetch(wanted, seen))
        return [((n, u), sizes.get(n, 0)) for n, u in sorted(uidls.items()) if u in wanted]

    def _retrieve(self, client: poplib.POP3, batch: list[tuple[int, str]]) -> list[bytes]:
        limit = self.source.max_message_size
        raws = []
        for number, uidl in batch:
            # on the wire: CRLFs (counted in the limit too), a dot for each stuffed line, the
            # status and end lines - an eighth and 64 KiB more than the message is plenty
            client.budget = limit + limit // 8 + 65536
            try:
                lines = client.retr(number)[1]
            except _OverBudget:
                raise SentTooMuch([uidl], f"RETR {number} sent more than "
                                  f"max_message_size ({limit}) allows") from None
            finally:
                client.budget = None
            # poplib hands the lines back without their CRLF and un-dot-stuffed
            raws.append(b"\r\n".join(lines) + b"\r\n")
        return raws

    def _after(self, client: poplib.POP3, taken: list[tuple[int, str]]) -> int:
        if self.source.after == "keep":
            pop3_remember(self.engine, self.source.key, [u for _, u in taken])
            return 0
        for number, _ in taken:
            client.dele(number)
        return len(taken)

    async def run_pass(self) -> PassResult:
        result = PassResult()
        await self.restarting(lambda: self._pass(result))
        return result

    async def _pass(self, result: PassResult) -> None:
        client = await self.connect()
        try:
            plan = await self.talk(self._plan, client, answers=PLAN_ANSWERS)
            limit = self.source.max_message_size
            fits = []
            for ident, size in plan:
                if size > limit:
                    self.leave_on_server(result, ident[1], size, uidl=ident[1])
                elif ident[1] in self.sent_too_much:
                    self.leave_on_server(result, ident[1], None, uidl=ident[1])
                else:
                    fits.append((ident, size))

            async def handle(batch, raws: list[bytes]) -> None:
                keep = []
                for ident, raw in zip(batch, raws):
                    if len(raw) > limit:        # within the wire budget, over the limit
                        self.leave_on_server(result, ident[1], len(raw), uidl=ident[1])
                    else:
                        keep.append((ident, raw))
                raws.clear()
                result.fetched += len(keep)
                ok = await deliver(self.storage, self.source, self.box, [r for _, r in keep],
                                   result, self.hold)
                taken = [ident for (ident, _), committed in zip(keep, ok) if committed]
                keep.clear()
                if taken:
                    result.removed += await self.talk(self._after, client, taken)
            sizes = dict(fits)
            await pipelined(self, batches(fits, BATCH_BYTES, BATCH_COUNT),
                            lambda batch: self._retrieve(client, batch), handle,
                            declared=lambda batch: sum(sizes[ident] for ident in batch))
            await self.talk(client.quit)        # the DELEs take effect here
        except BaseException:
            await self.call(_close, client)     # (mid-answer after SentTooMuch: no QUIT)
            raise
        finally:
            self.unwatch()


def _listing(client: poplib.POP3, command) -> list[bytes]:
    """The lines of a UIDL or LIST answer, which poplib reads whole: at most LISTING octets
    (an answer that runs on is a protocol error, and the pass fails with it)."""
    client.budget = LISTING
    try:
        return command()[1]
    except _OverBudget:
        raise poplib.error_proto(f"the server's listing ran past {LISTING} octets") from None
    finally:
        client.budget = None


def _close(client: poplib.POP3) -> None:
    try:
        client.close()
    except Exception:
        pass
