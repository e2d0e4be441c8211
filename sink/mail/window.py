"""How much of a message the MIME parser reads (:func:`parse_window`).

Python's email package costs per line and recurses per multipart container: the parser reads at
most ``MAX_PARSE_LINES`` lines (``MAX_HEADER_LINES`` of them in the header block),
``MAX_BOUNDARIES`` boundary-like lines and ``MAX_MULTIPARTS`` multipart containers. The rest of
the bytes is stored but not read by the rules, and the message's defects say so. Every count
runs in C over the bytes."""

from __future__ import annotations

import re

MAX_PARTS = 1000
MAX_PARSE_LINES = 500_000         # the email package's cost is per line: ~0.3 s for these
MAX_HEADER_LINES = 100_000
MAX_BOUNDARIES = 2 * MAX_PARTS    # lines starting with "--"
MAX_MULTIPARTS = 100              # multipart containers: bounds nesting (recursion) and count

_MULTIPART = re.compile(rb"multipart/", re.IGNORECASE)


def _after_lines(raw: bytes, count: int, start: int = 0, end: int | None = None) -> int | None:
    """Offset just after the ``count``-th line end in ``raw[start:end]``; None when it has
    fewer lines. Counts in C, chunk by chunk."""
    end = len(raw) if end is None else end
    if end - start < count:
        return None             # every line end is a byte: fewer bytes, fewer lines
    pos, chunk = start, 1 << 16
    while pos < end:
        stop = min(pos + chunk, end)
        found = raw.count(b"\n", pos, stop)
        if found >= count:
            for _ in range(count):
                pos = raw.index(b"\n", pos, stop) + 1
            return pos
        count -= found
        pos = stop
    return None


def _nth(raw: bytes, needle: bytes, count: int, end: int) -> int | None:
    """Offset of the ``count``-th occurrence of ``needle`` before ``end``, or None."""
    if end < count * len(needle) or raw.count(needle, 0, end) < count:
        return None
    pos = -1
    for _ in range(count):
        pos = raw.find(needle, pos + 1, end)
    return pos


def parse_window(raw: bytes, *, boundaries: int = MAX_BOUNDARIES,
                 multiparts: int = MAX_MULTIPARTS) -> tuple[int, str | None]:
    """How many bytes of ``raw`` the MIME parser reads, and why not all of them (None: all).
    Each bound cuts at the start of a line; see the module docstring. (The attachment
    listing, :mod:`sink.mail.attachments`, reads more parts than the rules.)"""
    cut, reason = len(raw), None
    at = _after_lines(raw, MAX_HEADER_LINES, 0, _header_end(raw))
    if at is not None:
        cut, reason = at, f"more than {MAX_HEADER_LINES} header lines"
    at = _after_lines(raw, MAX_PARSE_LINES, 0, cut)
    if at is not None:
        cut, reason = at, f"more than {MAX_PARSE_LINES} lines"
    at = _nth(raw, b"\n--", boundaries + 1, cut)
    if at is not None:
        cut, reason = at + 1, f"more than {boundaries} boundary lines"
    matches = 0
    if _count_any_case(raw, b"multipart/", cut) <= multiparts:
        return cut, reason                      # the usual case, counted in C
    for match in _MULTIPART.finditer(raw, 0, cut):
        matches += 1
        if matches > multiparts:
            cut = raw.rfind(b"\n", 0, match.start()) + 1
            reason = f"more than {multiparts} multipart containers"
            break
    return cut, reason


def reads_whole(raw: bytes, *, boundaries: int, multiparts: int,
                bodies: list[tuple[int, int]] = ()) -> bool:
    """``parse_window(raw, boundaries=..., multiparts=...)[1] is None``, with the boundary
    lines counted around ``bodies``: sorted, non-empty extents of ``raw`` holding no ``-``
    (the opaque base64 bodies, :mod:`sink.mail.opaque`), where a ``\\n--`` can only be the
    one starting at an extent's last byte. (Counting ``\\n--`` over a 100 KB message cost
    ~80 us, over what lies around its attachment ~10.)"""
    if (_after_lines(raw, MAX_HEADER_LINES, 0, _header_end(raw)) is not None
            or _after_lines(raw, MAX_PARSE_LINES) is not None):
        return False
    dashes, start = 0, 0
    for body, end in list(bodies) + [(len(raw), len(raw))]:
        dashes += raw.count(b"\n--", start, body)
        start = max(end - 1, body)
    if dashes > boundaries:
        return False
    return _count_any_case(raw, b"multipart/", len(raw)) <= multiparts


def _header_end(raw: bytes) -> int:
    """Where the header block's lines are counted to: the first CRLF blank line, else the
    first bare-LF one, else the end."""
    end = raw.find(b"\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    return len(raw) if end < 0 else end


def _count_any_case(raw: bytes, needle: bytes, end: int) -> int:
    """How often lower-case ``needle`` occurs in ``raw[:end]`` in any case: counted in C on
    lower-cased chunks (a case-insensitive regex scans 100 KB in ~0.5 ms, this in ~0.02)."""
    count, pos, step, overlap = 0, 0, 1 << 20, len(needle) - 1
    while pos < end:
        stop = min(pos + step, end)
        count += raw[pos:min(stop + overlap, end)].lower().count(needle)
        pos = stop
    return count
