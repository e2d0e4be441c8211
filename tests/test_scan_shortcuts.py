"""The byte scans that skip the opaque attachment bodies (issue 16, third round) against the
whole-message scans they replace: ``opaque.opaque_extents`` (which searched the whole message
four times), ``window.reads_whole`` (``parse_window`` counting ``\\n--`` over the bodies too)
and ``attachments.base64_digest``'s one-piece decode (the line ends taken out first).

The references are the code as it was before the change, kept here on purpose."""

from __future__ import annotations

import base64
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import corpus as bench_corpus
from sink.mail import opaque, window
from sink.mail.attachments import base64_digest
from sink.mail.opaque import (_BASE64_CTE, _EML_NAME, _MESSAGE_TYPE, MAX_PART_HEADER,
                              MIN_BODY, _body_start, _header_start, _only_base64, _opaque)
from tests.test_parse_differential import messages

DATA = Path(__file__).parent / "data"


def reference_opaque_extents(raw: bytes) -> list[tuple[int, int]]:
    """opaque_extents before the change: every search over the whole message."""
    if len(raw) < MIN_BODY or _MESSAGE_TYPE.search(raw) or _EML_NAME.search(raw):
        return []
    cuts: list[tuple[int, int]] = []
    after = 0
    for match in _BASE64_CTE.finditer(raw):
        if match.start() < after:
            continue
        body = _body_start(raw, match.end() - 1)
        if body is None:
            continue
        head_start = max(_header_start(raw, match.start()), after)
        boundary = raw.rfind(b"\n--", head_start, match.start())
        if boundary >= 0:
            head_start = boundary
        if body - head_start > MAX_PART_HEADER or not _opaque(raw[head_start:body]):
            continue
        end = raw.find(b"\n--", body)
        end = len(raw) if end < 0 else end + 1
        if end - body < MIN_BODY or not _only_base64(raw, body, end):
            continue
        cuts.append((body, end))
        after = end
    return cuts


# Things that change the answer when they land in the right place: a carried message named in
# a header or a body, a second transfer-encoding line, a dash or a stray character inside a
# body, a boundary right at a body's start, a body running to the end of the message.
_SPLICES = (b"\r\nContent-Type: message/rfc822\r\n", b"\nContent-Type:  Message/Partial\n",
            b"see file.EML\r\n", b"name=\"x.eml\"", b"\r\nContent-Transfer-Encoding: base64\r\n",
            b"-", b"--", b"\n--", b"\r\n--b\r\n", b" ", b":", b".", b"=", b"\r\n\r\n", b"\n\n",
            b"multipart/", b"MultiPart/", b"\n-x", b"\r\n-\r\n", b"\n--x")


@st.composite
def damaged(draw):
    """A generated multipart message, with up to three splices anywhere (often inside or at
    the edges of a base64 body), or cut short."""
    raw = draw(messages())
    for _ in range(draw(st.integers(0, 3))):
        cuts = reference_opaque_extents(raw)
        if cuts and draw(st.booleans()):
            start, end = draw(st.sampled_from(cuts))
            at = draw(st.sampled_from([start, start + 1, end - 1, end,
                                       draw(st.integers(start, end))]))
        else:
            at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from(_SPLICES)) + raw[at:]
    if draw(st.integers(0, 5)) == 0:
        raw = raw[:draw(st.integers(0, len(raw)))]
    return raw


def _corpus() -> list[bytes]:
    raws = [m.raw for profile in ("4k-1", "100k-1") for m in bench_corpus.build(profile, 300)]
    raws += [path.read_bytes() for path in sorted(DATA.rglob("*.eml"))]
    return raws


@pytest.fixture(scope="module")
def corpus() -> list[bytes]:
    return _corpus()


def test_opaque_extents_equal_the_whole_message_searches_over_the_corpora(corpus):
    cut = 0
    for raw in corpus:
        assert opaque.opaque_extents(raw) == reference_opaque_extents(raw)
        cut += bool(reference_opaque_extents(raw))
    assert cut >= 250                    # the 100 KB mail has a PDF each: the path is taken


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_opaque_extents_equal_the_whole_message_searches(raw):
    assert opaque.opaque_extents(raw) == reference_opaque_extents(raw)


def _reads_whole(raw: bytes, boundaries: int, multiparts: int) -> bool:
    return window.parse_window(raw, boundaries=boundaries, multiparts=multiparts)[1] is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged(), st.integers(0, 12), st.integers(0, 4))
def test_reads_whole_counts_around_the_bodies_as_parse_window_counts_over_them(
        raw, boundaries, multiparts):
    bodies = opaque.opaque_extents(raw)
    assert window.reads_whole(raw, boundaries=boundaries, multiparts=multiparts,
                              bodies=bodies) == _reads_whole(raw, boundaries, multiparts)


def test_reads_whole_over_the_corpora_at_bounds_around_each_message(corpus):
    tripped = 0
    for raw in corpus:
        bodies = opaque.opaque_extents(raw)
        dashes = raw.count(b"\n--")
        for boundaries in (dashes - 1, dashes):
            expected = _reads_whole(raw, max(boundaries, 0), 100)
            tripped += not expected
            assert window.reads_whole(raw, boundaries=max(boundaries, 0), multiparts=100,
                                      bodies=bodies) == expected
    assert tripped >= 250                # one bound of each pair is just below the count


