"""6. Byte-exact corpus: whatever crosses the wire is stored exactly as it arrived (after
dot-unstuffing), over LMTP and SMTP, on SQLite and PostgreSQL, and is processed - never refused
or deferred for its content.

The one transformation is the protocol's own: DATA ends with CRLF "." CRLF, so a message without
a final line end arrives with the CRLF the client had to add (README, "How a message flows").
"""

from __future__ import annotations

import pytest
from sqlalchemy import select

from sink.db import schema as t
from tests.support import MailClient

HEAD = (b"From: Jan <jan@acme.cz>\r\nTo: alice@firma.cz\r\nDate: Mon, 02 Nov 2026 10:00:00 "
        b"+0000\r\n")


def mail(name: str, body: bytes, *, subject: bytes | None = None, head: bytes = HEAD,
         extra: bytes = b"") -> bytes:
    subject = subject if subject is not None else f"corpus {name}".encode()
    return (head + b"Subject: " + subject + b"\r\nMessage-ID: <" + name.encode() +
            b"@corpus>\r\n" + extra + b"\r\n" + body)


# name -> (bytes the client means to send, envelope options)
CORPUS = {
    "dot-stuffing": mail("dot-stuffing", b".\r\n..\r\n...\r\n.hidden\r\n..double\r\n .x\r\n"),
    "lone-dot-inside": mail("lone-dot-inside", b"before\r\n.\r\nafter\r\n.\r\n\r\nend\r\n"),
    "bare-lf": mail("bare-lf", b"one\ntwo\n.\nthree\n\n.\r\nfour\n"),
    "bare-cr": mail("bare-cr", b"one\rtwo\r.\rthree\r\r\n\r.\r\nfour\r\r\n"),
    "nul-bytes": mail("nul-bytes", b"a\x00b\r\n\x00\r\n.\x00\r\n",
                      subject=b"nul \x00 in the subject", extra=b"X-Nul: \x00\x00\r\n"),
    "8bit-without-8bitmime": mail("8bit-without-8bitmime",
                                  b"Dobr\xfd den, \xe8\xed\xf9\xbe\r\nutf8: \xc5\xbelu\xc5\xa5\r\n",
                                  subject=b"Objedn\xe1vka \xff\xfe",
                                  head=b"From: Ji\xf8\xed <jan@acme.cz>\r\n"
                                       b"To: alice@firma.cz\r\nDate: Mon, 02 Nov 2026 "
                                       b"10:00:00 +0000\r\n"),
    "no-final-crlf": mail("no-final-crlf", b"the last line has no line end"),
    "no-body": mail("no-body", b"")[:-2],
    "long-lines": mail("long-lines", b"L" * 999 + b"\r\n" + b"M" * 5000 + b"\r\n." +
                       b"N" * 100_000 + b"\r\n"),
    "long-header": mail("long-header", b"body\r\n", subject=b"S" * 20_000),
    "crlf-dot-crlf-variants": mail("crlf-dot-crlf-variants",
                                   b"x\n.\r\ny\r\n.\ny\r.\r\nz\r\n..\r\n"),
    "mbox-from-line": b"From jan@acme.cz Mon Nov  2 10:00:00 2026\r\n" + mail(
        "mbox-from-line", b"From the start\r\n>From quoted\r\n"),
    "only-line-ends": mail("only-line-ends", b"\r\n" * 200),
    "long-addresses": mail("long-addresses", b"body\r\n",
                           head=b"From: " + b"j" * 400 + b"@acme.cz\r\nTo: " + b"a" * 400 +
                                b"@firma.cz\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\n"),
    "control-characters": mail("control-characters", bytes(range(1, 32)).replace(
        b"\r", b"").replace(b"\n", b"") + b"\r\n\x1b[31mred\x1b[0m\r\n"),
    "invalid-mime": mail("invalid-mime", b"--b\r\nContent-Type: text/plain; charset=x-none\r\n"
                         b"Content-Transfer-Encoding: base64\r\n\r\n!!!\r\n",
                         extra=b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
                               b"boundary=\"b\r\n"),
}


