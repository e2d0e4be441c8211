"""8. Protocol abuse: SMTP smuggling, commands pipelined before STARTTLS, clients outside the
allowed networks, too many recipients, slow clients, too many connections. Each is refused
cleanly, nothing is smuggled into storage, and the server stays up and keeps serving."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest
from sqlalchemy import select

from sink.db import schema as t
from tests.conftest import with_listener_limits
from tests.support import MailClient, make_mail, require


def message_ids(engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(select(t.messages.c.message_id)).scalars())


def raw_of(engine, message_id: str) -> bytes:
    with engine.connect() as conn:
        return bytes(conn.execute(
            select(t.raw_messages.c.content).join(
                t.messages, t.messages.c.id == t.raw_messages.c.message_id)
            .where(t.messages.c.message_id == message_id)).scalar_one())


def still_serving(port: int, message_id: str, *, lmtp: bool = True) -> bool:
    client = MailClient(port)
    client.hello(lmtp)
    code, _ = client.send(make_mail(message_id=message_id), lmtp=lmtp)[-1]
    client.close()
    return code == 250


# ------------------------------------------------------------------------------ smuggling

# Line ends a lenient server might take for the end of data (SMTP smuggling, CVE-2023-51764
# and friends). Only CRLF "." CRLF ends DATA here; everything else is message content.
SMUGGLING_ENDS = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r.\r", b"\n.\r",
                  b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\r\n .\r\n"]


def unstuffed(data: bytes) -> bytes:
    return (b"\r\n" + data).replace(b"\r\n.", b"\r\n")[2:]


@pytest.mark.parametrize("protocol", ["lmtp", "smtp"])
def test_smuggling_end_of_data_variants_are_content(engine, start_server, protocol):
    server = start_server()
    port = server.port_for(protocol)
    lmtp = protocol == "lmtp"
    for n, end in enumerate(SMUGGLING_ENDS):
        client = MailClient(port)
        client.hello(lmtp)
        assert client.cmd("MAIL FROM:<mta@firma.cz>")[0] == 250
        assert client.cmd("RCPT TO:<crm@firma.cz>")[0] == 250
        assert client.cmd("DATA")[0] == 354
        smuggled = (b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<crm@firma.cz>\r\nDATA\r\n"
                    b"From: ceo@firma.cz\r\nSubject: smuggled\r\nMessage-ID: <smuggled-" +
                    str(n).encode() + b"@attacker>\r\n\r\nwire the money")
        body = (b"From: jan@acme.cz\r\nTo: alice@firma.cz\r\nSubject: outer\r\nMessage-ID: <outer-"
                + str(n).encode() + b"@test>\r\n\r\nbefore" + end + smuggled + end + b"after")
        client.sock.sendall(body + b"\r\n.\r\n")
        code, text = client.reply()
        assert code == 250 and "stored" in text, (end, code, text)
        # nothing queued behind the one reply: the next reply answers our NOOP
        assert client.cmd("NOOP") == (250, "2.0.0 OK"), end
        client.close()
        # stored as the server must read it: CRLF-delimited lines, a leading dot removed
        assert raw_of(engine, f"<outer-{n}@test>") == unstuffed(body + b"\r\n")
    ids = message_ids(engine)
    assert not [i for i in ids if "smuggled" in (i or "")], ids
    assert len(ids) == len(SMUGGLING_ENDS)


# ------------------------------------------------------------------------------ STARTTLS

@pytest.fixture
def tls_files(tmp_path):
    require(shutil.which("openssl") is not None, "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=sink.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return str(cert), str(key)


def _tls_client(context) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def starttls(port: int, *, injected: bytes = b""):
    """EHLO, then STARTTLS with ``injected`` plaintext in the same packet; returns the TLS
    socket and a line reader over it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    plain = sock.makefile("rb")
    assert plain.readline().startswith(b"220")
    sock.sendall(b"EHLO client.test\r\n")
    while True:
        line = plain.readline()
        if line[3:4] != b"-":
            break
    sock.sendall(b"STARTTLS\r\n" + injected)
    assert plain.readline().startswith(b"220")
    tls = _tls_client(None).wrap_socket(sock, server_hostname="sink.test")
    return tls, tls.makefile("rb")


