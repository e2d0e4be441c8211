"""The body of a ``multipart/*`` message split as the stdlib feed parser splits it, without its
line-by-line loop.

The feed parser reads a multipart body a line at a time in Python and matches each line against
the boundary's regular expression (compiled anew for each new boundary) and those of every
enclosing multipart. Only a line starting with ``--`` can match any of them, so here one regex
pass finds those lines, and the parts are the slices of text between them. What the feed parser
does with the slices is reproduced, not its code:

- a part ends at the first line that is a boundary line of its own multipart *or of any
  enclosing one* (RFC 2046); the line ending before that line belongs to the boundary (it is cut
  from the part's payload, or from a nested multipart's epilogue, which becomes None if empty);
- the preamble is the text before the first boundary line less its last line ending, None when
  there is no text; the epilogue is the text after the close boundary line up to the end of the
  enclosing part, unchanged;
- a part of ``multipart/digest`` defaults to ``message/rfc822``; a multipart with a
  Content-Transfer-Encoding other than 7bit/8bit/binary gets the defect the feed parser records;
- a ``message/*`` part holds the message that runs to the part's end (its last entity loses the
  line ending), a ``message/delivery-status`` part one header block per blank-line-ended run.

Each part's header block gets the stdlib's ``headersonly`` parse (:mod:`sink.mail.headerblock`:
the same message, the same header code the feed parser runs). :func:`parse_body` answers
False - the caller then runs the feed parser - wherever the result could differ: a bare CR
(it ends a line for the feed parser), no boundary parameter, no start or close boundary, a
boundary line right after a boundary line, a part whose header block has no blank line before
the next boundary or holds a line that is not a header (a delivery-status block too), an
enclosing multipart's boundary where the inner one has not closed, nesting deeper than
``_MAX_DEPTH``. ``tests/test_parse_differential.py`` compares
the trees with the feed parser's.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from email import errors
from email.message import Message
from email.policy import Compat32

from sink.mail import headerblock

_BARE_CR = re.compile(r"\r(?!\n)")     # (a regex finds one faster than two counts)
_BLANK = re.compile(r"\n\r?\n")           # a line ending, then a blank line
_SEP, _CLOSE = 1, 2
_PLAIN_CTE = ("7bit", "8bit", "binary")        # what RFC 2045 6.4 allows on a multipart
_MAX_DEPTH = 50     # nesting deeper is hostile: every dash line is matched against each level


class _Differs(Exception):
    """The feed parser's tree could differ from the one built here."""


def parse_body(msg: Message, body: str, policy: Compat32) -> bool:
    """Give ``msg`` (a multipart whose header block is parsed, payload still empty) the parts,
    preamble and epilogue the feed parser would give it from ``body`` (the text after the
    header block, as the feed parser decodes it); False, with ``msg`` to be discarded, where
    the result could differ."""
    if _BARE_CR.search(body):
        return False
    try:
        _Body(body, policy).multipart(msg, 0, [])
    except _Differs:
        return False
    return True


def _kind(line: str, sep: str) -> int:
    """What the feed parser's expression for ``sep`` (``--`` + boundary) reads ``line`` (a line
    without its ending) as: a separator, the close boundary, or neither (0). The expression is
    ``sep(--)?[ \\t]*(linesep)?$``."""
    if not line.startswith(sep):
        return 0
    rest = line[len(sep):]
    if rest.startswith("--") and not rest[2:].strip(" \t"):
        return _CLOSE
    return 0 if rest.strip(" \t") else _SEP


def _dash_starts(text: str) -> list[int]:
    """Where the lines opening ``--`` start: the only lines a boundary expression can match.
    (str.find skips through the text in C; a multiline ``^--`` regex tries every offset.)"""
    starts = [0] if text.startswith("--") else []
    at = text.find("\n--")
    while at >= 0:
        starts.append(at + 1)
        at = text.find("\n--", at + 1)
    return starts


