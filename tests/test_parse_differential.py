"""The one-pass parse (sink.mail.onepass, issue 16) against the two separate parses it replaces:
for every message of the benchmark corpora and of the real-world mail under tests/data, the
parsed fields, the unwrapped messages, the attachment listing, the rules' MIME tree and the rule
decision are the same. The reference is the path Intake.prepare ran before: parse_message, then
list_attachments (a parse of its own)."""

from __future__ import annotations

import base64
import email
import random
from email.message import Message
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import corpus as bench_corpus
from sink.config import parse_config
from sink.directory import Directory
from sink.mail import mime, multipart, onepass, opaque
from sink.mail import parse as mailparse
from sink.mail.attachments import list_attachments
from sink.mail.onepass import parse_and_list
from sink.mail.parse import parse_message
from sink.mail.unwrap import unwrap
from sink.pipeline import evaluate
from tests import attachment_corpus
from tests.reliability import hostile

DATA = Path(__file__).parent / "data"
BENCH_COUNT = 1500                       # per profile: both sizes, 3,000 in all
BOX = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
COMPARED: dict[str, int] = {}            # corpus -> messages compared (printed at the end)


def never_seen(keys) -> bool:
    return False


def tree_shape(msg: Message) -> tuple:
    """Everything the rules can read of a parsed message: headers, payload text, preamble,
    epilogue, defect kinds, default type - recursively."""
    payload = msg.get_payload()
    inner = tuple(tree_shape(p) for p in payload) if isinstance(payload, list) else payload
    return (tuple(msg.items()), inner, msg.preamble, msg.epilogue, msg.get_default_type(),
            msg.get_unixfrom(), tuple(type(d).__name__ for d in msg.defects))


def decisions(parsed, carried):
    out = [evaluate(parsed, BOX, Directory(), never_seen)]
    for inner in carried.inner if carried else ():
        out.append(evaluate(inner.parsed, BOX, Directory(), never_seen))
    return out


def stdlib_parse(data: bytes, policy) -> Message:
    return email.message_from_bytes(data, policy=policy)


def reference(raw: bytes, bcc: tuple[str, ...] = ()):
    """What Intake.prepare computed before issue 16: parse_message on the stdlib's feed
    parser, unwrap, then list_attachments with a parse of its own."""
    fast = mailparse.message_from_bytes
    mailparse.message_from_bytes = stdlib_parse
    try:
        parsed = parse_message(raw, bcc=bcc)
        return parsed, list_attachments(raw), unwrap(parsed)
    finally:
        mailparse.message_from_bytes = fast


def assert_same(raw: bytes, bcc: tuple[str, ...] = ()) -> None:
    """The one-pass results of ``raw`` equal the reference path's, field by field."""
    ref_parsed, ref_listing, ref_carried = reference(raw, bcc)
    parsed, listing = parse_and_list(raw, bcc=bcc)
    carried = unwrap(parsed)
    assert parsed == ref_parsed                       # every field but `message`
    assert listing == ref_listing
    assert carried == ref_carried
    if ref_parsed.message is not None:
        assert tree_shape(parsed.message) == tree_shape(ref_parsed.message)
    assert decisions(parsed, carried) == decisions(ref_parsed, ref_carried)


def _count(name: str, n: int = 1) -> None:
    COMPARED[name] = COMPARED.get(name, 0) + n


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print("\nparse differential, messages compared:", COMPARED)


