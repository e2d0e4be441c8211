"""POP3 source (poplib): USER/PASS or XOAUTH2, UIDL, DELE after commit.

A pass: UIDL and LIST (sizes), in keep mode minus the UIDLs remembered; messages larger than
``max_message_size`` stay on the server (logged once); the rest are RETRieved in bounded batches,
submitted together, and only the committed ones are DELEted (or remembered). POP3 applies
DELE at QUIT: a connection lost before it deletes nothing, and the next pass finds those
messages already stored.
"""

from __future__ import annotations

import poplib

from sink.log import get_logger
from sink.sources.imap import tls_context
from sink.sources.oauth import xoauth2_b64
from sink.sources.poller import LoginRefused, PassResult, Worker, deliver, pipelined
from sink.sources.state import batches, pop3_forget, pop3_remember, pop3_seen, uids_to_fetch

log = get_logger("sink.sources.pop3")
BATCH_COUNT = 100
BATCH_BYTES = 32 * 1024 * 1024
TIMEOUT = 60.0
MAX_LINE = 1024 * 1024     # poplib's 2,048 refuses real mail with long lines; still a bound


class _Limits:
    """poplib reads lines up to its module-wide 2,048 octets; mail (base64 without breaks,
    long headers) has longer ones. This raises the bound for our connections only."""

    def _getline(self):
        line = self.file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise poplib.error_proto("line too long")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        octets = len(line)
        if line[-2:] == b"\r\n":
            return line[:-2], octets
        if line[:1] == b"\r":
            return line[1:-1], octets
        return line[:-1], octets


class POP3(_Limits, poplib.POP3):
    pass


class POP3_SSL(_Limits, poplib.POP3_SSL):
    pass


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace")


class Pop3Worker(Worker):
    def __init__(self, source, config, storage, engine, tokens=None):
        super().__init__(source, config, storage, engine)
        self.tokens = tokens
        self.too_big_logged: set[str] = set()

    def _connect(self) -> poplib.POP3:
        s = self.source
        context = tls_context(s.ca_file)
        if s.tls == "ssl":
            client = POP3_SSL(s.host, s.port, timeout=TIMEOUT, context=context)
        else:
            client = POP3(s.host, s.port, timeout=TIMEOUT)
        try:
            if s.tls == "starttls":
                client.stls(context)
            self._login(client)
        except BaseException:
            _close(client)
            raise
        return client

    def _login(self, client: poplib.POP3) -> None:
        s = self.source
        try:
            if s.oauth is not None:
                # RFC 5034 AUTH; poplib has no public call for it, so the two lines are sent
                # with its own command helper (a "+ " continuation, then the initial response)
                client._shortcmd("AUTH XOAUTH2")
                client._shortcmd(xoauth2_b64(s.user, self.tokens.token()))
            else:
                client.user(s.user)
                client.pass_(s.password.reveal())
        except poplib.error_proto as exc:
            text = " ".join(str(exc).split())[:200]
            raise LoginRefused(f"login refused for {s.user}: {text}") from None

    def _plan(self, client: poplib.POP3) -> list[tuple[tuple[int, str], int]]:
        uidls: dict[int, str] = {}
        for line in client.uidl()[1]:
            number, _, uidl = _text(line).partition(" ")
            uidls[int(number)] = uidl.strip()
        sizes = {}
        for line in client.list()[1]:
            number, _, size = _text(line).partition(" ")
            sizes[int(number)] = int(size.split()[0])
        wanted = set(uidls.values())
        if self.source.after == "keep":
            seen = pop3_seen(self.engine, self.source.key)
            if seen - wanted:
                pop3_forget(self.engine, self.source.key, seen - wanted)
            wanted = set(uids_to_fetch(wanted, seen))
        return [((n, u), sizes.get(n, 0)) for n, u in sorted(uidls.items()) if u in wanted]

    @staticmethod
    def _retrieve(client: poplib.POP3, numbers: list[int]) -> list[bytes]:
        # poplib hands the lines back without their CRLF and un-dot-stuffed
        return [b"\r\n".join(client.retr(n)[1]) + b"\r\n" for n in numbers]

    def _after(self, client: poplib.POP3, taken: list[tuple[int, str]]) -> int:
        if self.source.after == "keep":
            pop3_remember(self.engine, self.source.key, [u for _, u in taken])
            return 0
        for number, _ in taken:
            client.dele(number)
        return len(taken)

    async def run_pass(self) -> PassResult:
        result = PassResult()
        client = await self.call(self._connect)
        try:
            plan = await self.call(self._plan, client)
            limit = self.source.max_message_size
            fits = []
            for ident, size in plan:
                if size > limit:
                    result.skipped += 1
                    if ident[1] not in self.too_big_logged:
                        self.too_big_logged.add(ident[1])
                        log.warning("source.message_too_big", source=self.source.index,
                                    uidl=ident[1], size=size, limit=limit)
                else:
                    fits.append((ident, size))

            async def handle(batch, raws: list[bytes]) -> None:
                result.fetched += len(raws)
                ok = await deliver(self.storage, self.source, self.box, raws, result,
                                   self.hold)
                raws.clear()
                taken = [ident for ident, committed in zip(batch, ok) if committed]
                if taken:
                    result.removed += await self.call(self._after, client, taken)
            await pipelined(self, batches(fits, BATCH_BYTES, BATCH_COUNT),
                            lambda batch: self._retrieve(client, [n for n, _ in batch]), handle)
            await self.call(client.quit)        # the DELEs take effect here
        except BaseException:
            await self.call(_close, client)
            raise
        return result


def _close(client: poplib.POP3) -> None:
    try:
        client.close()
    except Exception:
        pass
