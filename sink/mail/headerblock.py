"""A header block's message as the stdlib's ``headersonly`` parse builds it, without the feed
parser's line machinery (BufferedSubFile, the generator, a readline per line) where that is
exact.

This is not a header grammar: the name/value split of each header stays the policy's
(``header_source_parse``, given the header's lines with their endings, as the feed parser gives
them). What is done here is the feed parser's line cutting and grouping, for the common shape
only, each step following one of its rules (``email/feedparser.py``):

- lines end at LF or CRLF (BufferedSubFile). It also ends a line at a bare CR: a block with
  one is not taken here;
- a line is a header line when the stdlib's ``headerRE`` reads it so and ``_parse_headers``
  splits it at its first colon: one or more of ``[\\041-\\071\\073-\\176]`` then ``:``. Lines it
  reads otherwise - ``From`` + space (an envelope line, or one placed where it is a defect), a
  colon first (a defect), anything else (the body starts there, with a defect) - are not taken;
- a line starting with a space or tab continues the header before it (``_parse_headers``); one
  before any header is a defect there, and not taken here (the block must start with a name);
- the first blank line (LF or CRLF alone) ends the headers and is dropped; what follows it is the
  payload, so only a block that ends right there (or has no blank line) is taken: its payload
  is empty;
- a last line without an ending is a line (``BufferedSubFile.close``);
- NUL is not taken: the feed parser keeps it, but nothing here needs to decide that.

Anything not taken goes through ``email.parser.Parser(...).parsestr(block, headersonly=True)``,
so the answer is that parse's in every case. ``tests/test_headerblock.py`` compares the two.
"""

from __future__ import annotations

import email.parser
import re
from email.message import Message
from email.policy import Compat32

_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+:")    # headerRE's field name, then the colon
# a line ending followed by a line that is neither a header line nor a continuation
_ODD_LINE = re.compile(r"\n(?![\x21-\x39\x3b-\x7e]+:|[ \t])")


def parse_headers(block: str, policy: Compat32) -> Message:
    """``email.parser.Parser(policy=policy).parsestr(block, headersonly=True)``: the same
    message, cheaper for a block of well-formed header lines (and its blank line)."""
    msg = fast_headers(block, policy)
    if msg is None:
        msg = email.parser.Parser(policy=policy).parsestr(block, headersonly=True)
    return msg


def fast_headers(block: str, policy: Compat32) -> Message | None:
    """The message of ``block`` built here, or None where this does not take it (see the
    module docstring); then the stdlib parse answers."""
    # The blank line ending the headers (after a line ending, or as the first line) is
    # dropped; any text after it would be payload, and a blank line inside ``head`` is an odd
    # line below.
    if block.endswith("\n\n"):
        head = block[:-1]
    elif block.endswith("\n\r\n"):
        head = block[:-2]
    elif block in ("\n", "\r\n"):
        head = ""
    else:
        head = block
    msg = (policy.message_factory or Message)(policy=policy)   # FeedParser._new_message's
    if head:
        if ("\x00" in head or head.endswith("\r") or not _NAME.match(head)
                or _ODD_LINE.search(head, 0, len(head) - head.endswith("\n"))):
            return None
        lines = head.splitlines(True)
        # splitlines also ends a line at a bare CR (as the feed parser does: not taken here),
        # VT, FF, FS, GS, RS, NEL and U+2028/9 (which the feed parser does not): with any of
        # them there are more lines than LFs, a CR at the very end aside (refused above).
        if len(lines) != head.count("\n") + (not head.endswith("\n")):
            return None
        parse, set_raw = policy.header_source_parse, msg.set_raw
        if "\n " not in head and "\n\t" not in head:
            for line in lines:                  # no continuation lines: one line a header
                set_raw(*parse([line]))
        else:
            header = [lines[0]]
            for line in lines[1:]:
                if line[0] in " \t":           # a continuation line (_parse_headers)
                    header.append(line)
                else:
                    set_raw(*parse(header))
                    header = [line]
            set_raw(*parse(header))
    msg.set_payload("")                     # headersonly: what follows the blank line, none
    # FeedParser.close reads the content type, headersonly too (then ignores it): where the
    # policy's header_fetch_parse raises for it, so must this
    msg.get_content_maintype()
    return msg
