"""The extensions RFC 2033 5 requires of an LMTP server, over real sockets.

PIPELINING (RFC 2920): the listeners offer it, answer a pipelined group in order and in one
write, and keep a client that pipelines without end to a bounded number of held replies.
ENHANCEDSTATUSCODES (RFC 2034): once the client said LHLO or EHLO, every 2xx, 4xx and 5xx reply
- aiosmtpd's own as well as ours - carries an RFC 3463 status code; the greeting and the
hello's reply do not need one. A client that sends the rest of its session and half-closes
(RFC 2920 lets it pipeline up to QUIT) is answered in full.

A "write" is one call of aiosmtpd's ``SMTP.push`` (one ``transport.write``): counted by
wrapping it, so the tests see what the client is sent and how often."""

from __future__ import annotations

import re
import socket
import time

import aiosmtpd.smtp
import pytest
from hypothesis import given, strategies as st
from sqlalchemy import func, select

from sink.db import schema as t
from sink.intake import Intake
from sink.sources.replies import with_status_code
from sink.sources.smtp_protocol import MAX_HELD_REPLIES
from tests.conftest import RunningServer, config_for
from tests.support import MailClient, make_mail

BOX = "crm@firma.cz"
STATUS = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}( |$)")


@pytest.fixture
def engine(sqlite_engine):
    return sqlite_engine


@pytest.fixture
def server(engine):
    config = config_for(str(engine.url), listeners=[
        {"protocol": "lmtp", "address": "127.0.0.1:0"},
        {"protocol": "smtp", "address": "127.0.0.1:0"}])
    running = RunningServer(config, Intake(engine), workers=0)
    yield running
    running.stop()


@pytest.fixture
def writes(monkeypatch):
    """The bytes of every write to a client, in order."""
    seen: list[bytes] = []
    original = aiosmtpd.smtp.SMTP.push

    async def push(self, status):
        seen.append(status if isinstance(status, bytes) else status.encode())
        return await original(self, status)
    monkeypatch.setattr(aiosmtpd.smtp.SMTP, "push", push)
    return seen


def stored(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(t.messages)).scalar_one()


def payload(raw: bytes) -> bytes:
    return raw + b".\r\n"       # make_mail ends with CRLF and has no line starting with "."


def codes(client: MailClient, count: int) -> list[int]:
    return [client.reply()[0] for _ in range(count)]


@pytest.mark.parametrize("lmtp", [True, False])
def test_the_hello_offers_pipelining_in_one_write(server, writes, lmtp):
    client = MailClient(server.lmtp_port if lmtp else server.smtp_port)
    writes.clear()
    code, text = client.hello(lmtp=lmtp)
    assert code == 250
    assert "PIPELINING" in text.split("\n")
    assert len(writes) == 1                 # aiosmtpd wrote each of its lines on its own
    client.close()


@pytest.mark.parametrize("rcpts, answers, per_write", [
    ([BOX, BOX], [250, 250, 250, 354], [4]),                    # one write, the 354 last
    # a refusal is sent at once, with what was held before it, and keeps its place
    ([BOX, "nobody@firma.cz", BOX], [250, 250, 550, 250, 354], [3, 2]),
])
def test_a_pipelined_group_is_answered_in_order_in_few_writes(server, engine, writes, rcpts,
                                                               answers, per_write):
    client = MailClient(server.lmtp_port)
    client.hello()
    writes.clear()
    client.sock.sendall(b"MAIL FROM:<mta@firma.cz>\r\n"
                        + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
                        + b"DATA\r\n")
    assert codes(client, len(answers)) == answers
    assert [w.count(b"\r\n") + 1 for w in writes] == per_write
    client.sock.sendall(payload(make_mail()))
    accepted = rcpts.count(BOX)
    assert codes(client, accepted) == [250] * accepted      # LMTP: one reply per RCPT
    assert stored(engine) == 1
    client.close()