def _chomp(text: str) -> str:
    """``text`` less one line ending at its end (the one a following boundary line owns)."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith(("\n", "\r")) else text


class _Body:
    def __init__(self, text: str, policy: Compat32):
        self.text, self.policy = text, policy
        # (start, line without its ending, start of the next line) of every line opening '--'
        self.starts = _dash_starts(text)
        self.lines = []
        for start in self.starts:
            end = text.find("\n", start)
            end, after = (len(text), len(text)) if end < 0 else (end, end + 1)
            self.lines.append((start, text[start:end].removesuffix("\r"), after))

    def _first(self, i: int, seps: list[str], stop: int | None = None) -> int:
        """Index of the first dash line from index ``i`` (to ``stop``) that is a boundary line
        of any of ``seps``, or ``stop`` (default ``len(self.lines)``)."""
        lines = self.lines
        stop = len(lines) if stop is None else stop
        for j in range(i, stop):
            line = lines[j][1]
            if any(_kind(line, sep) for sep in seps):
                return j
        return stop

    def _is(self, i: int, seps: list[str]) -> bool:
        """Whether dash line ``i`` is a boundary line of any of ``seps``."""
        return i < len(self.lines) and self._first(i, seps, i + 1) == i

    def _start(self, i: int) -> int:
        return self.lines[i][0] if i < len(self.lines) else len(self.text)

    def multipart(self, msg: Message, pos: int, outers: list[str]) -> int:
        """Parse the body of ``msg`` from ``pos`` (a line start) inside the multiparts whose
        separators are ``outers``; the index of the dash line that ends it (one of ``outers``'
        boundary lines), or ``len(self.lines)`` at the end of the text."""
        boundary = msg.get_boundary()
        if boundary is None or len(outers) >= _MAX_DEPTH:
            raise _Differs
        if str(msg.get("content-transfer-encoding", "8bit")).lower() not in _PLAIN_CTE:
            self.policy.handle_defect(msg, errors.InvalidMultipartContentTransferEncodingDefect())
        sep = "--" + boundary
        inner = outers + [sep]
        lines, text = self.lines, self.text
        i = self._first(bisect_left(self.starts, pos), inner)
        # no start boundary (or an enclosing one first), or a close boundary first
        if i == len(lines) or self._is(i, outers) or _kind(lines[i][1], sep) != _SEP:
            raise _Differs
        if lines[i][0] > pos:
            msg.preamble = _chomp(text[pos:lines[i][0]])
        digest = msg.get_content_type() == "multipart/digest"
        parts = []
        while True:
            after = lines[i][2]
            # the feed parser skips a boundary line that follows one, and at the end of the
            # text or an enclosing boundary it reads on from a pushed-back empty line
            if after == len(text) or (i + 1 < len(lines) and lines[i + 1][0] == after
                                      and self._is(i + 1, inner)):
                raise _Differs
            part, i = self._part(after, inner, digest)
            parts.append(part)
            if i == len(lines) or self._is(i, outers):
                raise _Differs                  # no close boundary: the defect's path
            if _kind(lines[i][1], sep) == _CLOSE:
                break
        msg.set_payload(parts)
        end = self._first(i + 1, outers)
        msg.epilogue = text[lines[i][2]:self._start(end)]
        return end

    def _part(self, pos: int, seps: list[str], digest: bool, depth: int = 0
              ) -> tuple[Message, int]:
        """The entity from ``pos`` (the line after a separator, or the start of a
        ``message/*`` part's body) inside the multiparts whose separators are ``seps``, with
        the line ending before its end cut as the feed parser cuts it; and the index of the
        dash line that ends it."""
        text = self.text
        blank = _blank_line(text, pos, len(text))
        if blank is None or depth >= _MAX_DEPTH:
            raise _Differs
        body = blank + (2 if text.startswith("\r\n", blank) else 1)
        i, j = bisect_left(self.starts, pos), bisect_left(self.starts, blank)
        if self._first(i, seps, j) < j:
            raise _Differs                  # a boundary line ends the header block
        part = self._headers(text[pos:body])
        if digest:
            part.set_default_type("message/rfc822")
        maintype = part.get_content_maintype()
        if maintype == "multipart":
            end = self.multipart(part, body, seps)
            part.epilogue = None if part.epilogue == "" else _chomp(part.epilogue)
            return part, end
        if part.get_content_type() == "message/delivery-status":
            end = self._first(j, seps)
            part.set_payload(self._status_blocks(body, self._start(end)))
            return part, end
        if maintype == "message":
            # the enclosed message runs to the same end; its last entity loses the line ending
            inner, end = self._part(body, seps, False, depth + 1)
            part.set_payload([inner])
            return part, end
        end = self._first(j, seps)          # no dash line between the blank line and body
        part.set_payload(_chomp(text[body:self._start(end)]))
        return part, end

    def _headers(self, block: str) -> Message:
        """The message of header block ``block`` as the stdlib parses it, when it is all
        header lines (and, if it has one, the blank line that ends it)."""
        part = headerblock.parse_headers(block, self.policy)
        if part.get_payload() != "":
            raise _Differs                  # a line that is not a header, a 'From ' line last
        return part

    def _status_blocks(self, pos: int, end: int) -> list[Message]:
        """The header blocks of a ``message/delivery-status`` body ``text[pos:end]`` as the
        feed parser makes them: each blank line ends one, and a line after it, blank or not,
        starts another (the first is there even when the body is empty). A block that is not
        all headers, or whose Content-Type would have the feed parser read on, is left to it."""
        text, blocks = self.text, []
        while True:
            blank = _blank_line(text, pos, end)
            block = self._headers(text[pos:end if blank is None else blank])
            if block.get_content_maintype() in ("multipart", "message"):
                raise _Differs
            blocks.append(block)
            if blank is None:
                return blocks
            pos = blank + (2 if text.startswith("\r\n", blank) else 1)
            if pos >= end:
                return blocks


def _blank_line(text: str, pos: int, end: int) -> int | None:
    """Where the first blank line from ``pos`` (a line start) before ``end`` starts."""
    if text.startswith(("\n", "\r\n"), pos) and pos < end:
        return pos
    found = _BLANK.search(text, pos, end)    # (two str.find would each run to a far end)
    return found.start() + 1 if found else None
