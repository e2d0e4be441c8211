"""The parse window's counts (sink.mail.window) against their definitions: the n-th line end
and the n-th occurrence of a needle, including the shortcuts that answer without counting when
the range is too short to hold that many (issue 16: each count read a 100 KB message again)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from sink.mail import window

TEXT = st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"\n"))
MIXED = st.lists(st.sampled_from([b"\n", b"--", b"\n--", b"a", b"\r\n", b"-"]),
                 max_size=120).map(b"".join)


def after_lines(raw: bytes, count: int, start: int, end: int) -> int | None:
    ends = [m.end() for m in re.finditer(b"\n", raw[start:end])]
    return start + ends[count - 1] if len(ends) >= count else None


def nth(raw: bytes, needle: bytes, count: int, end: int) -> int | None:
    if raw.count(needle, 0, end) < count:       # the definition counts without overlap
        return None
    pos = -1
    for _ in range(count):
        pos = raw.find(needle, pos + 1, end)
    return pos


@given(raw=st.one_of(TEXT, MIXED), count=st.integers(1, 400), data=st.data())
def test_the_nth_line_end_is_the_definitions(raw, count, data):
    start = data.draw(st.integers(0, len(raw)))
    end = data.draw(st.integers(start, len(raw)))
    assert window._after_lines(raw, count, start, end) == after_lines(raw, count, start, end)


@given(raw=MIXED, count=st.integers(1, 200), data=st.data())
def test_the_nth_boundary_line_is_the_definitions(raw, count, data):
    end = data.draw(st.integers(0, len(raw)))
    assert window._nth(raw, b"\n--", count, end) == nth(raw, b"\n--", count, end)


def test_a_message_shorter_than_a_bound_is_read_whole_without_counting_its_lines():
    raw = b"Subject: x\r\n\r\n" + b"line\r\n" * 1000
    assert window.parse_window(raw) == (len(raw), None)
    cut, reason = window.parse_window(raw, boundaries=5)
    assert reason is None and cut == len(raw)     # no "\n--" at all
    many = raw + b"\r\n--b\r\n" * 10
    cut, reason = window.parse_window(many, boundaries=5)
    assert reason == "more than 5 boundary lines" and many[cut:].startswith(b"--b")