def test_the_next_transaction_may_follow_the_data_in_the_same_write(server, engine, writes):
    client = MailClient(server.lmtp_port)
    client.hello()
    client.sock.sendall(b"MAIL FROM:<mta@firma.cz>\r\nRCPT TO:<%s>\r\nDATA\r\n" % BOX.encode())
    assert codes(client, 3) == [250, 250, 354]
    # RFC 2920 3.1: the content may be the first "command" of a group
    client.sock.sendall(payload(make_mail()) + b"RSET\r\nMAIL FROM:<mta@firma.cz>\r\n"
                        b"RCPT TO:<%s>\r\nDATA\r\n" % BOX.encode())
    assert codes(client, 5) == [250, 250, 250, 250, 354]
    client.sock.sendall(payload(make_mail()))
    assert codes(client, 1) == [250]
    assert stored(engine) == 2
    client.close()


def test_a_group_whose_mail_is_refused_stores_nothing(server, engine):
    client = MailClient(server.lmtp_port)
    client.hello()
    client.sock.sendall(b"MAIL TO:<mta@firma.cz>\r\nRCPT TO:<%s>\r\nDATA\r\n" % BOX.encode())
    assert codes(client, 3) == [501, 503, 503]
    assert client.cmd("NOOP")[0] == 250         # the session goes on
    assert stored(engine) == 0
    client.close()


def test_what_is_held_goes_out_before_a_command_that_may_wait(server, writes):
    """Found in review: a RSET's 250 held in front of AUTH waited for the password check (and
    was lost when the sink stopped meanwhile). Only MAIL, RCPT, RSET and DATA - answered
    without waiting - may follow a held reply; before any other command it is sent."""
    client = MailClient(server.lmtp_port)
    client.hello()
    writes.clear()
    client.sock.sendall(b"RSET\r\nMAIL FROM:<mta@firma.cz>\r\nVRFY <alice@firma.cz>\r\n")
    assert codes(client, 3) == [250, 250, 252]
    assert [w.count(b"\r\n") + 1 for w in writes] == [2, 1]
    client.close()


def test_a_client_that_pipelines_without_end_gets_bounded_writes(server, writes):
    client = MailClient(server.lmtp_port)
    client.hello()
    writes.clear()
    count = 3 * MAX_HELD_REPLIES
    client.sock.sendall(b"RSET\r\n" * count + b"NOOP\r\n")
    assert codes(client, count + 1) == [250] * (count + 1)
    per_write = [w.count(b"\r\n") + 1 for w in writes]
    assert sum(per_write) == count + 1
    assert max(per_write) <= MAX_HELD_REPLIES + 1
    assert len(writes) < count / 2                  # held, not one write per reply
    client.close()


# ------------------------------------------------------------ the input ends (half-close)
#
# A client may send the rest of its session and shut its side down (shutdown(SHUT_WR), as
# `nc -N` does) while it reads the replies. aiosmtpd cancelled the session at the end of the
# input: the client got the greeting at most, and a message stored meanwhile lost its 250.

@pytest.fixture(params=["asyncio", "uvloop"])
def loop_server(request, engine):
    import asyncio
    import uvloop
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop
    config = config_for(str(engine.url), listeners=[
        {"protocol": "lmtp", "address": "127.0.0.1:0", "timeout": 20},
        {"protocol": "smtp", "address": "127.0.0.1:0", "timeout": 20}])
    running = RunningServer(config, Intake(engine), workers=0, loop_factory=factory)
    yield running
    running.stop()


