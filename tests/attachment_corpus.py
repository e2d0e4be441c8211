"""Messages that carry things (issue 17): names in Czech and Japanese (RFC 2231 and 2047), inline
images, nested messages, TNEF (real samples from tnefparse's test collection, tests/data/tnef),
every transfer encoding, broken base64, hostile names. Each builder returns raw bytes (CRLF)."""

from __future__ import annotations

import base64
import hashlib
import os
import random
from email.header import Header
from email.message import EmailMessage, Message
from pathlib import Path

from tests.support import make_mail

DATA = Path(__file__).parent / "data"
CRLF = EmailMessage().policy.clone(linesep="\r\n")


def tnef_sample(name: str) -> bytes:
    return (DATA / "tnef" / f"{name}.tnef").read_bytes()


def pseudo_random(size: int, seed: int) -> bytes:
    """Incompressible bytes, the same for a seed (a PDF's content to the parser)."""
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def _head(subject: str, ctype: str, boundary: str = "b1") -> bytes:
    return (f"From: jan@acme.cz\r\nTo: alice@firma.cz\r\nSubject: {subject}\r\n"
            f"Message-ID: <{os.urandom(8).hex()}@test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: {ctype}; boundary=\"{boundary}\"\r\n\r\n").encode()


def _b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _multipart(subject: str, parts: list[bytes], ctype: str = "multipart/mixed") -> bytes:
    body = b"".join(b"--b1\r\n" + p + b"\r\n" for p in parts)
    return _head(subject, ctype) + b"preamble\r\n" + body + b"--b1--\r\n"


def _text_part(text: str = "Dobrý den,\r\nv příloze.") -> bytes:
    return (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + text.encode())


def czech_names() -> bytes:
    """RFC 2231 names: UTF-8 written by the email package, ISO-8859-2 with a continuation."""
    msg = EmailMessage(policy=CRLF)
    msg["From"], msg["To"], msg["Subject"] = "jan@acme.cz", "alice@firma.cz", "Nabídka"
    msg.set_content("Dobrý den,\nposílám nabídku.")
    msg.add_attachment(pseudo_random(75123, 1), maintype="application", subtype="pdf",
                       filename="Nabídka služeb – žluťoučký kůň.pdf")
    raw = msg.as_bytes()
    latin2 = (b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
              b"Content-Disposition: attachment;\r\n filename*0*=iso-8859-2''P%F8%EDloha%20%E8.;"
              b"\r\n filename*1=\"2.xlsx\"\r\n\r\n" + _b64(pseudo_random(3000, 2)))
    boundary = raw.split(b'boundary="', 1)[1].split(b'"', 1)[0]
    return raw.replace(b"--" + boundary + b"--", b"--" + boundary + b"\r\n" + latin2 + b"\r\n--"
                       + boundary + b"--")


def japanese_names() -> bytes:
    """RFC 2047 words in a quoted file name (ISO-2022-JP and UTF-8), and RFC 2231 in UTF-8."""
    jis = Header("見積書.pdf", "iso-2022-jp").encode()
    utf = Header("請求書 2026年11月.xlsx", "utf-8").encode()
    parts = [_text_part("お世話になっております。"),
             (f"Content-Type: application/pdf; name=\"{jis}\"\r\nContent-Transfer-Encoding: "
              f"base64\r\nContent-Disposition: attachment; filename=\"{jis}\"\r\n\r\n").encode()
             + _b64(pseudo_random(9000, 3)),
             (f"Content-Type: application/vnd.ms-excel\r\nContent-Transfer-Encoding: base64\r\n"
              f"Content-Disposition: attachment; filename=\"{utf}\"\r\n\r\n").encode()
             + _b64(pseudo_random(500, 4)),
             b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"
             b"Content-Disposition: attachment;\r\n filename*=utf-8''%E8%AD%B0%E4%BA%8B%E9%8C%B2"
             b".txt\r\n\r\n" + _b64("議事録: 十一月".encode())]
    return _multipart("=?UTF-8?B?" + base64.b64encode("見積".encode()).decode() + "?=", parts)


