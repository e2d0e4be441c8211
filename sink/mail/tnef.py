"""Outlook's TNEF (``winmail.dat``, ``application/ms-tnef``): the files it carries and its body.

tnefparse does the decoding. It is handed only input it reads in bounded time: it walks the
TNEF objects and copies the rest of the data for each one (``data[offset:]``), so a hostile blob
of many tiny objects would cost time quadratic in its size. :func:`_object_count` walks the same
object chain first (a few struct reads per object) and refuses more than ``MAX_OBJECTS``.
Its loops over counts read from the data (MAPI properties, multi-values, recipient rows) run
as many times as a hostile count says, even past the end of the data (4 billion turns that
append empty properties); so the ``range`` those two modules loop with is a counted one that
gives each :func:`unpack` call a budget of ``MAX_TURNS`` turns in all, after which the blob is
unreadable. Whatever tnefparse cannot read makes :func:`unpack` answer None: the caller keeps the
blob as one attachment, never a failure of the message.
"""

from __future__ import annotations

import builtins
import logging
import struct
import threading
from dataclasses import dataclass

import compressed_rtf  # noqa: F401 - tnefparse decompresses RTF bodies with it; without it
#                        its rtfbody is silently the compressed bytes
import tnefparse
import tnefparse.mapi
import tnefparse.tnef

from sink.log import get_logger

log = get_logger("sink.mail.tnef")
# tnefparse logs a warning per property it skips: on hostile input, thousands of lines
logging.getLogger("tnefparse").setLevel(logging.ERROR)

SIGNATURE = 0x223E9F78
MAX_TURNS = 200_000
MAX_OBJECTS = 10_000
MAX_FILES = 1000
MAX_RTF = 2 * 1024 * 1024        # bytes of RTF converted to text (striprtf is regex based)
TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})


@dataclass(frozen=True)
class TnefFile:
    name: str
    data: bytes


@dataclass(frozen=True)
class TnefContent:
    files: tuple[TnefFile, ...]
    text: str                    # the body as text: plain, else HTML, else RTF; '' when none


def is_tnef(content_type: str, filename: str | None) -> bool:
    return content_type in TNEF_TYPES or (filename or "").strip().lower() == "winmail.dat"


def _object_count(data: bytes, limit: int) -> int | None:
    """How many objects tnefparse would visit (None: more than ``limit``). Each object is
    level(1) name(2) type(2) length(4) data checksum(2), as tnefparse reads it."""
    offset, count = 6, 0
    while offset + 12 < len(data):
        (length,) = struct.unpack_from("<I", data, offset + 5)
        offset += min(len(data) - offset, length + 11)
        count += 1
        if count > limit:
            return None
    return count


def _text(value) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace") if _utf8(value) else value.decode("cp1252",
                                                                                   "replace")
    return str(value or "").replace("\x00", "")


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _rtf_text(rtf) -> str:
    from striprtf.striprtf import rtf_to_text
    if isinstance(rtf, bytes):
        rtf = rtf[:MAX_RTF].decode("cp1252", "replace")
    text = rtf_to_text(rtf[:MAX_RTF], errors="ignore")
    if "\\fromhtml" in rtf[:2048]:
        # RTF that encapsulates HTML (Outlook's usual body): what is left is HTML markup
        from sink.mail.html import strip_tags
        text = strip_tags(text)
    return text


def body_text(tnef) -> str:
    """A parsed TNEF's body as text: the plain body, else the HTML one, else the RTF one."""
    from sink.mail.html import html_to_text
    if tnef.body:
        return _text(tnef.body)
    if tnef.htmlbody:
        return html_to_text(_text(tnef.htmlbody))
    rtf = tnef.rtfbody
    return _rtf_text(rtf) if rtf else ""


class _TooComplex(Exception):
    """A TNEF whose counts would take tnefparse longer than its budget."""


_budget = threading.local()


def _counted_range(*args):
    """``range`` for tnefparse's loops: each turn costs one from this thread's budget."""
    if getattr(_budget, "left", None) is None:
        yield from builtins.range(*args)
        return
    for value in builtins.range(*args):
        _budget.left -= 1
        if _budget.left < 0:
            raise _TooComplex()
        yield value


tnefparse.mapi.range = _counted_range      # module globals are looked up before builtins
tnefparse.tnef.range = _counted_range


def unpack(data: bytes) -> TnefContent | None:
    """The files and the body text of a TNEF blob; None when it cannot be read."""
    if len(data) < 6 or struct.unpack_from("<I", data)[0] != SIGNATURE:
        return None
    if _object_count(data, MAX_OBJECTS) is None:
        log.warning("tnef.refused", reason=f"more than {MAX_OBJECTS} objects", size=len(data))
        return None
    _budget.left = MAX_TURNS
    try:
        tnef = tnefparse.TNEF(data, do_checksum=False)
        files = tuple(TnefFile(_text(a.long_filename()).strip(), bytes(a.data or b""))
                      for a in tnef.attachments[:MAX_FILES])
        try:
            text = body_text(tnef)
        except Exception:               # an unreadable body still leaves the files
            text = ""
    except Exception as exc:             # tnefparse raises anything on broken input
        log.info("tnef.unreadable", error=type(exc).__name__, size=len(data))
        return None
    finally:
        _budget.left = None
    return TnefContent(files, text)
