"""A server that declares a message small and then sends it large (SPEC 2.2 max_message_size:
what a client - here a server - can make us hold is bounded). The server is the real Dovecot
behind a proxy that rewrites only the sizes it declares (POP3 LIST, IMAP RFC822.SIZE) to 100
octets; the message itself comes through as Dovecot sends it. What must happen: the message
that is larger than max_message_size stays on the server (logged once, never deleted), the
read of it stops at the bound, and the other messages are taken in the same pass. And a
server whose answer never ends (a listing, untagged lines) fails the pass at a bound instead
of filling our memory."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time

import pytest

from sink.sources.imap import (ANSWER_LINES, OTHER_LITERAL, AnswerTooLong, _AnswerBudget,
                               _LiteralTooBig)
from sink.sources.pop3 import LISTING, MAX_LINE, POP3, _OverBudget
from tests.sources_support import (USER, imap_source, pop3_source, run_poll, stored_raws,
                                   write_config)
from tests.support import make_mail

LIMIT = 20_000


class LyingProxy:
    """Forwards 127.0.0.1:port to Dovecot; in the server's answers it writes 100 for every
    size the server declares. ``kind`` pop3: the lines of a LIST answer; imap: every
    ``RFC822.SIZE n`` outside literals (a literal's bytes pass as they are). ``greeting``
    ``"silent"`` or ``"trickle"``: no server behind it; a connection is accepted and then
    hears nothing, or a greeting that never ends."""

    def __init__(self, target_port: int, kind: str, flood: bool = False,
                 trickle: bool = False, greeting: str | None = None):
        self.target, self.kind, self.flood, self.trickle = target_port, kind, flood, trickle
        self.greeting = greeting
        self.flooded = 0
        self.hung_up = threading.Event()        # the client closed a flooded connection
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.greeting:
                threading.Thread(target=self._greet, args=(client,), daemon=True).start()
                continue
            server = socket.create_connection(("127.0.0.1", self.target))
            listing = threading.Event()
            threading.Thread(target=self._up, args=(client, server, listing),
                             daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, listing),
                             daemon=True).start()

    def _up(self, client, server, listing):
        reader = client.makefile("rb")
        try:
            for line in iter(reader.readline, b""):
                command = line.split(b" ")[-1 if self.kind == "pop3" else 1:][:1]
                if self.kind == "pop3" and line.strip().upper() == b"LIST":
                    listing.set()
                if (self.flood or self.trickle) and command and \
                        command[0].strip().upper() in (b"UIDL", b"SELECT"):
                    (self._flood if self.flood else self._trickle)(client)
                    return
                server.sendall(line)
        except OSError:
            pass
        finally:
            _close(server)

    def _down(self, server, client, listing):
        reader = server.makefile("rb")
        in_list = False
        try:
            while True:
                line = reader.readline()
                if not line:
                    break
                if self.kind == "pop3":
                    if listing.is_set() and line.startswith(b"+OK"):
                        listing.clear()
                        in_list = True
                    elif in_list and line == b".\r\n":
                        in_list = False
                    elif in_list:
                        line = re.sub(rb"^(\d+) \d+", rb"\1 100", line)
                    client.sendall(line)
                    continue
                line = re.sub(rb"RFC822\.SIZE \d+", b"RFC822.SIZE 100", line)
                client.sendall(line)
                literal = re.search(rb"\{(\d+)\}\r\n$", line)
                if literal:
                    client.sendall(reader.read(int(literal.group(1))))
        except OSError:
            pass
        finally:
            _close(client)

    def _flood(self, client):
        """An answer that never ends: lines of 1,000 octets until the client hangs up."""
        line = (b"1 " if self.kind == "pop3" else b"* OK ") + b"f" * 993 + b"\r\n"
        chunk = line[:1000] * 1024
        start = b"+OK flood\r\n" if self.kind == "pop3" else b""
        try:
            client.sendall(start)
            while not self.stopping:
                client.sendall(chunk)
                self.flooded += len(chunk)
        except OSError:
            self.hung_up.set()

    def _trickle(self, client):
        """An answer that never ends, slowly: a byte every 0.2 s, never a line end."""
        try:
            while not self.stopping:
                client.sendall(b"f")
                time.sleep(0.2)
        except OSError:
            self.hung_up.set()

    def _greet(self, client):
        if self.greeting == "trickle":
            self._trickle(client)
            return
        try:                            # silent: wait for the client to hang up
            while not self.stopping and client.recv(65536):
                pass
        except OSError:
            pass
        self.hung_up.set()

    def close(self):
        self.stopping = True
        self.listener.close()


def _close(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def too_big_lines(err: str) -> list[dict]:
    found = []
    for line in err.splitlines():
        if '"source.message_too_big"' in line:
            found.append(json.loads(line[line.index("{"):]))
    return found


def poll_through(kind: str, dovecot, db_url, tmp_path, proxy: dict | None = None,
                 hang_up: bool = False, **source):
    """`sink poll` of one ``kind`` source reading Dovecot through a LyingProxy(**proxy):
    (exit code, its lines, the proxy, seconds taken). ``hang_up``: wait for the client to
    close the connection (not leave it open)."""
    lying = LyingProxy(dovecot.ports[kind], kind, **(proxy or {}))
    try:
        make = pop3_source if kind == "pop3" else imap_source
        cfg = write_config(tmp_path / "sink.toml", db_url, [make(
            dovecot, tmp_path / "pw", port=lying.port, **source)])
        started = time.monotonic()
        code, lines = run_poll(cfg)
        took = time.monotonic() - started
        if hang_up:
            assert lying.hung_up.wait(10)
    finally:
        lying.close()
    return code, lines, lying, took


@pytest.mark.parametrize("kind", ["pop3", "imap"])
def test_a_message_sent_larger_than_declared_stays_and_the_rest_are_taken(
        kind, dovecot, engine, db_url, tmp_path, capfd):
    first, last = make_mail(subject="first"), make_mail(subject="last")
    big = make_mail(subject="big", body="y" * (5 * LIMIT))     # declared as 100 octets
    for raw in (first, big, last):
        dovecot.drop(USER, raw)
    code, lines, _, _ = poll_through(kind, dovecot, db_url, tmp_path, max_message_size=LIMIT)
    assert code == 0, json.dumps(lines)
    assert (lines[0]["stored"], lines[0]["skipped"], lines[0]["errors"]) == (2, 1, []), lines
    assert lines[0]["removed"] == 2
    assert sorted(stored_raws(engine)) == sorted([first, last])
    assert dovecot.contents(USER) == [big]                      # never deleted
    logged = too_big_lines(capfd.readouterr().err)
    assert len(logged) == 1 and logged[0]["sent_more_than_declared"] is True, logged
    assert logged[0]["limit"] == LIMIT


@pytest.mark.parametrize("kind", ["pop3", "imap"])
def test_an_answer_that_never_ends_fails_the_pass_at_its_bound(kind, dovecot, engine, db_url,
                                                                tmp_path):
    dovecot.drop(USER, make_mail(subject="waits"))
    code, lines, proxy, _ = poll_through(kind, dovecot, db_url, tmp_path, {"flood": True},
                                         hang_up=True)
    assert code == 1, json.dumps(lines)
    assert "ran past" in lines[0]["errors"][0], lines
    bound = LISTING if kind == "pop3" else ANSWER_LINES
    assert bound <= proxy.flooded < 4 * bound       # it read to the bound, and stopped there
    assert len(dovecot.files(USER)) == 1 and stored_raws(engine) == []


@pytest.mark.parametrize("kind", ["pop3", "imap"])
def test_a_server_that_trickles_is_cut_at_the_deadline(kind, dovecot, engine, db_url, tmp_path,
                                                       monkeypatch):
    """A byte every 0.2 s keeps every read within the socket's 60 s timeout for ever: the
    exchange's own deadline cuts it (here 0.5 s an answer, so the plan's 8 answers: 4 s)."""
    from sink.sources import poller
    monkeypatch.setattr(poller, "ANSWER_DEADLINE", 0.5)
    dovecot.drop(USER, make_mail(subject="waits"))
    code, lines, _, took = poll_through(kind, dovecot, db_url, tmp_path, {"trickle": True},
                                        hang_up=True)
    assert code == 1, json.dumps(lines)
    assert lines[0]["errors"][0].startswith("ServerTooSlow: no complete answer within 4 s")
    assert 4 <= took < 30, took
    assert len(dovecot.files(USER)) == 1 and stored_raws(engine) == []


@pytest.mark.parametrize("kind,tls,greeting", [
    ("pop3", "none", "trickle"), ("imap", "none", "trickle"),
    ("pop3", "ssl", "silent"), ("imap", "ssl", "silent")])
def test_a_connection_that_never_gets_going_is_cut_at_the_deadline(
        kind, tls, greeting, dovecot, engine, db_url, tmp_path, monkeypatch):
    """The set-up too has a deadline (two answers'): a greeting trickling a byte every 0.2 s,
    and a TLS handshake the server never answers (cut before the socket's own 60 s)."""
    from sink.sources import poller
    monkeypatch.setattr(poller, "ANSWER_DEADLINE", 0.5)
    code, lines, _, took = poll_through(kind, dovecot, db_url, tmp_path, {"greeting": greeting},
                                        hang_up=True, tls=tls)
    assert code == 1, json.dumps(lines)
    assert lines[0]["errors"][0].startswith("ServerTooSlow: no complete answer within 1 s"), \
        lines
    assert 1 <= took < 20, took


class FakeImap:
    def __init__(self):
        self.reads = []

    def read(self, size):
        self.reads.append(size)
        return b"x" * size

    def readline(self):
        return b"* OK " + b"f" * 993 + b"\r\n"


def test_the_imap_literal_bound_refuses_before_reading():
    imap = FakeImap()
    budget = _AnswerBudget(imap)                    # installs itself as read and readline
    assert imap.read(OTHER_LITERAL) == b"x" * OTHER_LITERAL    # outside a BODY fetch: 1 MiB
    with pytest.raises(_LiteralTooBig):
        imap.read(OTHER_LITERAL + 1)
    budget.allow(each=1000, total=1500)
    imap.read(1000)
    with pytest.raises(_LiteralTooBig):
        imap.read(600)                              # each within, the fetch's total beyond
    with pytest.raises(_LiteralTooBig):
        imap.read(1001)
    assert budget._read.__self__.reads == [OTHER_LITERAL, 1000]    # nothing refused was read
    budget.reset()                      # another command: 1 MiB literals, 64 MiB of them at most
    taken = 0
    with pytest.raises(_LiteralTooBig):
        while True:
            imap.read(OTHER_LITERAL)
            taken += OTHER_LITERAL
    assert taken == ANSWER_LINES


def test_the_imap_answer_lines_are_bounded_per_command():
    imap = FakeImap()
    budget = _AnswerBudget(imap)
    read = 0
    with pytest.raises(AnswerTooLong):
        while True:
            read += len(imap.readline())
    assert ANSWER_LINES - 1000 <= read <= ANSWER_LINES
    budget.reset()                                  # the next command starts again
    assert imap.readline().startswith(b"* OK")


def test_the_pop3_answer_bound_stops_reading_at_the_budget():
    class Endless(io.RawIOBase):        # a server that sends lines for ever
        def readable(self):
            return True

        def readinto(self, buffer):
            chunk = (b"z" * 998 + b"\r\n") * (len(buffer) // 1000)
            buffer[:len(chunk)] = chunk
            return len(chunk)
    client = POP3.__new__(POP3)
    client.file = io.BufferedReader(Endless(), 65536)
    client.budget = 50_000
    read = 0
    with pytest.raises(_OverBudget):
        while True:
            read += client._getline()[1]
    assert 49_000 <= read <= 50_000 + MAX_LINE