def inline_images() -> bytes:
    """multipart/related: HTML that shows two images by Content-ID, plus one real attachment."""
    html = ('<p>Logo: <img src="cid:logo@firma.cz"> and <img src="cid:chart@firma.cz"></p>')
    related = (b"Content-Type: multipart/related; boundary=\"r1\"\r\n\r\n--r1\r\n"
               b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html.encode() + b"\r\n--r1\r\n"
               b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
               b"Content-ID: <logo@firma.cz>\r\nContent-Disposition: inline; filename=logo.png"
               b"\r\n\r\n" + _b64(pseudo_random(6000, 5)) + b"\r\n--r1\r\n"
               b"Content-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n"
               b"Content-ID: <chart@firma.cz>\r\n\r\n" + _b64(pseudo_random(700, 6))
               + b"\r\n--r1--\r\n")
    alternative = (b"Content-Type: multipart/alternative; boundary=\"a1\"\r\n\r\n--a1\r\n"
                   + _text_part("Logo and chart.") + b"\r\n--a1\r\n" + related + b"\r\n--a1--")
    offer = (b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
             b"Content-Disposition: attachment; filename=\"offer.pdf\"\r\n\r\n"
             + _b64(pseudo_random(20000, 7)))
    return _multipart("Inline", [alternative, offer])


def nested_message() -> bytes:
    """A forward: the original (with its own attachment) as message/rfc822."""
    inner = make_mail(sender="eva@globex.com", subject="Původní zpráva s přílohou",
                      attachments=[("application", "pdf", pseudo_random(5000, 8), "inner.pdf")])
    msg = EmailMessage(policy=CRLF)
    msg["From"], msg["To"], msg["Subject"] = "jan@acme.cz", "alice@firma.cz", "Fwd: původní"
    msg.set_content("Přeposílám.")
    msg.add_attachment(inner, maintype="message", subtype="rfc822")  # bytes: the .eml as is
    return msg.as_bytes()


def nested_rfc822() -> bytes:
    """message/rfc822 as a part (not an .eml file): listed with its subject."""
    inner = make_mail(sender="eva@globex.com", subject="Re: schůzka")
    return _multipart("Fwd: schůzka", [
        _text_part("See below."),
        b"Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n" + inner])


def with_tnef(sample: str, text: bool = True) -> bytes:
    """Outlook through an Exchange connector: winmail.dat (with or without a plain part)."""
    tnef = (b"Content-Type: application/ms-tnef; name=\"winmail.dat\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"winmail.dat\"\r\n\r\n"
            + _b64(tnef_sample(sample)))
    parts = ([_text_part("See the attachments.")] if text else []) + [tnef]
    return _multipart(f"TNEF {sample}", parts)


def broken_tnef() -> bytes:
    bad = tnef_sample("two-files")[:700]            # cut inside an attachment's data
    wrong = b"\x00\x01\x02\x03" + tnef_sample("two-files")[4:]   # not a TNEF signature
    parts = [_text_part("Two broken winmail.dat.")]
    for name, data in (("winmail.dat", bad), ("WINMAIL.DAT", wrong)):
        parts.append((f"Content-Type: application/ms-tnef\r\nContent-Transfer-Encoding: base64"
                      f"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\r\n"
                      ).encode() + _b64(data))
    return _multipart("Broken TNEF", parts)