_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@st.composite
def base64_bodies(draw):
    """Base64 text as a body holds it: wrapped at some width with CRLF or LF, sometimes with
    a character too many or too few, padding where it belongs or elsewhere."""
    data = draw(st.binary(max_size=400))
    text = base64.b64encode(data)
    tweak = draw(st.sampled_from(["none", "none", "drop", "extra", "pad-inside", "no-pad"]))
    if tweak == "drop" and text:
        text = text[:-1]
    elif tweak == "extra":
        text += bytes([draw(st.sampled_from(_ALPHABET))])
    elif tweak == "pad-inside" and len(text) > 4:
        at = draw(st.integers(1, len(text) - 2))
        text = text[:at] + b"=" + text[at:]
    elif tweak == "no-pad":
        text = text.rstrip(b"=")
    width = draw(st.sampled_from([4, 60, 76, 1000]))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    return eol.join(text[i:i + width] for i in range(0, len(text), width)) + eol


@settings(max_examples=500, deadline=None)
@given(base64_bodies(), st.binary(max_size=20), st.binary(max_size=20))
def test_one_piece_digest_equals_the_digest_a_piece_at_a_time(body, before, after):
    raw = before + body + after
    start, end = len(before), len(before) + len(body)
    # chunk=8: the loop with its carried remainders, as for an attachment over a megabyte
    assert base64_digest(raw, start, end) == base64_digest(raw, start, end, chunk=8)


def test_one_piece_digest_is_taken_and_right_for_an_ordinary_attachment():
    data = random.Random(5).randbytes(70_000)
    body = base64.encodebytes(data).replace(b"\n", b"\r\n")
    import hashlib
    assert base64_digest(body, 0, len(body)) == (len(data), hashlib.sha256(data).hexdigest())


def reference_header_end(data: bytes) -> int | None:
    """mime._header_end before the change: both blank-line searches over the whole text."""
    crlf, lf = data.find(b"\n\r\n"), data.find(b"\n\n")
    ends = [at + n for at, n in ((crlf, 3), (lf, 2)) if at >= 0]
    if not ends:
        return None
    end = min(ends)
    head = data[:end]
    return None if head.count(b"\r") != head.count(b"\r\n") else end


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"\n", b"\r\n", b"\r", b"a: b", b"x", b"\n\n", b"\n\r\n"]),
                max_size=40).map(b"".join))
def test_header_end_with_the_bounded_search_is_the_unbounded_ones(data):
    from sink.mail import mime
    assert mime._header_end(data) == reference_header_end(data)


@settings(max_examples=800, deadline=None)
@given(st.text(alphabet=st.sampled_from(["a", " ", "\x00", "\ud800", "\udcff", "\udfff",
                                         "\ud7ff", "\ue000", "é", "€", "\U0001f600"]),
               max_size=30) | st.text(max_size=40))
def test_storable_is_its_regex_definition(text):
    from sink.mail.parse import _UNSTORABLE, storable
    expected = _UNSTORABLE.sub("\ufffd", text) if text and _UNSTORABLE.search(text) else text
    assert storable(text) == expected


def _elided(raw: bytes) -> list[tuple[int, int]]:
    from sink.mail import attachments
    return sorted(attachments._elide(raw)[1].values())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_when_the_listing_is_said_to_elide_the_same_bodies_it_does(raw):
    """onepass skips the listing's own window check when attachments.elides_the_same says
    the listing leaves out exactly the scan's bodies: hold that to the listing's _elide."""
    from sink.mail import attachments
    scan = opaque.opaque_scan(raw)
    if attachments.elides_the_same(raw, scan):
        assert _elided(raw) == scan.cuts


def test_the_listing_elides_the_same_bodies_in_most_bench_mail_and_its_bounds_are_looser(corpus):
    from sink.mail import attachments, onepass
    assert onepass._LISTING_LOOSER
    said = 0
    for raw in corpus:
        scan = opaque.opaque_scan(raw)
        if attachments.elides_the_same(raw, scan):
            said += 1
            assert _elided(raw) == scan.cuts
    assert said >= 250                   # every 100 KB bench message: the shortcut is taken


def test_a_type_the_listing_reads_otherwise_is_not_said_to_be_elided_the_same():
    """The listing looks for a part's type after a line end only: in a message whose very
    first line names the (opaque) type and a later line another (multipart), it reads the
    later one and keeps the body; the shortcut must not assume otherwise."""
    from sink.mail import attachments
    from tests.test_parse_differential import assert_same
    body = base64.encodebytes(random.Random(3).randbytes(9000)).replace(b"\n", b"\r\n")
    raw = (b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
           b"Content-Type: multipart/mixed\r\n\r\n" + body)
    scan = opaque.opaque_scan(raw)
    assert scan.cuts and scan.every_one          # the scan cuts the body ...
    assert _elided(raw) == []                     # ... the listing keeps it
    assert not attachments.elides_the_same(raw, scan)
    assert_same(raw)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([b"\r\n", b".", b"..", b"\r", b"\n", b"a", b"\r\n."]),
                max_size=40).map(b"".join))
def test_unstuffing_is_the_replace_it_replaced(content):
    from sink.sources.smtp_protocol import unstuffed
    assert unstuffed(content) == (b"\r\n" + content).replace(b"\r\n.", b"\r\n")[2:]