@pytest.mark.parametrize("profile", ["4k-1", "100k-1"])
def test_bench_corpus_identical(profile):
    mails = bench_corpus.build(profile, BENCH_COUNT, seed=101)
    for mail in mails:
        assert_same(mail.raw, bcc=("archive@firma.cz",) if len(mail.raw) % 7 == 0 else ())
    _count(profile, len(mails))
    # the corpus exercises the one-pass path, not only its fallbacks
    assert sum(bool(opaque.opaque_extents(m.raw)) for m in mails) > (
        len(mails) // 2 if profile.startswith("100k") else -1)


REAL = sorted(DATA.rglob("*.eml"))


def test_real_world_corpora_identical():
    assert len(REAL) > 600
    for path in REAL:
        assert_same(path.read_bytes())
    _count("tests/data", len(REAL))


def test_attachment_corpus_identical():
    for name, make in attachment_corpus.CORPUS.items():
        assert_same(make())
    _count("attachment corpus", len(attachment_corpus.CORPUS))


# The hostile shapes, small enough to run here: the bounds must cut both paths alike (these go
# the separate-parse way whenever a window is read).
HOSTILE = {
    "parts-1500": lambda: hostile.many_parts(1500),
    "nesting-120": lambda: hostile.deep_nesting(120),
    "semicolons-2000": lambda: hostile.semicolons(2000),
    "addresses-6000": lambda: hostile.many_addresses(6000),
    "headers-1000": lambda: hostile.many_headers(1000),
    "broken-encodings": hostile.broken_encodings,
    "big-attachment-300k": lambda: hostile.big_attachment(300_000),
    "wrapper-bomb-20": lambda: hostile.wrapper_bomb(20),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_shapes_identical(name):
    assert_same(HOSTILE[name]())
    _count("hostile")


# ------------------------------------------------------------------ generated messages

def _pdf_part(boundary: str, data: bytes, eol: bytes, ctype: str) -> bytes:
    body = base64.encodebytes(data).replace(b"\n", eol)
    return (f"--{boundary}".encode() + eol + f"Content-Type: {ctype}; name=\"a.bin\"".encode()
            + eol + b"Content-Disposition: attachment; filename=\"a.bin\"" + eol
            + b"Content-Transfer-Encoding: base64" + eol + eol + body)


def _text_part(boundary: str, text: str, eol: bytes) -> bytes:
    return (f"--{boundary}".encode() + eol + b"Content-Type: text/plain; charset=utf-8" + eol
            + b"Content-Transfer-Encoding: 8bit" + eol + eol + text.encode() + eol)


@st.composite
def messages(draw):
    """Multipart mail with opaque bodies of every size around the bounds, both line ends, and
    the ways a guess about a body's extent goes wrong (a '--' line inside it, no closing
    boundary, text after it, a token-like payload)."""
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    rng = random.Random(draw(st.integers(0, 10**6)))
    boundary = "b" + draw(st.text("abcxyz019", min_size=1, max_size=8))
    parts = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["pdf", "image", "text", "octet", "calendar"]))
        if kind == "text":
            parts.append(_text_part(boundary, draw(st.text(max_size=200)), eol))
            continue
        size = draw(st.sampled_from([10, 4000, 6200, 8200, 20000]))
        ctype = {"pdf": "application/pdf", "image": "image/png", "octet":
                 "application/octet-stream", "calendar": "text/calendar"}[kind]
        part = _pdf_part(boundary, rng.randbytes(size), eol, ctype)
        damage = draw(st.sampled_from(["none", "none", "dash-line", "trailing-text"]))
        if damage == "dash-line":
            middle = len(part) // 2
            cut = part.index(eol, middle) + len(eol)
            part = part[:cut] + b"--not-the-boundary" + eol + part[cut:]
        elif damage == "trailing-text":
            part += b"sink0x0" + eol
        parts.append(part)
    head = (b"From: Jan <jan@acme.cz>" + eol + b"To: alice@firma.cz" + eol
            + b"Subject: generated" + eol + b"MIME-Version: 1.0" + eol
            + f"Content-Type: multipart/mixed; boundary=\"{boundary}\"".encode() + eol + eol)
    closing = f"--{boundary}--".encode() + eol if draw(st.booleans()) else b""
    return head + b"".join(parts) + closing + draw(st.sampled_from([b"", b"epilogue" + eol]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_generated_messages_identical(raw):
    assert_same(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"")),
       st.sampled_from([b"\n\n", b"\n\r\n", b"\r\n", b"\n"]), st.integers(0, 300))
def test_bounded_blank_line_searches_equal_the_unbounded_ones(noise, glue, pos):
    """opaque._body_start / _header_start stop their bare-LF search early: the answer is the
    one the full searches give."""
    raw = noise[:len(noise) // 2] + glue + noise[len(noise) // 2:] + glue
    pos = min(pos, len(raw))
    crlf, lf = raw.find(b"\n\r\n", pos), raw.find(b"\n\n", pos)
    ends = [at + n for at, n in ((crlf, 3), (lf, 2)) if at >= 0]
    assert opaque._body_start(raw, pos) == (min(ends) if ends else None)
    crlf, lf = raw.rfind(b"\n\r\n", 0, pos), raw.rfind(b"\n\n", 0, pos)
    assert opaque._header_start(raw, pos) == max(crlf + 2 if crlf >= 0 else 0,
                                                 lf + 1 if lf >= 0 else 0)


_HEADER_LINES = st.sampled_from([b"From: Jan <jan@acme.cz>", b"Subject: =?utf-8?q?P=C5=99?=",
                                 b" folded continuation", b"X-Odd:", b"not a header line",
                                 b"From nobody Mon Jan 1", b"Content-Type: text/plain",
                                 b"Content-Type: multipart/mixed; boundary=b",
                                 b"Content-Type: message/rfc822", b"Subj\xc3\xa9ct: 8bit",
                                 b"Content-Type: message/delivery-status", b""])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_HEADER_LINES, st.sampled_from([b"\r\n", b"\n", b"\r"])),
                max_size=8),
       st.binary(max_size=200), st.sampled_from([b"\r\n", b"\n", b""]))