def encodings() -> bytes:
    """Every transfer encoding, and base64 that is broken in the ways mail clients break it."""
    b64 = _b64(pseudo_random(12000, 9))
    unpadded = b64.rstrip(b"=\r\n")[:-1] + b"\r\n"      # length 4n+3, no padding
    garbage = _b64(pseudo_random(6000, 10)).replace(b"\r\nAB", b"\r\nA!B", 3) + b"%%%\r\n"
    parts = [_text_part(),
             b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
             b"Content-Disposition: attachment; filename=a.pdf\r\n\r\n" + b64,
             b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
             b"Content-Disposition: attachment; filename=unpadded.pdf\r\n\r\n" + unpadded,
             b"Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n"
             b"Content-Disposition: attachment; filename=garbage.zip\r\n\r\n" + garbage,
             b"Content-Type: text/csv; charset=utf-8\r\nContent-Transfer-Encoding: "
             b"quoted-printable\r\nContent-Disposition: attachment; filename=data.csv\r\n\r\n"
             b"n=C3=A1zev;cena=0D\r\nk=C5=AFn;10=\r\n0\r\n",
             b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: x-uuencode"
             b"\r\nContent-Disposition: attachment; filename=old.bin\r\n\r\nbegin 644 old.bin\r\n"
             b"#86)C\r\n`\r\nend\r\n",
             b"Content-Type: text/plain; charset=iso-8859-2\r\nContent-Transfer-Encoding: 8bit"
             b"\r\nContent-Disposition: attachment; filename=\"pozn\xe1mka.txt\"\r\n\r\n"
             b"\xbe\xb9\xe8 8-bit",
             b"Content-Type: text/calendar; method=REQUEST; charset=utf-8\r\n\r\n"
             b"BEGIN:VCALENDAR\r\nEND:VCALENDAR",
             b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: BASE64\r\n"
             b"Content-Disposition: attachment; filename=upper.pdf\r\n\r\n"
             + _b64(pseudo_random(5000, 11))]
    return _multipart("Encodings", parts)


def single_part() -> bytes:
    """The whole message is the attachment: part 1."""
    return (b"From: scanner@firma.cz\r\nTo: alice@firma.cz\r\nSubject: Scan\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: application/pdf; name=scan.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + _b64(pseudo_random(30000, 12)))


def hostile_names() -> bytes:
    parts = [_text_part("names")]
    for name in ("../../etc/passwd", "x" * 5000 + ".pdf", "C:\\Windows\\system.ini",
                 "evil\r\n\x1b[31mred\x07.txt", "/absolute.txt", "\u202etxt.exe"):
        header = Header(name, "utf-8").encode(maxlinelen=76, linesep="\r\n ")
        parts.append(f"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: "
                     f"base64\r\nContent-Disposition: attachment; filename=\"{header}\"\r\n\r\n"
                     .encode() + _b64(name.encode()))
    return _multipart("Names", parts)


def random_structure(seed: int) -> bytes:
    """A random tree of parts (for the differential test): multipart nesting, encodings."""
    rng = random.Random(seed)

    def leaf(i: int) -> Message:
        part = EmailMessage(policy=CRLF)
        data = pseudo_random(rng.choice((0, 1, 100, 4095, 4096, 9000, 30000)), seed * 100 + i)
        kind = rng.choice(("base64", "text", "qp"))
        if kind == "base64":
            part.set_content(data, maintype="application", subtype="octet-stream",
                             filename=f"f{i}.bin", disposition=rng.choice(("attachment",
                                                                           "inline")))
        elif kind == "qp":
            part.set_content(data.hex()[:rng.randint(0, 3000)] + "\u010d", subtype="plain",
                             cte="quoted-printable", disposition="attachment",
                             filename=f"f{i}.txt")
        else:
            part.set_content("text é " * rng.randint(0, 800), subtype=rng.choice(("plain",
                                                                                  "html")))
        return part

    def node(depth: int, counter: list[int]) -> Message:
        if depth >= 3 or rng.random() < 0.5:
            counter[0] += 1
            return leaf(counter[0])
        container = EmailMessage(policy=CRLF)
        container.make_mixed()
        for _ in range(rng.randint(1, 4)):
            container.attach(node(depth + 1, counter))
        return container

    root = EmailMessage(policy=CRLF)
    root["From"], root["To"], root["Subject"] = "jan@acme.cz", "alice@firma.cz", f"R{seed}"
    root.make_mixed()
    for _ in range(rng.randint(1, 5)):
        root.attach(node(1, [seed * 1000]))
    return root.as_bytes()


CORPUS = {
    "czech": czech_names, "japanese": japanese_names, "inline": inline_images,
    "nested": nested_message, "rfc822": nested_rfc822, "tnef-umlaut": lambda: with_tnef("umlaut"),
    "tnef-two": lambda: with_tnef("two-files"), "tnef-body": lambda: with_tnef("body", False),
    "tnef-rtf": lambda: with_tnef("rtf", False), "tnef-broken": broken_tnef,
    "encodings": encodings, "single": single_part, "names": hostile_names,
    **{f"random-{seed}": (lambda s=seed: random_structure(s)) for seed in range(12)},
}
