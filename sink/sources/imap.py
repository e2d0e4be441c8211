"""IMAP source (IMAPClient): folders, all/unseen, after delete/keep/seen/move, IDLE.

A pass, per folder: SELECT (UIDVALIDITY), UID SEARCH (ALL or UNSEEN), in keep mode
minus the UIDs remembered for this UIDVALIDITY, RFC822.SIZE of each (larger than
``max_message_size``: left on the server, logged once), then batches of BODY.PEEK[] (bounded in
count and bytes) submitted together; only the committed ones are then deleted (UID EXPUNGE when
the server has UIDPLUS), flagged \\Seen, moved (MOVE, else COPY + delete) or remembered.

Between passes, when the server offers IDLE and ``idle = true``, the connection waits in IDLE on
the first folder: an EXISTS starts the next pass at once.

RFC822.SIZE is the server's word, and imaplib reads every literal whole, of the size the server
announces. So the literals of one fetch are bounded before a byte of them is read
(:class:`_AnswerBudget`): each at most ``max_message_size``, all of a BODY fetch at most what
its messages declared plus one ``max_message_size``, of any other command 1 MiB each and
64 MiB in all; the lines of one answer (which imaplib keeps until the command completes) at
most 64 MiB. A fetch that breaks the bound drops the connection; the pass starts again,
fetching that batch's messages one at a time, and the one that was sent too large stays on
the server like any other too large message (logged and notified once).
"""

from __future__ import annotations

import socket
import ssl
import time

from imapclient import IMAPClient, imap4, tls
from imapclient.exceptions import LoginError

from sink.log import get_logger
from sink.sources.poller import (PLAN_ANSWERS, LoginRefused, PassResult, SentTooMuch, Worker,
                                 deliver, pipelined)
from sink.sources.state import batches, imap_forget, imap_remember, imap_seen, uids_to_fetch

log = get_logger("sink.sources.imap")
BATCH_COUNT = 100
BATCH_BYTES = 32 * 1024 * 1024
SIZE_CHUNK = 1000           # UIDs per RFC822.SIZE fetch
IDLE_RENEW = 25 * 60        # RFC 2177: re-issue IDLE before the server's 30-minute timeout
TIMEOUT = 60.0
OTHER_LITERAL = 1024 * 1024     # a literal in an answer that is not a message's body
ANSWER_LINES = 64 * 1024 * 1024     # the lines of one command's answer (a SEARCH of 1M UIDs: 8 MB)


class _LiteralTooBig(Exception):
    pass


class AnswerTooLong(Exception):
    """The server's answer to one command ran past :data:`ANSWER_LINES` bytes of lines."""


class _AnswerBudget:
    """Stands in for the imaplib connection's ``read`` and ``readline``, so that what one
    command's answer makes us hold is bounded. imaplib calls ``read`` with the size of each
    literal the server announced (``{N}``), before reading it whole: a literal beyond ``each``
    bytes, or one that takes the command's literals beyond ``total``, is refused unread.
    imaplib keeps every untagged line of an answer until the command completes: the lines
    are bounded by :data:`ANSWER_LINES`. (IMAPClient keeps that connection in ``_imap``:
    :meth:`ImapWorker._connect` and :class:`_WatchedClient` are the places that reach into
    the libraries' privates.)"""

    def __init__(self, imap):
        self._read, self._readline = imap.read, imap.readline
        imap.read, imap.readline = self.read, self.readline
        self.reset()

    def allow(self, each: int, total: int) -> None:
        self.each, self.total, self.used, self.lines = each, total, 0, 0

    def reset(self) -> None:
        """Before each command of ours: the bounds of an answer that is not a body fetch."""
        self.allow(OTHER_LITERAL, ANSWER_LINES)

    def read(self, size: int) -> bytes:
        if size > self.each or self.used + size > self.total:
            raise _LiteralTooBig(size)
        self.used += size
        return self._read(size)

    def readline(self) -> bytes:
        line = self._readline()
        self.lines += len(line)
        if self.lines > ANSWER_LINES:
            raise AnswerTooLong(f"the server's answer ran past {ANSWER_LINES} bytes of lines")
        return line


class _WatchedClient(IMAPClient):
    """IMAPClient that hands its TCP socket to ``on_socket`` the moment it is connected:
    IMAPClient connects and reads the greeting in its constructor, and a deadline for that
    (:meth:`Worker.talk`) needs a socket to cut. IMAPClient's ``_create_IMAP4`` and imaplib's
    ``_create_socket`` are the hooks below the constructor (private, as is the ``_imap``
    that :meth:`ImapWorker._connect` hands to :class:`_AnswerBudget`)."""

    def __init__(self, *args, on_socket, **kwargs):
        self._on_socket = on_socket
        super().__init__(*args, **kwargs)

    def _create_IMAP4(self):
        timeout = getattr(self._timeout, "connect", None)
        if self.ssl:
            return _WatchedTLS(self.host, self.port, self.ssl_context, timeout,
                               on_socket=self._on_socket)
        return _WatchedPlain(self.host, self.port, timeout, on_socket=self._on_socket)