def tls_cmd(tls, reader, line: bytes) -> bytes:
    tls.sendall(line + b"\r\n")
    while True:
        reply = reader.readline()
        if reply[3:4] != b"-":
            return reply


def test_commands_pipelined_before_starttls_are_discarded(engine, config, start_server,
                                                          tls_files):
    cert, key = tls_files
    server = start_server(cfg=with_listener_limits(config, tls_cert=cert, tls_key=key))
    injected = (b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<crm@firma.cz>\r\nDATA\r\n"
                b"Subject: injected\r\nMessage-ID: <injected@attacker>\r\n\r\nx\r\n.\r\n")
    tls, reader = starttls(server.smtp_port, injected=injected)
    assert tls_cmd(tls, reader, b"EHLO client.test").startswith(b"250")
    # the plaintext MAIL was thrown away with the handshake: a RCPT now has no transaction
    assert tls_cmd(tls, reader, b"RCPT TO:<crm@firma.cz>").startswith(b"503")
    assert tls_cmd(tls, reader, b"MAIL FROM:<mta@firma.cz>").startswith(b"250")
    assert tls_cmd(tls, reader, b"RCPT TO:<crm@firma.cz>").startswith(b"250")
    assert tls_cmd(tls, reader, b"DATA").startswith(b"354")
    assert tls_cmd(tls, reader, make_mail(message_id="<over-tls@test>") + b".").startswith(
        b"250")
    tls_cmd(tls, reader, b"QUIT")
    tls.close()
    assert message_ids(engine) == ["<over-tls@test>"]


def test_starttls_sessions_are_counted_once(engine, config, start_server, tls_files):
    """A session that upgrades to TLS is one connection, before and after the handshake: the
    limit must not fill up with sessions long gone."""
    cert, key = tls_files
    server = start_server(cfg=with_listener_limits(config, tls_cert=cert, tls_key=key,
                                                   max_connections=2))
    for _ in range(4):
        tls, reader = starttls(server.smtp_port)
        assert tls_cmd(tls, reader, b"EHLO client.test").startswith(b"250")
        tls_cmd(tls, reader, b"QUIT")
        tls.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        client = MailClient(server.smtp_port)
        if client.greeting[0] == 220:
            client.close()
            break
        client.abort()
        time.sleep(0.1)
    assert client.greeting[0] == 220, client.greeting
    assert still_serving(server.smtp_port, "<after-tls@test>", lmtp=False)


# ------------------------------------------------------------------------------ networks

def test_client_outside_the_allowed_networks_is_refused_and_others_are_served(
        engine, config, start_server):
    # only 127.0.0.2 may deliver; 127.0.0.1 is outside (both are this machine's loopback)
    server = start_server(cfg=with_listener_limits(config, allowed_networks=("127.0.0.2/32",),
                                                   max_connections=5))
    refused = []
    for _ in range(20):                       # more refusals than max_connections
        client = MailClient(server.lmtp_port)
        refused.append(client.greeting[0])
        try:
            client.sock.sendall(b"LHLO x\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<crm@firma.cz>\r\n")
            leftover = client.sock.recv(1024)
        except OSError:
            leftover = b""
        client.abort()
        assert leftover == b""                # no command was answered
    assert set(refused) == {554}
    sock = socket.create_connection(("127.0.0.1", server.lmtp_port), timeout=10,
                                    source_address=("127.0.0.2", 0))
    client = MailClient.__new__(MailClient)
    client.sock, client.file = sock, sock.makefile("rb")
    client.greeting = client.reply()
    assert client.greeting[0] == 220            # refusals did not use up the connections
    client.hello()
    assert client.send(make_mail(message_id="<allowed@test>"))[-1][0] == 250
    client.close()
    assert message_ids(engine) == ["<allowed@test>"]