def test_single_part_tree_equals_the_feed_parsers(lines, body, blank):
    """sink.mail.mime builds the very tree email.message_from_bytes builds, whatever the line
    ends, blank lines, non-header lines and content types of the header block."""
    raw = b"".join(line + end for line, end in lines) + blank + body
    policy = mailparse._POLICY
    assert tree_shape(mime.message_from_bytes(raw, policy)) == \
        tree_shape(email.message_from_bytes(raw, policy=policy))


# ------------------------------------------------------------------ the multipart tree

def exact_tree(msg: Message) -> tuple:
    """All the state of a parsed message the stdlib gives it, recursively: the class, the raw
    header list, the envelope line, payload strings byte for byte, preamble, epilogue, default
    type, charset and the defects with their arguments, in order."""
    payload = msg._payload
    inner = [exact_tree(p) for p in payload] if isinstance(payload, list) else payload
    return (type(msg), type(msg.policy), list(msg._headers), msg._unixfrom, inner, msg.preamble,
            msg.epilogue, msg._default_type, msg._charset,
            [(type(d), d.args) for d in msg.defects])


class _FastPathCount:
    """Wraps sink.mail.multipart.parse_body to count how often the multipart path built the
    tree itself (True) or left it to the feed parser (False)."""

    def __init__(self):
        self.answers: list[bool] = []

    def __enter__(self):
        self.real = multipart.parse_body

        def counted(*args):
            self.answers.append(self.real(*args))
            return self.answers[-1]
        multipart.parse_body = counted
        return self

    def __exit__(self, *exc):
        multipart.parse_body = self.real


def assert_same_tree(raw: bytes) -> None:
    policy = mailparse._POLICY
    assert exact_tree(mime.message_from_bytes(raw, policy)) == \
        exact_tree(email.message_from_bytes(raw, policy=policy))


@pytest.mark.parametrize("profile", ["4k-1", "4k-5", "100k-1", "100k-5"])
def test_multipart_trees_equal_the_feed_parsers_on_the_bench_corpora(profile):
    """Every message, as stored and as the one-pass parse reads it (opaque bodies as token
    lines), parses to the feed parser's tree; at 100 KB the multipart path builds most."""
    mails = bench_corpus.build(profile, 600, seed=7)
    with _FastPathCount() as count:
        for mail in mails:
            assert_same_tree(mail.raw)
            assert_same_tree(onepass._with_tokens(mail.raw, opaque.opaque_extents(mail.raw))[0])
    _count(f"{profile} trees", len(mails))
    if profile.startswith("100k"):
        assert sum(count.answers) > len(mails)      # of 2 x 600 parses, all multipart
    else:
        assert sum(count.answers) > 10


def test_multipart_trees_equal_the_feed_parsers_on_real_world_mail():
    with _FastPathCount() as count:
        for path in REAL:
            assert_same_tree(path.read_bytes())
    _count("tests/data trees", len(REAL))
    assert sum(count.answers) > 10


_BCHARS = "abz09=_."        # no '-', space or tab: no generated boundary is another's line