class _WatchedPlain(imap4.IMAP4WithTimeout):
    def __init__(self, *args, on_socket):
        self._on_socket = on_socket
        super().__init__(*args)

    def _create_socket(self, timeout=None):
        sock = super()._create_socket(timeout)
        self._on_socket(sock)
        return sock


class _WatchedTLS(tls.IMAP4_TLS):
    def __init__(self, *args, on_socket):
        self._on_socket = on_socket
        super().__init__(*args)

    def _create_socket(self, timeout=None):
        # IMAP4_TLS's own, with the socket handed over before the handshake
        sock = socket.create_connection((self.host, self.port),
                                        timeout if timeout is not None else self._timeout)
        self._on_socket(sock)
        return tls.wrap_socket(sock, self.ssl_context, self.host)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificate and host name verified; ``ca_file`` for a private CA."""
    return ssl.create_default_context(cafile=ca_file)


class ImapWorker(Worker):
    def __init__(self, source, config, storage, engine, tokens=None):
        super().__init__(source, config, storage, engine)
        self.tokens = tokens
        self.client: IMAPClient | None = None
        self.answers: _AnswerBudget | None = None
        self.suspects: set[tuple] = set()       # fetched in a batch that was: one at a time

    # ------------------------------------------------------------------ connection (thread)
    def _connect(self, token: str | None) -> IMAPClient:
        s = self.source
        context = tls_context(s.ca_file)
        client = _WatchedClient(s.host, s.port, ssl=s.tls == "ssl", ssl_context=context,
                                timeout=TIMEOUT, on_socket=self.watch)
        self.answers = _AnswerBudget(client._imap)
        try:
            if s.tls == "starttls":
                client.starttls(context)
            try:
                if s.oauth is not None:
                    client.oauth2_login(s.user, token)
                else:
                    client.login(s.user, s.password.reveal())
            except LoginError as exc:
                raise LoginRefused(f"login refused for {s.user}: {_server_text(exc)}") from None
            self.capabilities = set(client.capabilities())
        except BaseException:
            _quietly(client.shutdown)
            raise
        return client

    def _logout(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            _quietly(client.logout)
            # imaplib shuts the socket only when LOGOUT was answered (not after an answer ran
            # past its bound, say): then it would stay open until the collector found it
            _quietly(client.shutdown)
        self.unwatch()

    def _abandon(self) -> None:
        """Drop a connection that is mid-answer (no LOGOUT: that would read the rest)."""
        client, self.client = self.client, None
        if client is not None:
            _quietly(client.shutdown)
        self.unwatch()

    async def close(self) -> None:
        await self.call(self._logout)

    async def _client(self) -> IMAPClient:
        if self.client is None:
            self.client = await self.connect()
        return self.client

    # --------------------------------------------------------------------------- the pass
    async def run_pass(self) -> PassResult:
        result = PassResult()

        async def attempt() -> None:
            client = await self._client()
            for folder in self.source.folders:
                if self.stopping.is_set():
                    break
                await self._folder(client, folder, result)
        await self.restarting(attempt)
        if not (self.source.idle and b"IDLE" in self.capabilities):
            await self.close()
        return result

    async def sent_too_much_in(self, keys: tuple) -> None:
        # keys are (folder, UIDVALIDITY, UID); the connection is mid-answer: drop it. The
        # next plan leaves the one message on the server, or fetches each of several alone
        # to find the one
        await self.call(self._abandon)
        (self.sent_too_much if len(keys) == 1 else self.suspects).update(keys)

    def _plan(self, client: IMAPClient, folder: str) -> tuple[int, list[tuple[int, int]]]:
        keep = self.source.after == "keep"
        self.answers.reset()
        info = client.select_folder(folder, readonly=keep)
        validity = int(info[b"UIDVALIDITY"])
        # ALL, \Deleted ones included: one we flagged just before a crash (committed, not yet
        # expunged) is fetched once more, found already stored, and expunged this time
        criteria = ["UNSEEN"] if self.source.fetch == "unseen" else ["ALL"]
        self.answers.reset()
        uids = client.search(criteria)
        if keep:
            seen = imap_seen(self.engine, self.source.key, folder, validity)
            gone = seen - set(uids)
            if gone:
                imap_forget(self.engine, self.source.key, folder, validity, gone)
            uids = uids_to_fetch(uids, seen)
        else:
            uids = sorted(uids)
        sized: list[tuple[int, int]] = []
        for i in range(0, len(uids), SIZE_CHUNK):
            self.answers.reset()
            answer = client.fetch(uids[i:i + SIZE_CHUNK], ["RFC822.SIZE"])
            sized += [(u, int(answer[u][b"RFC822.SIZE"])) for u in uids[i:i + SIZE_CHUNK]
                      if u in answer]
        return validity, sized

    async def _folder(self, client: IMAPClient, folder: str, result: PassResult) -> None:
        validity, sized = await self.talk(self._plan, client, folder, answers=PLAN_ANSWERS)
        limit = self.source.max_message_size
        fits, alone = [], []
        for uid, size in sized:
            key = (folder, validity, uid)
            if size > limit:
                self.leave_on_server(result, key, size, folder=folder, uid=uid)
            elif key in self.sent_too_much:
                self.leave_on_server(result, key, None, folder=folder, uid=uid)
            elif key in self.suspects:
                alone.append([uid])
            else:
                fits.append((uid, size))
        declared = dict(sized)

        async def handle(batch: list[int], bodies: dict[int, bytes]) -> None:
            for u in batch:
                if u in bodies and len(bodies[u]) > limit:   # sent over the limit, within bounds
                    self.leave_on_server(result, (folder, validity, u), len(bodies.pop(u)),
                                         folder=folder, uid=u)
                self.suspects.discard((folder, validity, u))
            uids = [u for u in batch if u in bodies]
            result.fetched += len(uids)
            committed = await deliver(self.storage, self.source, self.box,
                                      [bodies.pop(u) for u in uids], result, self.hold)
            done = [u for u, ok in zip(uids, committed) if ok]
            if done:
                result.removed += await self.talk(self._after, client, folder, validity, done)
        def size(batch: list[int]) -> int:
            return sum(declared[u] for u in batch)
        await pipelined(self, alone + batches(fits, BATCH_BYTES, BATCH_COUNT),
                        lambda batch: self._bodies(client, batch, folder, validity, size(batch)),
                        handle, declared=size)

    def _bodies(self, client: IMAPClient, uids: list[int], folder: str, validity: int,
                declared: int) -> dict[int, bytes]:
        limit = self.source.max_message_size
        self.answers.allow(limit, declared + limit)
        try:
            answer = client.fetch(uids, ["BODY.PEEK[]"])
        except _LiteralTooBig as big:
            raise SentTooMuch([(folder, validity, u) for u in uids],
                              f"a literal of {big.args[0]} bytes for {len(uids)} message(s) "
                              f"that declared {declared}") from None
        finally:
            self.answers.reset()
        return {u: bytes(d[b"BODY[]"]) for u, d in answer.items() if d.get(b"BODY[]") is not None}

    def _after(self, client: IMAPClient, folder: str, validity: int, uids: list[int]) -> int:
        """What ``after`` says, for committed messages only; how many left the folder."""
        self.answers.reset()
        after = self.source.after
        if after == "keep":
            imap_remember(self.engine, self.source.key, folder, validity, uids)
            return 0
        if after == "seen":
            client.add_flags(uids, [b"\\Seen"], silent=True)
            return 0
        target = self.source.move_to
        if target is not None and b"MOVE" in self.capabilities:
            client.move(uids, target)
            return len(uids)
        if target is not None:
            client.copy(uids, target)
        client.delete_messages(uids, silent=True)
        if b"UIDPLUS" in self.capabilities:
            client.uid_expunge(uids)
        else:
            client.expunge()
        return len(uids)

    # --------------------------------------------------------------------------- IDLE
    async def wait(self, seconds: float) -> None:
        if self.client is None or not (self.source.idle and b"IDLE" in self.capabilities):
            await super().wait(seconds)
            return
        try:
            await self.talk(self._idle, self.client, seconds,
                            waiting=min(seconds, IDLE_RENEW))
        except Exception as exc:            # the next pass reconnects and says why if it must
            log.info("source.idle_ended", source=self.source.index,
                     reason=type(exc).__name__)
            await self.close()

    def _idle(self, client: IMAPClient, seconds: float) -> None:
        """IDLE on the first folder until new mail, ``seconds`` pass, or stop."""
        self.answers.reset()
        client.select_folder(self.source.folders[0], readonly=True)
        deadline = time.monotonic() + min(seconds, IDLE_RENEW)
        client.idle()
        try:
            while time.monotonic() < deadline and not self.stopping.is_set():
                self.answers.reset()
                responses = client.idle_check(timeout=1)
                if any(len(r) >= 2 and r[1] in (b"EXISTS", b"RECENT") for r in responses):
                    return
        finally:
            client.idle_done()


def _server_text(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _quietly(fn) -> None:
    try:
        fn()
    except Exception:
        pass
