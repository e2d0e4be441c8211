"""What the MIME parser need not read: the base64 bodies of attachments no rule looks at.

Python's MIME parser walks a message line by line; for an ordinary mail with a PDF attached
that is ~1,300 lines of base64 per 100 KB - most of the parse - and, for a 40 MB attachment,
hundreds of megabytes of line objects. The rules read headers, text parts, calendars, delivery
reports and attached messages, never the bytes of a PDF or a picture. :func:`without_opaque_bodies`
hands the parser the message with such bodies left out (the stored raw bytes are never touched):

- only a part whose own headers say ``Content-Transfer-Encoding: base64`` and whose type is not
  ``text/*``, ``message/*``, ``multipart/*``, a calendar (``application/ics``) or
  ``application/octet-stream`` (an attached ``.eml`` often is), and whose headers hold no
  encoded word (a file name could hide ``.eml``);
- only when the body is larger than ``MIN_BODY`` and consists of base64 lines to the end
  (the run stops at the first line that is not base64, i.e. the next boundary);
- never in a message that carries another message (``message/*`` anywhere, or a ``.eml``):
  journal reports, wrappers, PEC and bounces are parsed whole, because an attached message is
  unwrapped from the parse and must keep its bytes.

Every search runs in C over the bytes (``re``, ``bytes.find``) in one linear pass.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MIN_BODY = 8 * 1024
MAX_PART_HEADER = 8 * 1024
_CHUNK = 1 << 20


def _nocase(word: str) -> bytes:
    """A regex for ``word`` in any case, spelt out in classes: a pattern with IGNORECASE or
    a leading ``^`` makes re try every position; one that starts with a literal byte lets it
    skip ahead in C (about ten times faster over a 100 KB message)."""
    out = b""
    for ch in word.encode():
        c = bytes([ch])
        out += (b"[" + c.lower() + c.upper() + b"]") if c.isalpha() else re.escape(c)
    return out


_BASE64_CTE = re.compile(b"\n" + _nocase("content-transfer-encoding:") + rb"[ \t]*"
                         + _nocase("base64") + rb"[ \t]*\r?\n")
# Two searches: an alternation would lose the literal first byte that makes each one fast.
_MESSAGE_TYPE = re.compile(b"\n" + _nocase("content-type:") + rb"[ \t]*" + _nocase("message/"))
_EML_NAME = re.compile(_nocase(".eml") + rb"\b")
_CONTENT_TYPE = re.compile(b"\n" + _nocase("content-type:")
                           + rb"[ \t]*([a-zA-Z0-9!#$&.+^_-]+/[a-zA-Z0-9!#$&.+^_-]+)")
_KEEP_TYPES = (b"text/", b"message/", b"multipart/", b"application/ics",
               b"application/octet-stream")   # an attached .eml is often octet-stream
_BASE64_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n"


def without_opaque_bodies(raw: bytes) -> bytes:
    """``raw`` with the opaque attachment bodies described above left out (``raw`` itself,
    not a copy, when there is none)."""
    cuts = opaque_extents(raw)
    if not cuts:
        return raw
    pieces, pos = [], 0
    for start, end in cuts:
        pieces.append(raw[pos:start])
        pos = end
    pieces.append(raw[pos:])
    return b"".join(pieces)


def opaque_extents(raw: bytes) -> list[tuple[int, int]]:
    """The ``(start, end)`` byte ranges of ``raw`` that :func:`without_opaque_bodies` leaves
    out, in order (the one-pass listing, :mod:`sink.mail.onepass`, decodes them from here).

    Each search reads the bytes around the bodies once, never a body already cut (issue 16:
    four whole-message searches cost ~0.2 ms per 100 KB message). That leaves the answer as it
    was, because a cut body holds base64 characters and line ends only, runs from just after
    a blank line to a line end just before a ``--``, and every pattern here needs a ``:``, a
    ``-`` or a ``.`` (none is a base64 character) with no line end between them and the
    body: no match can lie in a cut body or reach into one."""
    return opaque_scan(raw).cuts


class Scan(NamedTuple):
    cuts: list[tuple[int, int]]     # what opaque_extents answers
    heads: list[int]                # where each cut body's part headers were read from
    every_one: bool                 # every base64 part the search met became a cut


def opaque_scan(raw: bytes) -> Scan:
    """:func:`opaque_extents` with what the one-pass listing needs to know besides."""
    if len(raw) < MIN_BODY:
        return Scan([], [], False)
    cuts: list[tuple[int, int]] = []
    heads: list[int] = []
    met = pos = 0
    while (match := _BASE64_CTE.search(raw, pos)) is not None:
        pos = match.end()
        met += 1
        body = _body_start(raw, match.end() - 1)
        if body is None:
            continue
        after = cuts[-1][1] if cuts else 0     # never look back before the last cut
        head_start = max(_header_start(raw, match.start()), after)
        boundary = raw.rfind(b"\n--", head_start, match.start())
        if boundary >= 0:                      # the part's headers follow its boundary line
            head_start = boundary
        if body - head_start > MAX_PART_HEADER or not _opaque(raw[head_start:body]):
            continue
        end = _body_end(raw, body)
        if end is None or end - body < MIN_BODY or not _only_base64(raw, body, end):
            continue
        cuts.append((body, end))
        heads.append(head_start)
        pos = max(pos, end)                    # the next search starts after the cut body
    if cuts and _carries_a_message(raw, cuts):
        return Scan([], [], False)
    return Scan(cuts, heads, bool(cuts) and met == len(cuts))


def _body_end(raw: bytes, body: int) -> int | None:
    """Where a base64 body starting at ``body`` ends: just after the line end of the first
    ``\\n--`` from there (the end of ``raw`` when there is none); None when a ``-`` comes
    earlier, i.e. the body is not base64 to its end. The search is for one byte, ``-``
    (memchr: ~1 us per 100 KB, against ~70 for the three bytes ``\\n--``), which a base64
    body never holds."""
    dash = raw.find(b"-", body)
    if dash < 0:
        return len(raw)
    if dash > body and raw[dash - 1] == 0x0A and raw[dash + 1:dash + 2] == b"-":
        return dash
    return None


def _carries_a_message(raw: bytes, cuts: list[tuple[int, int]]) -> bool:
    """Whether ``raw`` names a ``message/*`` part or a ``.eml`` anywhere: searched between
    the cut bodies only (see :func:`opaque_extents`)."""
    start = 0
    for body, end in cuts + [(len(raw), len(raw))]:
        if _MESSAGE_TYPE.search(raw, start, body) or _EML_NAME.search(raw, start, body):
            return True
        start = end
    return False


def _only_base64(raw: bytes, start: int, end: int) -> bool:
    """Whether ``raw[start:end]`` holds base64 characters and line ends only."""
    for pos in range(start, end, _CHUNK):
        if raw[pos:min(pos + _CHUNK, end)].translate(None, _BASE64_BYTES):
            return False
    return True


def _body_start(raw: bytes, pos: int) -> int | None:
    """Offset after the blank line that ends the header block ``pos`` (a line end) is in.
    The bare-LF search stops where the CRLF one found its blank line: in CRLF mail there is
    no ``\\n\\n`` at all, and an unbounded search read the whole rest of the message
    (~95 us per 100 KB, per part) to say so."""
    crlf = raw.find(b"\n\r\n", pos)
    lf = raw.find(b"\n\n", pos, crlf + 1) if crlf >= 0 else raw.find(b"\n\n", pos)
    if lf >= 0:                                # it starts before the CRLF blank line
        return lf + 2
    return crlf + 3 if crlf >= 0 else None


def _header_start(raw: bytes, pos: int) -> int:
    """Offset of the line end before the header block holding ``pos`` (after the previous
    blank line). Bounded like :func:`_body_start`: only a bare-LF blank line after the
    last CRLF one can be nearer."""
    crlf = raw.rfind(b"\n\r\n", 0, pos)
    lf = raw.rfind(b"\n\n", crlf + 1 if crlf >= 0 else 0, pos)
    return max(crlf + 2 if crlf >= 0 else 0, lf + 1 if lf >= 0 else 0)


def _opaque(header: bytes) -> bool:
    if b"=?" in header:                       # an encoded file name could hide a ".eml"
        return False
    kind = _CONTENT_TYPE.search(b"\n" + header if not header.startswith(b"\n") else header)
    if kind is None:                          # no Content-Type: text/plain by default
        return False
    return not kind.group(1).lower().startswith(_KEEP_TYPES)
