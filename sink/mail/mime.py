"""The stdlib MIME tree of a message, built without the line-by-line feed where that is exact.

Python's feed parser reads a message a line at a time in Python. For a message that is one
part (not ``multipart/*`` or ``message/*``: most mail), what it builds is the header block's
parse with the rest of the text, unchanged, as the payload. :func:`message_from_bytes` builds
just that: the header block gets the same parse (``headersonly``; :mod:`sink.mail.headerblock`
builds its exact result without the feed parser's line loop), the body is set as the payload in
one piece. Whenever the split could differ from the feed parser's - a bare CR
in the header block, no blank line, a line the parser does not read as a header, a
``message/*`` type, a multipart body the multipart path declines - the whole message goes
through the feed parser instead.
At 4 KB this halves the parse (86 -> 45 us); the header block without the feed parser takes
it to ~33 us.

A ``multipart/*`` message gets the same header block parse, and its body goes to
:mod:`sink.mail.multipart`, which splits it at the boundary lines as the feed parser would
(parts, ``message/*`` parts, preamble, epilogue, defects) and answers False for any shape where
the two could differ; then the feed parser parses the whole message. At 100 KB this cuts the
parse of the one-pass form (attachment bodies as token lines) from ~620 to ~220 us.
``tests/test_parse_differential.py`` compares the trees of both paths with the feed parser's.
"""

from __future__ import annotations

import email
import email.parser
from email.message import Message
from email.policy import Compat32

from sink.mail import headerblock, multipart

_STRUCTURED = ("multipart", "message")     # the feed parser parses these bodies further


def message_from_bytes(data: bytes, policy: Compat32) -> Message:
    """``email.message_from_bytes(data, policy=policy)``, the same tree, often cheaper."""
    split = _header_end(data)
    if split is not None:
        # (BytesParser.parsebytes decodes so, then parses the text headersonly)
        msg = headerblock.parse_headers(data[:split].decode("ascii", "surrogateescape"), policy)
        if msg.get_payload() == "":
            body = data[split:].decode("ascii", "surrogateescape")   # as the feed parser reads
            maintype = msg.get_content_maintype()
            if maintype not in _STRUCTURED:
                msg.set_payload(body)
                return msg
            if maintype == "multipart" and multipart.parse_body(msg, body, policy):
                return msg
    return email.message_from_bytes(data, policy=policy)


def headers_of(data: bytes, policy: Compat32) -> Message:
    """The headers of ``email.parser.BytesHeaderParser(policy=policy).parsebytes(data)``
    (its payload is left out): the header block alone is parsed, where the feed parser
    would split the whole of ``data`` into lines first (~0.5 ms for a 100 KB attached
    message whose subject the attachment listing reads)."""
    split = _header_end(data)
    if split is None:
        return email.parser.BytesHeaderParser(policy=policy).parsebytes(data)
    return headerblock.parse_headers(data[:split].decode("ascii", "surrogateescape"), policy)


def _header_end(data: bytes) -> int | None:
    """Offset just after the first blank line of ``data`` when the feed parser's lines there
    are plain (no bare CR: it ends a line for the parser), else None."""
    crlf = data.find(b"\n\r\n")
    # an "\n\n" can only come first if it starts before the CRLF blank line: in CRLF mail
    # there is none, and the unbounded search read the whole message to say so
    lf = data.find(b"\n\n", 0, crlf + 1) if crlf >= 0 else data.find(b"\n\n")
    ends = [at + n for at, n in ((crlf, 3), (lf, 2)) if at >= 0]
    if not ends:
        return None
    end = min(ends)
    head = data[:end]
    if head.count(b"\r") != head.count(b"\r\n"):
        return None
    return end