@st.composite
def _multipart_mail(draw):
    """(raw, well_formed): multipart mail of every shape the multipart path reads or must leave
    to the feed parser; well_formed when no damage was drawn (then the fast path must be taken).
    Damage: a bare CR, a missing boundary parameter, no parts, no close boundary, a non-header
    line or a 'From ' line in a part's header block (or a delivery-status block), no blank line
    after one, a boundary line right after another, an enclosing boundary inside a part, an
    inner boundary equal to an outer one."""
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    damage: list[str] = []

    def hurt(what: str, percent: int = 8) -> bool:
        # the high end is damage: hypothesis shrinks towards 0, to the well-formed shape
        if draw(st.integers(0, 99)) >= 100 - percent:
            damage.append(what)
            return True
        return False

    def boundary(outers: list[str]) -> str:
        if outers and hurt("same boundary", 4):
            return draw(st.sampled_from(outers))
        base = draw(st.sampled_from(outers)) if outers and draw(st.booleans()) else ""
        fresh = base + draw(st.text(_BCHARS, min_size=1, max_size=4))
        return fresh if fresh not in outers else fresh + "z" * 5 + str(len(outers))

    def leaf_body(outers: list[str]) -> list[str]:
        b = draw(st.sampled_from(outers))
        lines = draw(st.lists(st.sampled_from(
            ["text", "", "--", "-- ", "Pří-liš", f"--{b}-not", f"--{b} x", f"  --{b}",
             f"=3D--{b}", f"--{b}--x", "Content-Type: text/plain"]), max_size=5))
        if lines and hurt("enclosing boundary inside a part", 4):
            lines.insert(draw(st.integers(0, len(lines))), f"--{b}")
        return lines

    def enclosed(outers: list[str], depth: int) -> list[str]:
        """A message/rfc822 body: a message, sometimes with an envelope line."""
        envelope = ["From nobody Mon Jan  1 00:00:00 2024"] if draw(st.booleans()) else []
        return envelope + ["From: a@b.cz"] + part(outers, depth + 1)

    def status(outers: list[str]) -> list[str]:
        """A message/delivery-status body: header blocks, blank lines between (extra ones
        too), or none at all."""
        lines: list[str] = []
        for _ in range(draw(st.integers(0, 3))):
            block = draw(st.lists(st.sampled_from(
                ["Reporting-MTA: dns; mx.acme.cz", "Final-Recipient: rfc822; a@b.cz",
                 "Status: 5.1.1", " (folded)", "Diagnostic-Code: smtp; 550"]),
                min_size=1, max_size=3))
            if hurt("not a header in a status block", 4):
                block.append("not a header")
            lines += block + [""] * draw(st.integers(0, 2))
        return lines

    def part(outers: list[str], depth: int) -> list[str]:
        kind = draw(st.sampled_from(["text", "text", "empty", "noheaders", "status"]
                                    + (["multipart", "multipart", "rfc822"] if depth < 3
                                       else [])))
        if kind == "multipart":
            return multipart(outers, depth + 1)
        if kind == "rfc822":
            return ["Content-Type: message/rfc822", ""] + enclosed(outers, depth)
        if kind == "status":
            return ["Content-Type: message/delivery-status", ""] + status(outers)
        headers = [] if kind == "noheaders" else draw(st.lists(st.sampled_from(
            ["Content-Type: text/plain; charset=utf-8", "Content-Type: text/html",
             "X-Folded: a", " continued", "Content-Disposition: inline",
             "Content-Transfer-Encoding: 8bit"]), min_size=1, max_size=3))
        if headers and hurt("not a header"):
            headers.insert(draw(st.integers(0, len(headers))), "not a header")
        if headers and hurt("From line last", 4):
            headers.append("From someone")
        blank = [] if hurt("no blank line", 4) else [""]
        return headers + blank + ([] if kind == "empty" else leaf_body(outers))

    def multipart(outers: list[str], depth: int) -> list[str]:
        b = boundary(outers)
        sub = draw(st.sampled_from(["mixed", "alternative", "related", "digest"]))
        if hurt("no boundary parameter", 3):
            head = [f"Content-Type: multipart/{sub}"]
        else:
            head = [draw(st.sampled_from([f'Content-Type: multipart/{sub}; boundary="{b}"',
                                          f"Content-Type: multipart/{sub}; boundary={b}",
                                          f'Content-Type: multipart/{sub};{eol}\tboundary="{b}"']))]
        if draw(st.integers(0, 9)) == 0:
            head.append("Content-Transfer-Encoding: base64")   # a defect, not a fallback
        ws = st.sampled_from(["", "", " ", "\t", " \t "])
        lines = head + [""]
        lines += draw(st.lists(st.sampled_from(["This is MIME.", "", f"--{b}-not"]),
                               max_size=2))
        count = 0 if hurt("no parts", 4) else draw(st.integers(1, 3))
        for _ in range(count):
            lines.append(f"--{b}" + draw(ws))
            if hurt("boundary after a boundary", 3):
                lines.append(f"--{b}")
            if sub == "digest":
                # a digest part without a Content-Type is message/rfc822
                lines += ([""] + enclosed(outers + [b], min(depth, 3)) if draw(st.booleans())
                          else ["Content-Type: text/plain", ""] + leaf_body(outers + [b]))
            else:
                lines += part(outers + [b], depth)
        if not hurt("no close boundary", 5):
            lines.append(f"--{b}--" + draw(ws))
            lines += draw(st.lists(st.sampled_from(["", "epilogue", f"--{b}-not"]),
                                   max_size=2))
        return lines

    lines = ["From: Jan <jan@acme.cz>", "Subject: shapes", "MIME-Version: 1.0"]
    lines += multipart([], 0)
    text = eol.join(lines) + (eol if draw(st.booleans()) else "")
    if eol == "\r\n" and hurt("bare CR", 5):
        at = draw(st.integers(0, len(lines) - 1))
        pieces = text.split("\r\n")
        text = "\r\n".join(pieces[:at + 1]) + "\r" + "\r\n".join(pieces[at + 1:])
    return text.encode("utf-8"), not damage


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_multipart_mail())
def test_multipart_shapes_tree_equals_the_feed_parsers(mail):
    """Whatever the shape, the tree is the feed parser's; and the multipart path builds it
    itself for every well-formed shape (else it would never be used)."""
    raw, well_formed = mail
    with _FastPathCount() as count:
        assert_same_tree(raw)
    if well_formed:
        assert count.answers == [True]
