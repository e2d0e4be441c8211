"""PIPELINING (RFC 2920; RFC 2033 5: an LMTP server MUST implement it) over real sockets: the
listeners offer it, answer a pipelined group in order and in one write, and keep a client
that pipelines without end to a bounded number of held replies.

A "write" is one call of aiosmtpd's ``SMTP.push`` (one ``transport.write``): counted by
wrapping it, so the tests see what the client is sent and how often."""

from __future__ import annotations

import aiosmtpd.smtp
import pytest
from sqlalchemy import func, select

from sink.db import schema as t
from sink.intake import Intake
from sink.sources.smtp_protocol import MAX_HELD_REPLIES
from tests.conftest import RunningServer, config_for, seeded
from tests.support import MailClient, make_mail

BOX = "crm@firma.cz"


@pytest.fixture
def engine(tmp_path):
    engine = seeded(f"sqlite:///{tmp_path}/pipelining.db")
    yield engine
    engine.dispose()


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


def test_a_pipelined_group_is_answered_in_order_in_one_write(server, engine, writes):
    client = MailClient(server.lmtp_port)
    client.hello()
    writes.clear()
    client.sock.sendall(b"MAIL FROM:<mta@firma.cz>\r\nRCPT TO:<%s>\r\nRCPT TO:<%s>\r\n"
                        b"DATA\r\n" % (BOX.encode(), BOX.encode()))
    assert codes(client, 4) == [250, 250, 250, 354]
    assert len(writes) == 1 and writes[0].count(b"\r\n") == 3      # the 354 last, unended
    client.sock.sendall(payload(make_mail()))
    assert codes(client, 2) == [250, 250]       # LMTP: one reply per RCPT
    assert stored(engine) == 1
    client.close()


def test_a_refused_recipient_inside_a_group_keeps_its_place(server, engine, writes):
    client = MailClient(server.lmtp_port)
    client.hello()
    writes.clear()
    client.sock.sendall(b"MAIL FROM:<mta@firma.cz>\r\nRCPT TO:<%s>\r\n"
                        b"RCPT TO:<nobody@firma.cz>\r\nRCPT TO:<%s>\r\nDATA\r\n"
                        % (BOX.encode(), BOX.encode()))
    assert codes(client, 5) == [250, 250, 550, 250, 354]
    # a refusal is sent at once, with what was held before it
    assert [w.count(b"\r\n") + 1 for w in writes] == [3, 2]
    client.sock.sendall(payload(make_mail()))
    assert codes(client, 2) == [250, 250]
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