def half_closed_session(port: int, sent: bytes) -> tuple[list[int], float]:
    """Send ``sent`` in one write, shut our side, read until the server closes: the reply
    codes (one per reply, multi-line replies once) and how long the server took to close."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(sent)
    sock.shutdown(socket.SHUT_WR)
    began, received = time.monotonic(), b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    return ([int(line[:3]) for line in received.split(b"\r\n") if line[3:4] == b" "],
            time.monotonic() - began)


def transaction(rcpts: list[str]) -> bytes:
    return (b"MAIL FROM:<mta@firma.cz>\r\n"
            + b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
            + b"DATA\r\n" + payload(make_mail()))


@pytest.mark.parametrize("lmtp", [True, False])
def test_a_whole_session_then_half_close_is_answered_in_full(loop_server, engine, lmtp):
    port = loop_server.lmtp_port if lmtp else loop_server.smtp_port
    sent = (b"LHLO" if lmtp else b"EHLO") + b" client.test\r\n" + transaction([BOX, BOX]) \
        + transaction([BOX]) + b"QUIT\r\n"
    replies, _ = half_closed_session(port, sent)
    after_first = [250, 250] if lmtp else [250]          # LMTP: one reply per RCPT
    assert replies == [220, 250, 250, 250, 250, 354, *after_first,
                       250, 250, 354, 250, 221], replies
    assert stored(engine) == 2


def test_without_quit_the_session_ends_with_the_input(loop_server, engine):
    replies, took = half_closed_session(loop_server.lmtp_port,
                                        b"LHLO client.test\r\n" + transaction([BOX]))
    assert replies == [220, 250, 250, 250, 354, 250], replies
    assert took < 10            # closed at the end of the input, not at the 20 s timeout
    assert stored(engine) == 1


@pytest.mark.parametrize("cut", [
    pytest.param(lambda message: message[:-3], id="inside-the-message"),
    pytest.param(lambda message: message + b"MAIL FROM:<mta@firm", id="inside-a-command"),
])
def test_what_the_end_cuts_off_is_not_acted_on(loop_server, engine, cut):
    message = payload(make_mail())
    sent = b"LHLO client.test\r\nMAIL FROM:<mta@firma.cz>\r\nRCPT TO:<crm@firma.cz>\r\n" \
        b"DATA\r\n" + cut(message)
    replies, took = half_closed_session(loop_server.lmtp_port, sent)
    whole = message in sent
    assert replies == [220, 250, 250, 250, 354] + ([250] if whole else []), replies
    assert took < 10
    assert stored(engine) == (1 if whole else 0)


def test_a_client_that_reads_each_reply_then_half_closes_gets_a_clean_end(loop_server, engine):
    """Found in review: the end arriving while the session waited for the next command made
    aiosmtpd answer the IncompleteReadError as a handler error - a 451 (and an error logged)
    to a client that had merely finished. The end of the input ends the session silently."""
    for steps in ([], [b"LHLO client.test\r\n"],
                  [b"LHLO client.test\r\n", b"MAIL FROM:<mta@firma.cz>\r\n",
                   b"RCPT TO:<crm@firma.cz>\r\n", b"DATA\r\n", payload(make_mail())]):
        client = MailClient(loop_server.lmtp_port)
        for step in steps:
            client.sock.sendall(step)
            assert client.reply()[0] in (250, 354)
        time.sleep(0.2)                 # the session now waits for the next command
        client.sock.shutdown(socket.SHUT_WR)
        assert client.file.read() == b"", steps
        client.abort()
    assert stored(engine) == 1


def test_a_probe_that_closes_at_once_still_gives_its_slot_back(loop_server):
    [state, _] = loop_server.server.listeners.states
    for _ in range(50):
        socket.create_connection(("127.0.0.1", loop_server.lmtp_port)).close()
    deadline = time.monotonic() + 10
    while state.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.connections == 0


# ------------------------------------------------------------ ENHANCEDSTATUSCODES

def lines_of(client: MailClient, command: bytes) -> list[str]:
    client.sock.sendall(command + b"\r\n")
    lines = []
    while True:
        line = client.file.readline().decode().rstrip("\r\n")
        lines.append(line)
        if line[3:4] != "-":
            return lines


@pytest.mark.parametrize("lmtp", [True, False])
def test_every_reply_after_the_hello_has_a_status_code(server, lmtp):
    client = MailClient(server.lmtp_port if lmtp else server.smtp_port)
    hello = lines_of(client, b"LHLO client.test" if lmtp else b"EHLO client.test")
    assert "ENHANCEDSTATUSCODES" in [line[4:] for line in hello]
    commands = [b"NOOP", b"RSET", b"HELP", b"VRFY <alice@firma.cz>", b"EXPN staff", b"BOGUS",
                b"MAIL", b"RCPT TO:<crm@firma.cz>", b"DATA", b"MAIL FROM:<mta@firma.cz>",
                b"MAIL FROM:<mta@firma.cz>", b"RCPT TO:<nobody@firma.cz>",
                b"RCPT TO:<crm@firma.cz>", b"x" * 5000]
    replies = [(command[:30], lines_of(client, command)) for command in commands]
    assert lines_of(client, b"DATA")[0].startswith("354 ")
    replies.append((b"(data)", lines_of(client, make_mail() + b".")))
    replies.append((b"QUIT", lines_of(client, b"QUIT")))
    missing = [(command, lines) for command, lines in replies
               if not all(STATUS.match(line) for line in lines)]
    assert not missing, missing
    # and the codes say what happened
    first = {command: lines[0] for command, lines in reversed(replies)}
    assert first[b"MAIL FROM:<mta@firma.cz>"].startswith("250 2.1.0")
    assert replies[10][1][0].startswith("503 5.5.1")            # nested MAIL
    assert first[b"BOGUS"].startswith("500 5.5.2")
    assert first[b"MAIL"].startswith("501 5.5.4")
    assert first[b"QUIT"].startswith("221 2.0.0")


def test_help_still_lists_the_commands_and_their_syntax(server):
    """Found in review: HELP read its syntax off aiosmtpd's dispatch table, which now holds
    our wrappers: it listed no command."""
    client = MailClient(server.smtp_port)
    client.hello(lmtp=False)
    listed = lines_of(client, b"HELP")[0]
    assert all(name in listed.split() for name in ("DATA", "EHLO", "MAIL", "RCPT", "RSET")), listed
    assert lines_of(client, b"HELP MAIL") == [
        "250 2.0.0 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"]
    client.close()


def test_helo_and_ehlo_are_unknown_commands_with_a_code_on_lmtp(server):
    client = MailClient(server.lmtp_port)
    client.hello()
    for command in (b"EHLO client.test", b"HELO client.test"):
        assert lines_of(client, command)[0].startswith("500 5.5.2 "), command
    client.close()


def test_a_recipient_that_is_not_utf8_is_refused_for_good(server, engine):
    """Found in review: the 550 quoting it could not be encoded, and the MTA got 451 - a
    temporary failure it retried for a permanently bad address."""
    client = MailClient(server.lmtp_port)
    client.hello()
    assert lines_of(client, b"MAIL FROM:<mta@firma.cz>")[0].startswith("250 ")
    refused = lines_of(client, b"RCPT TO:<\xff\xfe@firma.cz>")[0]
    assert refused.startswith("550 5.1.1 "), refused
    assert lines_of(client, b"RCPT TO:<crm@firma.cz>")[0].startswith("250 ")      # goes on
    client.close()


def test_the_greeting_and_a_plain_helo_session_are_left_alone(server):
    client = MailClient(server.smtp_port)
    assert not STATUS.match(f"220 {client.greeting[1]}")
    assert lines_of(client, b"HELO client.test")[0].startswith("250 ")
    assert lines_of(client, b"NOOP") == ["250 OK"]      # no EHLO: the client asked for none
    client.close()


reply_lines = st.tuples(
    st.sampled_from(["220", "221", "235", "250", "252", "334", "354", "421", "451", "452",
                     "500", "501", "502", "503", "530", "550", "552", "553", "554", "555"]),
    st.sampled_from([" ", "-"]),
    st.one_of(st.just(""), st.just("2.1.5 OK"), st.just("5.1.1 <x@y>: no"),
              st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                      max_size=40)))


@given(st.lists(reply_lines, min_size=1, max_size=5))
def test_status_codes_are_added_once_and_change_nothing_else(parts):
    reply = "\r\n".join(f"{code}{sep}{text}".rstrip(" ") for code, sep, text in parts)
    coded = with_status_code(reply)
    assert with_status_code(coded) == coded                      # once
    before, after = reply.split("\r\n"), coded.split("\r\n")
    assert len(before) == len(after)
    for old, new in zip(before, after):
        if old[:1] == "3":
            assert new == old                                     # 3xx: no code (RFC 2034)
            continue
        assert STATUS.match(new), new
        if STATUS.match(old):
            assert new == old
            continue
        # the code, its separator, then the status code inserted before the text as it was
        text = new[4:].partition(" ")[2]
        assert (new[:4] + text).rstrip(" ") == old, (old, new)