def expected(raw: bytes) -> bytes:
    """What is stored: the bytes sent, plus the CRLF that DATA's end needs when they lack it."""
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


def wire(raw: bytes) -> bytes:
    """DATA payload: dot-stuff every line that starts with "." (lines end with CRLF only,
    as the server reads them), end with CRLF "." CRLF."""
    lines = raw.split(b"\r\n")
    payload = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)
    if not payload.endswith(b"\r\n"):
        payload += b"\r\n"
    return payload + b".\r\n"


def send(port: int, raw: bytes, *, lmtp: bool, mail_from: bytes = b"mta@firma.cz",
         smtputf8: bool = False) -> tuple[int, str]:
    client = MailClient(port)
    client.hello(lmtp)
    option = b" SMTPUTF8" if smtputf8 else b""
    assert client.cmd(b"MAIL FROM:<" + mail_from + b">" + option)[0] == 250
    assert client.cmd("RCPT TO:<crm@firma.cz>")[0] == 250
    assert client.cmd("DATA")[0] == 354
    client.sock.sendall(wire(raw))
    reply = client.reply()
    client.close()
    return reply


def stored(engine, message_id: str):
    with engine.connect() as conn:
        return conn.execute(
            select(t.messages.c.status, t.messages.c.error, t.messages.c.mail_from,
                   t.messages.c.subject, t.raw_messages.c.content)
            .join(t.raw_messages, t.raw_messages.c.message_id == t.messages.c.id)
            .where(t.messages.c.message_id == message_id)).all()


@pytest.mark.parametrize("protocol", ["lmtp", "smtp"])
def test_corpus_is_stored_byte_for_byte(engine, start_server, protocol, figures):
    server = start_server()
    port = server.port_for(protocol)
    refused = {}
    for name, raw in CORPUS.items():
        code, text = send(port, raw, lmtp=protocol == "lmtp")
        if code != 250:
            refused[name] = (code, text)
    assert refused == {}
    mismatched, unprocessed = [], []
    for name, raw in CORPUS.items():
        rows = stored(engine, f"<{name}@corpus>")
        if len(rows) != 1 or bytes(rows[0].content) != expected(raw):
            mismatched.append(name)
        elif rows[0].status != "processed":
            unprocessed.append((name, rows[0].error))
    figures(protocol=protocol, inputs=len(CORPUS), mismatched=len(mismatched),
            unprocessed=len(unprocessed))
    assert mismatched == []
    assert unprocessed == []


def test_smtputf8_and_8bit_envelope_addresses(engine, start_server):
    server = start_server()
    raw = mail("utf8-envelope", "Dobrý den\r\n".encode(),
               head="From: Jiří <jiří@příklad.cz>\r\nTo: alice@firma.cz\r\n".encode())
    assert send(server.lmtp_port, raw, lmtp=True, mail_from="jiří@příklad.cz".encode(),
                smtputf8=True)[0] == 250
    # a sender that is not UTF-8 at all (Latin-1 from an old MTA): stored, not deferred forever
    raw2 = mail("latin1-envelope", b"body\r\n")
    assert send(server.lmtp_port, raw2, lmtp=True, mail_from=b"ji\xf8\xed@p\xf8iklad.cz")[0] \
        == 250
    [row] = stored(engine, "<utf8-envelope@corpus>")
    assert bytes(row.content) == raw and row.mail_from == "jiří@příklad.cz"
    # an envelope sender longer than the column (the MAIL command allows ~500 octets)
    raw3 = mail("long-envelope", b"body\r\n")
    assert send(server.lmtp_port, raw3, lmtp=True, mail_from=b"m" * 440 + b"@firma.cz")[0] == 250
    [row2] = stored(engine, "<latin1-envelope@corpus>")
    assert bytes(row2.content) == raw2 and row2.status == "processed"
    assert row2.mail_from.startswith("ji") and row2.mail_from.endswith("iklad.cz")
    [row3] = stored(engine, "<long-envelope@corpus>")
    assert bytes(row3.content) == raw3 and row3.mail_from.startswith("mmmm")