# ------------------------------------------------------------------------------ recipients

def test_a_thousand_recipients_get_452_beyond_the_limit_and_one_reply_each(engine, config,
                                                                          start_server):
    server = start_server(cfg=with_listener_limits(config, max_recipients=100))
    client = MailClient(server.lmtp_port)
    client.hello()
    replies = client.send(make_mail(message_id="<many-rcpts@test>"),
                          rcpts=["crm@firma.cz"] * 1000)
    client.close()
    rcpt, data = replies[:1000], replies[1000:]
    assert [c for c, _ in rcpt] == [250] * 100 + [452] * 900
    assert len(data) == 100 and {c for c, _ in data} == {250}
    assert message_ids(engine) == ["<many-rcpts@test>"]


# ------------------------------------------------------------------------------ slow clients

def test_slowloris_is_cut_off_and_does_not_hold_others(engine, config, start_server):
    server = start_server(cfg=with_listener_limits(config, timeout=1))
    outcome = {}

    def slowloris():
        slow = socket.create_connection(("127.0.0.1", server.lmtp_port), timeout=10)
        slow.recv(1024)
        started = time.monotonic()
        try:
            for byte in b"LHLO never-ending-" * 20:     # a byte every 0.1 s, never a line end
                slow.sendall(bytes([byte]))
                time.sleep(0.1)
            outcome["closed"] = None if slow.recv(1024) else time.monotonic() - started
        except OSError:
            outcome["closed"] = time.monotonic() - started
        slow.close()
    attacker = threading.Thread(target=slowloris)
    attacker.start()
    time.sleep(0.3)
    assert still_serving(server.lmtp_port, "<beside-slowloris@test>")   # others are served
    attacker.join(60)
    assert outcome.get("closed") is not None and outcome["closed"] < 5, outcome
    assert message_ids(engine) == ["<beside-slowloris@test>"]


def test_a_slow_but_steady_message_is_not_cut_off(engine, config, start_server):
    """The session timeout is for silence, not for a long transfer: a message whose transfer
    takes longer than the timeout, arriving steadily, is received and stored."""
    server = start_server(cfg=with_listener_limits(config, timeout=1))
    client = MailClient(server.lmtp_port)
    client.hello()
    assert client.cmd("MAIL FROM:<mta@firma.cz>")[0] == 250
    assert client.cmd("RCPT TO:<crm@firma.cz>")[0] == 250
    assert client.cmd("DATA")[0] == 354
    raw = make_mail(message_id="<slow-link@test>", body="line\n" * 400)
    pieces = [raw[i:i + len(raw) // 8 + 1] for i in range(0, len(raw), len(raw) // 8 + 1)]
    for piece in pieces:                                    # ~2.4 s in all, 0.3 s gaps
        client.sock.sendall(piece)
        time.sleep(0.3)
    client.sock.sendall(b".\r\n")
    code, text = client.reply()
    client.close()
    assert code == 250, text
    assert raw_of(engine, "<slow-link@test>") == raw


# ------------------------------------------------------------------------------ connections

def test_connection_flood_gets_421_and_the_server_recovers(engine, config, start_server):
    server = start_server(cfg=with_listener_limits(config, max_connections=10))
    clients = [MailClient(server.lmtp_port) for _ in range(60)]
    greetings = [c.greeting[0] for c in clients]
    assert greetings.count(220) == 10 and greetings.count(421) == 50
    for c in clients:
        c.abort()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        probe = [MailClient(server.lmtp_port) for _ in range(10)]
        codes = [p.greeting[0] for p in probe]
        for p in probe:
            p.abort()
        if codes == [220] * 10:
            break
        time.sleep(0.1)
    assert codes == [220] * 10                # every slot came back
    assert still_serving(server.lmtp_port, "<after-flood@test>")
