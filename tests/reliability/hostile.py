"""Pathological messages, shared by the hostile-MIME tests: the known ways to make a MIME parser
slow, deep or confused. Each is a complete message from jan@acme.cz to alice@firma.cz with a
unique Message-ID, so the whole pipeline runs on it."""

from __future__ import annotations

import base64
import random


def _head(name: str, extra: bytes = b"", *, to: bytes = b"alice@firma.cz",
          subject: bytes | None = None) -> bytes:
    subject = subject if subject is not None else f"hostile {name}".encode()
    return (b"From: Jan <jan@acme.cz>\r\nTo: " + to + b"\r\nSubject: " + subject +
            b"\r\nDate: Mon, 02 Nov 2026 10:00:00 +0000\r\nMessage-ID: <hostile-" +
            name.encode() + b"@test>\r\nMIME-Version: 1.0\r\n" + extra)


def many_parts(count: int) -> bytes:
    body = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i
                    for i in range(count))
    return (_head(f"parts-{count}", b"Content-Type: multipart/mixed; boundary=b\r\n\r\n") +
            body + b"--b--\r\n")


def deep_nesting(depth: int) -> bytes:
    opening = b"".join(b"Content-Type: multipart/mixed; boundary=n%d\r\n\r\n--n%d\r\n" % (i, i)
                       for i in range(depth))
    closing = b"".join(b"\r\n--n%d--\r\n" % i for i in reversed(range(depth)))
    return _head(f"nesting-{depth}") + opening + b"Content-Type: text/plain\r\n\r\nleaf" + closing


def semicolons(count: int) -> bytes:
    return _head(f"semicolons-{count}", b"Content-Type: text/plain; " + b";" * count +
                 b" charset=utf-8\r\nContent-Disposition: inline; " + b";" * count +
                 b"\r\n\r\n") + b"body\r\n"


def many_addresses(count: int) -> bytes:
    to = b",\r\n ".join(b'"User, %d" <u%d@example.com>' % (i, i) for i in range(count))
    return _head(f"addresses-{count}", b"Cc: " + to + b"\r\n\r\n", to=to) + b"body\r\n"


def many_headers(count: int) -> bytes:
    return _head(f"headers-{count}", b"".join(b"X-H%d: v\r\n" % i for i in range(count)) +
                 b"\r\n") + b"body\r\n"


def short_lines(count: int) -> bytes:
    return _head(f"short-lines-{count}", b"Content-Type: text/plain\r\n\r\n") + b"a\r\n" * count


def broken_encodings() -> bytes:
    return _head("broken-encodings", b"Content-Type: multipart/alternative; boundary=x\r\n\r\n",
                 subject=b"=?utf-8?b?!!!?= =?x-unknown?q?abc?= =?utf-8?q?=FF=FE?= "
                         b"=?iso-2022-jp?b?GyRCJEgbKEI?= =?utf-16?b?2D3eAA==?=") + (
        b"--x\r\nContent-Type: text/plain; charset=x-nonsense\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not base64===\r\n"
        b"--x\r\nContent-Type: text/html; charset=utf-7\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=0=\r\n+AGEAYgBj-\r\n"
        b"--x\r\nContent-Type: text/plain; charset=\"\r\nContent-Transfer-Encoding: x-uue\r\n\r\n"
        b"begin 644 x\r\n#86)C\r\n`\r\nend\r\n--x\r\nContent-Type: text/calendar\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" +
        base64.encodebytes(b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:\xff\r\n"
                           ).replace(b"\n", b"\r\n") + b"--x--\r\n")


def huge_html(size: int) -> bytes:
    html = b"<html><body>" + b"<div><b>x</b>" * (size // 13) + b"</body></html>"
    return _head("huge-html", b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64"
                              b"\r\n\r\n") + base64.encodebytes(html).replace(b"\n", b"\r\n")


def big_attachment(size: int) -> bytes:
    data = base64.encodebytes(random.Random(1).randbytes(size)).replace(b"\n", b"\r\n")
    return _head("big-attachment", b"Content-Type: multipart/mixed; boundary=b\r\n\r\n") + (
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
        data + b"--b--\r\n")


def wrapper_bomb(count: int) -> bytes:
    """A '> ' wrapper carrying many attached messages, each itself multipart."""
    inner = (b"From: x@acme.cz\r\nTo: alice@firma.cz\r\nSubject: in\r\n"
             b"Content-Type: multipart/mixed; boundary=i\r\n\r\n" +
             b"--i\r\n\r\nx\r\n" * 50 + b"--i--\r\n")
    parts = b"".join(b"--w\r\nContent-Type: message/rfc822\r\n\r\n" + inner for _ in range(count))
    return _head("wrapper-bomb", b"Content-Type: multipart/mixed; boundary=w\r\n\r\n",
                 subject=b"> forwarded") + parts + b"--w--\r\n"


PATHOLOGICAL = {
    "semicolons-16000": lambda: semicolons(16_000),
    "addresses-32000": lambda: many_addresses(32_000),
    "parts-100000": lambda: many_parts(100_000),
    "nesting-1000": lambda: deep_nesting(1_000),
    "broken-encodings": broken_encodings,
    "headers-200000": lambda: many_headers(200_000),
    "short-lines-5000000": lambda: short_lines(5_000_000),
    "huge-html-2MB": lambda: huge_html(2_000_000),
    "big-attachment-20MB": lambda: big_attachment(15_000_000),
    "wrapper-bomb-200": lambda: wrapper_bomb(200),
}
