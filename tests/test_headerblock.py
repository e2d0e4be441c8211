"""sink.mail.headerblock against the stdlib's headersonly parse it stands in for: the same
message (class, raw header list, envelope line, payload, defects with their arguments, ...) for
generated header blocks of every kind and for every header block the MIME paths parse in the
bench corpora and tests/data; and the fast path is taken for every well-formed block."""

from __future__ import annotations

import email.parser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import corpus as bench_corpus
from sink.mail import headerblock, mime, onepass, opaque
from sink.mail import parse as mailparse

POLICY = mailparse._POLICY
DATA = Path(__file__).parent / "data"


def state(msg) -> tuple:
    """All a headersonly parse sets on its message."""
    return (type(msg), type(msg.policy), list(msg._headers), msg._unixfrom, msg._payload,
            msg.preamble, msg.epilogue, msg._default_type, msg._charset,
            [(type(d), d.args) for d in msg.defects])


def stdlib(block: str):
    return email.parser.Parser(policy=POLICY).parsestr(block, headersonly=True)


def outcome(parse, block: str) -> tuple:
    """The state of ``parse(block, POLICY)``'s message, or the exception it raises (the
    stdlib's close reads the Content-Type, which the policy may fail to)."""
    try:
        return state(parse(block, POLICY))
    except Exception as exc:
        return ("raises", type(exc), exc.args)


# Line pieces; each flagged with whether a block made of such pieces is one the fast path must
# take (True) or may leave to the stdlib (False).
_NAMES = st.one_of(
    st.sampled_from([("From", True), ("Subject", True), ("content-TYPE", True), ("a", True),
                     ("X-!#$%&'*+./=?^_`{|}~", True), ("", False), ("From ", False),
                     ("Bad Name", False), ("Subj\udcc3\udca9ct", False), ("X\x7f", False),
                     ("X\x00", False)]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, blacklist_characters=":"),
            min_size=1, max_size=6).map(lambda name: (name, True)))
_VALUE_CHARS = st.one_of(
    st.sampled_from(list(" \t a:b;=?<>@\"()é\udcc3\udca9\udcff")).map(lambda c: (c, True)),
    # a bare CR, NUL and what str.splitlines (but not the feed parser) ends a line at
    st.sampled_from(list("\r\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")).map(
        lambda c: (c, False)))
_VALUES = st.lists(_VALUE_CHARS, max_size=8).map(
    lambda cs: ("".join(c for c, _ in cs), all(ok for _, ok in cs)))
_ENDINGS = st.sampled_from([("\n", True), ("\r\n", True), ("\r", False)])


@st.composite
def header_blocks(draw):
    """(block, well_formed): header lines, continuations, odd lines, mixed endings, a blank
    line or none, sometimes text after it."""
    lines, ok = [], True
    for _ in range(draw(st.integers(0, 7))):
        kind = draw(st.sampled_from(["header", "header", "header", "continuation", "odd"]))
        value, fine = draw(_VALUES)
        if kind == "header":
            name, good = draw(_NAMES)
            text, fine = f"{name}:{value}", fine and good
        elif kind == "continuation":
            text = draw(st.sampled_from([" ", "\t"])) + value
            fine = fine and bool(lines)             # a continuation first is a defect
        else:
            text = draw(st.sampled_from(["not a header", "From nobody Mon Jan 1", ":no name",
                                         "", "Subject : spaced"]))
            fine = False
        ending, good = draw(_ENDINGS)
        lines.append([text, ending])
        ok = ok and fine and good
    if lines and draw(st.booleans()):
        lines[-1][1], end = "", ""                  # the last line without an ending
    else:
        end = draw(st.sampled_from(["\n", "\r\n", ""]))
    block = "".join(text + ending for text, ending in lines) + end
    if end and draw(st.integers(0, 4)) == 0:
        block += draw(st.sampled_from(["body\n", "\n", "From: x\n"]))
        ok = False                                  # a payload
    return block, ok


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header_blocks())
def test_generated_blocks_parse_as_the_stdlib_parses_them(drawn):
    block, well_formed = drawn
    expected = outcome(lambda b, p: stdlib(b), block)
    assert outcome(headerblock.parse_headers, block) == expected
    try:
        fast = headerblock.fast_headers(block, POLICY)
        taken = None if fast is None else state(fast)
    except Exception as exc:
        taken = ("raises", type(exc), exc.args)
    if taken is not None:
        assert taken == expected
    if well_formed:
        assert taken is not None, repr(block)


@pytest.mark.parametrize("block", [
    "", "\n", "\r\n", "\n\n", "A: b", "A: b\r", "A: b\n\r", "A:\n \n\t\n", "A: b\n c",
    "A: b\n\n\n", "A: b\r\n\n", "A: b\n\r\n", "From nobody\nA: b\n", "A: b\nFrom x\n",
    " lead: x\nA: b\n", ":x\n", "A: b\x0bc\n", "A: b\x85c\n", "A\udcc3: b\n", "A: b\x00\n"])
def test_edge_blocks_parse_as_the_stdlib_parses_them(block):
    assert outcome(headerblock.parse_headers, block) == outcome(lambda b, p: stdlib(b), block)


class _Blocks:
    """Records every header block the MIME paths parse, and whether the fast path took it."""

    def __enter__(self):
        self.real, self.seen = headerblock.parse_headers, []

        def recorded(block, policy):
            self.seen.append((block, headerblock.fast_headers(block, policy) is not None))
            return self.real(block, policy)
        headerblock.parse_headers = recorded
        return self

    def __exit__(self, *exc):
        headerblock.parse_headers = self.real


def _check_blocks(raws) -> list[bool]:
    with _Blocks() as blocks:
        for raw in raws:
            mime.message_from_bytes(raw, POLICY)
    for block, _ in blocks.seen:
        assert state(blocks.real(block, POLICY)) == state(stdlib(block))
    return [taken for _, taken in blocks.seen]


@pytest.mark.parametrize("profile", ["4k-1", "100k-1"])
def test_bench_corpus_blocks_take_the_fast_path(profile):
    """Every header block of the bench mail (root and parts, as stored and tokened) parses as
    the stdlib parses it, and all of them - well-formed, as generated - take the fast path."""
    raws = []
    for mail in bench_corpus.build(profile, 300, seed=7):
        raws += [mail.raw, onepass._with_tokens(mail.raw, opaque.opaque_extents(mail.raw))[0]]
    taken = _check_blocks(raws)
    assert len(taken) >= len(raws) and all(taken)


def test_real_world_blocks_parse_as_the_stdlib_parses_them():
    taken = _check_blocks(path.read_bytes() for path in sorted(DATA.rglob("*.eml")))
    assert len(taken) > 600 and sum(taken) > len(taken) * 0.8
