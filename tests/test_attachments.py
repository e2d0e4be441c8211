"""What a message carries (issue 17), pure: attachment listing, names, inline images, nested
messages, TNEF, part bytes against the email package, and hostile input with its cost."""

from __future__ import annotations

import base64
import email
import hashlib
import time
import tracemalloc
from email.message import EmailMessage, Message

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sink.mail import attachments as att
from sink.mail import tnef
from sink.mail.attachments import Tree, list_attachments, part_bytes
from sink.mail.parse import parse_message
from tests import attachment_corpus as corpus
from tests.attachment_corpus import CORPUS, pseudo_random, tnef_sample


def by_part(raw: bytes) -> dict[str, att.Attachment]:
    return {a.part: a for a in list_attachments(raw).attachments}


def email_leaves(msg: Message, path: str = ""):
    """(IMAP part number, part) of every leaf, numbered independently of the code under test."""
    payload = msg.get_payload()
    if msg.get_content_maintype() == "multipart" and isinstance(payload, list):
        for i, child in enumerate(payload, 1):
            yield from email_leaves(child, f"{path}.{i}" if path else str(i))
    else:
        yield path or "1", msg


# ------------------------------------------------------------------------------ names
def test_czech_rfc2231_names_decoded():
    found = by_part(corpus.czech_names())
    assert found["2"].name == "Nabídka služeb – žluťoučký kůň.pdf"
    assert found["2"].content_type == "application/pdf" and found["2"].size == 75123
    assert found["2"].sha256 == hashlib.sha256(pseudo_random(75123, 1)).hexdigest()
    assert found["3"].name == "Příloha č.2.xlsx"        # ISO-8859-2, two continuations
    assert "1" not in found                                # the body is not an attachment


def test_japanese_rfc2047_and_rfc2231_names_decoded():
    found = by_part(corpus.japanese_names())
    assert [a.name for a in found.values()] == ["見積書.pdf", "請求書 2026年11月.xlsx",
                                                "議事録.txt"]
    assert found["4"].content_type == "text/plain" and \
        part_bytes(corpus.japanese_names(), "4") == "議事録: 十一月".encode()


def test_hostile_names_are_data_cut_and_never_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = corpus.hostile_names()
    names = [a.name for a in list_attachments(raw).attachments]
    assert names[0] == "../../etc/passwd"
    assert len(names[1]) == att.MAX_NAME and names[1].startswith("xxx")
    assert names[2] == "C:\\Windows\\system.ini" and names[4] == "/absolute.txt"
    assert "\x1b[31mred\x07" in names[3]                    # kept as data; `show` escapes it
    assert part_bytes(raw, "2") == b"../../etc/passwd"      # the content, not a file
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------- inline and nested
def test_inline_images_marked_with_content_id():
    found = by_part(corpus.inline_images())
    logo, chart, offer = found["1.2.2"], found["1.2.3"], found["2"]
    assert (logo.name, logo.content_id, logo.inline) == ("logo.png", "logo@firma.cz", True)
    assert chart.inline and chart.content_id == "chart@firma.cz"
    assert chart.content_type == "image/gif"
    assert not offer.inline and offer.content_id is None and offer.name == "offer.pdf"
    assert set(found) == {"1.2.2", "1.2.3", "2"}          # text and HTML are the body


def test_nested_message_listed_with_subject_and_its_bytes():
    raw = corpus.nested_message()        # base64-encoded message/rfc822 (the email package's way)
    [nested] = list_attachments(raw).attachments
    assert nested.part == "2" and nested.content_type == "message/rfc822"
    assert nested.nested_subject == "Původní zpráva s přílohou"
    assert nested.name == "Původní zpráva s přílohou.eml"
    data = part_bytes(raw, "2")
    assert email.message_from_bytes(data)["From"] == "eva@globex.com"
    assert nested.size == len(data) and nested.sha256 == hashlib.sha256(data).hexdigest()
    inner = email.message_from_bytes(data)
    assert inner.get_payload()[1].get_payload(decode=True) == pseudo_random(5000, 8)

    plain = corpus.nested_rfc822()       # a 7-bit message/rfc822: as the email package writes it
    [nested] = list_attachments(plain).attachments
    assert nested.nested_subject == "Re: schůzka"
    assert email.message_from_bytes(part_bytes(plain, "2"))["Subject"].startswith("Re:")


# ---------------------------------------------------------------------------------- TNEF
def test_tnef_unpacked_into_its_files():
    raw = corpus.with_tnef("umlaut")
    found = by_part(raw)
    assert [(a.part, a.name, a.content_type) for a in found.values()] == [
        ("2/1", "TBZ PARIV GmbH.jpg", "image/jpeg"), ("2/2", "image003.jpg", "image/jpeg"),
        ("2/3", "UmlautAnhang-äüö.txt", "text/plain")]
    content = tnef.unpack(tnef_sample("umlaut"))
    assert part_bytes(raw, "2/1") == content.files[0].data and found["2/1"].size == 44764
    assert part_bytes(raw, "2") == tnef_sample("umlaut")      # the winmail.dat itself
    assert part_bytes(raw, "2/4") is None and part_bytes(raw, "3") is None
    two = by_part(corpus.with_tnef("two-files"))
    assert [a.name for a in two.values()] == ["AUTHORS", "README"]
    assert b"TNEF is a program for unpacking" in part_bytes(corpus.with_tnef("two-files"), "2/2")


def test_tnef_body_is_the_text_when_there_is_no_other():
    rtf = parse_message(corpus.with_tnef("rtf", text=False))
    assert "Greg Allen" in rtf.body_text and "\\rtf" not in rtf.body_text
    html = parse_message(corpus.with_tnef("body", text=False))
    assert html.body_text.strip() and "<" not in html.body_text
    # a message with a text part keeps it
    assert parse_message(corpus.with_tnef("rtf")).body_text == "See the attachments."


def test_unreadable_tnef_is_one_attachment_never_a_failure():
    raw = corpus.broken_tnef()
    found = by_part(raw)
    assert found["3"].name == "WINMAIL.DAT" and found["3"].defect == "tnef: unreadable; kept whole"
    assert found["3"].content_type == "application/ms-tnef"
    # the cut one: tnefparse reads no file and no body from it: kept whole as well
    assert found["2"].name == "winmail.dat" and found["2"].defect == found["3"].defect
    assert parse_message(raw).body_text == "Two broken winmail.dat."


def test_tnef_of_many_tiny_objects_is_refused_in_bounded_time():
    # 100,000 empty objects: tnefparse would copy the rest of the blob for each one
    blob = b"\x78\x9f\x3e\x22\x00\x00" + (b"\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00") * 100_000
    started = time.perf_counter()
    assert tnef.unpack(blob) is None
    assert time.perf_counter() - started < 1.0


# ------------------------------------------------------------------------ differential
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_part_bytes_equal_what_the_email_package_decodes(name):
    """Every leaf of every corpus message: exactly the email package's decoded bytes, whether
    the part was read through the parse or decoded straight from the raw bytes."""
    raw = CORPUS[name]()
    reference = email.message_from_bytes(raw)
    leaves = list(email_leaves(reference))
    assert [p for p, _ in Tree(raw).leaves] == [p for p, _ in leaves]
    for path, part in leaves:
        if part.get_content_maintype() == "message":
            continue                     # written back, checked in the nested-message test
        expected = part.get_payload(decode=True) or b""
        assert part_bytes(raw, path) == expected, (name, path)
    for record in list_attachments(raw).attachments:
        data = part_bytes(raw, record.part)
        assert record.size == len(data) and record.sha256 == hashlib.sha256(data).hexdigest()


def test_big_base64_bodies_are_decoded_from_the_raw_bytes():
    """The cheap path is really taken for the corpus (else the differential test proves less)."""
    assert len(Tree(corpus.encodings())._extents) == 3
    assert len(Tree(corpus.czech_names())._extents) == 2


def test_a_token_that_lands_elsewhere_falls_back_to_the_whole_parse():
    """A CTE line quoted inside a text body makes the guess of a part's extent wrong: the bytes
    are still exactly the email package's."""
    quoted = ("Content-Type: text/plain\r\n\r\nHe wrote:\r\nContent-Transfer-Encoding: base64"
              "\r\n\r\n").encode() + base64.encodebytes(b"x" * 6000).replace(b"\n", b"\r\n")
    raw = (b"From: a@b.cz\r\nSubject: q\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;"
           b" boundary=q\r\n\r\n--q\r\n" + quoted + b"--q--\r\n")
    reference = email.message_from_bytes(raw).get_payload()[0].get_payload(decode=True)
    assert part_bytes(raw, "1") == reference


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=20000), name=st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=60),
    inline=st.booleans())
def test_any_attachment_round_trips(data, name, inline):
    name = name.strip()
    if not name:
        return
    msg = EmailMessage()
    msg["From"], msg["Subject"] = "a@b.cz", "p"
    msg.set_content("body")
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name,
                       disposition="inline" if inline else "attachment")
    raw = msg.as_bytes()
    [record] = list_attachments(raw).attachments
    assert record.name == email.message_from_bytes(raw).get_payload()[1].get_filename()[:255] \
        or record.name == name[:255]
    assert part_bytes(raw, record.part) == data and record.size == len(data)
    assert record.inline is inline


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CORPUS)), st.integers(0, 10**9), st.binary(max_size=40))
def test_mutated_messages_never_raise(name, where, junk):
    raw = CORPUS[name]()
    at = where % (len(raw) + 1)
    mutated = raw[:at] + junk + raw[at + len(junk) // 2:]
    listing = list_attachments(mutated)
    for record in listing.attachments:
        assert record.size == len(part_bytes(mutated, record.part) or b"")


# ----------------------------------------------------------------- hostile, with figures
def _measure(func, *args):
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = func(*args)
        return result, time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _many_parts(count: int) -> bytes:
    part = b"--m\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment;" \
           b" filename=a.bin\r\n\r\nx\r\n"
    return b"From: a@b.cz\r\nSubject: many\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;" \
           b" boundary=m\r\n\r\n" + part * count + b"--m--\r\n"


def test_ten_thousand_parts_bounded(capsys):
    listing, seconds, peak = _measure(list_attachments, _many_parts(12_000))
    assert len(listing.attachments) == att.MAX_PARTS
    assert any("10000" in d for d in listing.defects)
    with capsys.disabled():
        print(f"\n[12,000 parts] {seconds:.2f} s, peak {peak / 2**20:.0f} MiB")
    assert seconds < 15


def test_forty_megabyte_attachment_bounded(capsys):
    content = pseudo_random(40 * 2**20, 40)
    msg = EmailMessage()
    msg["From"], msg["Subject"] = "a@b.cz", "big"
    msg.set_content("see attached")
    msg.add_attachment(content, maintype="application", subtype="zip", filename="big.zip")
    raw = msg.as_bytes()
    listing, seconds, peak = _measure(list_attachments, raw)
    [record] = listing.attachments
    assert record.size == len(content) and record.sha256 == hashlib.sha256(content).hexdigest()
    with capsys.disabled():
        print(f"\n[40 MB attachment, {len(raw) / 2**20:.0f} MiB message] listing {seconds:.2f} s,"
              f" peak {peak / 2**20:.0f} MiB above the raw bytes")
    assert seconds < 10 and peak < 3 * len(raw)


def test_broken_base64_bodies_decoded_like_the_email_package():
    raw = corpus.encodings()
    reference = email.message_from_bytes(raw).get_payload()
    for path in ("3", "4"):                   # no padding / characters outside the alphabet
        assert part_bytes(raw, path) == reference[int(path) - 1].get_payload(decode=True)
    # a body of base64 characters only whose length is 4n+1 cannot be decoded: kept as is
    one_off = raw.replace(b"filename=a.pdf\r\n\r\n", b"filename=a.pdf\r\n\r\nQ")
    assert part_bytes(one_off, "2") == \
        email.message_from_bytes(one_off).get_payload()[1].get_payload(decode=True)


def test_deep_nesting_bounded():
    depth = 2000
    raw = b"From: a@b.cz\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"
    for i in range(depth):
        raw += f"Content-Type: multipart/mixed; boundary=d{i}\r\n\r\n--d{i}\r\n".encode()
    raw += b"Content-Type: application/pdf\r\n\r\nx\r\n"
    listing, seconds, _ = _measure(list_attachments, raw)
    assert listing.defects and seconds < 5
    assert part_bytes(raw, ".".join(["1"] * 3000)) is None


def test_part_numbers_are_checked():
    raw = corpus.czech_names()
    for bad in ("", "0x2", "2/", "/1", "2..1", "../1", "2\n", "1" * 7, "1." * 200 + "1"):
        assert part_bytes(raw, bad) is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["umlaut", "two-files", "body", "rtf", "long-filename",
                        "garbage-at-end"]),
       st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=20))
def test_damaged_tnef_never_raises_and_stays_bounded(sample, changes):
    """tnefparse's loops follow counts read from the data (a damaged count once meant 4 billion
    turns): every unpack stays within its budget."""
    data = bytearray(tnef_sample(sample))
    for where, value in changes:
        data[where % len(data)] = value
    started = time.perf_counter()
    content = tnef.unpack(bytes(data))
    assert time.perf_counter() - started < 2
    assert content is None or len(content.files) <= tnef.MAX_FILES


def test_tnef_with_a_huge_property_count_is_unreadable_quickly():
    data = bytearray(tnef_sample("two-files"))
    at = data.find(b"\x03\x90\x06\x00")         # the MAPI properties object (ATTMAPIPROPS)
    assert at > 0
    data[at + 8:at + 12] = b"\xff\xff\xff\x7f"    # its property count: 2^31
    started = time.perf_counter()
    tnef.unpack(bytes(data))
    assert time.perf_counter() - started < 2


@settings(max_examples=80, deadline=None)
@given(name=st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp", "Zs")),
                    min_size=1, max_size=60),
       charset=st.sampled_from(["utf-8", "iso-2022-jp", "shift_jis", "iso-8859-2"]))
def test_rfc2047_names_decoded(name, charset):
    from email.header import Header
    try:
        word = Header(name, charset).encode(linesep="\r\n ")
    except (UnicodeError, LookupError):
        return                                   # not expressible in that charset
    raw = ("From: a@b.cz\r\nSubject: n\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; "
           "boundary=n\r\n\r\n--n\r\nContent-Type: text/plain\r\n\r\nbody\r\n--n\r\n"
           f"Content-Type: application/pdf\r\nContent-Disposition: attachment; "
           f"filename=\"{word}\"\r\n\r\n%PDF\r\n--n--\r\n").encode()
    [record] = list_attachments(raw).attachments
    if '"' not in name and "\\" not in name:
        assert record.name == name[:att.MAX_NAME]


def test_a_message_that_is_only_its_body_is_not_parsed_again_and_loses_nothing():
    """The shortcut that skips the second parse for mail made of its body alone never hides
    an attachment: over the attachment corpus, the bench corpus and 600+ real bounces and
    auto-replies, every message it skips has nothing to list the long way either - and it
    does skip the plain ones."""
    from pathlib import Path

    from bench import corpus
    from sink.mail.attachments import body_only, list_attachments
    from tests import attachment_corpus as samples
    from tests.support import make_mail
    data = Path(__file__).parent / "data"
    raws = [p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()
            and p.suffix.lower() in (".eml", ".dat", ".txt") and p.stat().st_size < 1 << 20]
    raws += [m.raw for profile in ("4k-1", "100k-1") for m in corpus.build(profile, 40, seed=5)]
    raws += [samples.czech_names(), samples.japanese_names(), samples.inline_images(),
             samples.nested_message(), samples.nested_rfc822(), samples.broken_tnef(),
             samples.encodings(), samples.single_part(), samples.hostile_names()]
    raws += [samples.random_structure(seed) for seed in range(50)]
    skipped = [raw for raw in raws if body_only(raw)]
    assert len(raws) > 600 and skipped
    for raw in skipped:
        assert list_attachments(raw, shortcut=False).attachments == ()
    assert body_only(make_mail()) and body_only(make_mail(html="<p>hi</p>"))


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=3000), width=st.integers(4, 100), chunk=st.integers(1, 700),
       cut=st.integers(0, 3), junk=st.sampled_from([b"", b"=", b"==", b"A", b"AB", b"A=B"]))
def test_a_streamed_base64_digest_is_that_of_the_whole_decode(data, width, chunk, cut, junk):
    """sink.mail.attachments.base64_digest (a chunk at a time) against decode_b of the whole
    body, as get_payload(decode=True) does: equal wherever it answers; it answers for every
    body the email package itself would write."""
    import base64
    import hashlib
    from email._encoded_words import decode_b
    from sink.mail.attachments import base64_digest
    text = base64.b64encode(data)
    text = text[:len(text) - cut] + junk
    body = b"\r\n".join(text[i:i + width] for i in range(0, len(text), width)) + b"\r\n"
    raw = b"head\r\n\r\n" + body + b"--b--\r\n"
    start = raw.index(b"\r\n\r\n") + 4
    got = base64_digest(raw, start, start + len(body), chunk=chunk)
    whole = decode_b(b"".join(body.split()))[0]
    if got is not None:
        assert got == (len(whole), hashlib.sha256(whole).hexdigest())
    if not cut and not junk:
        assert got is not None


@given(text=st.lists(st.sampled_from([b"QUJD", b"QQ==", b"QUI=", b"=", b"A", b"+/", b"\r\n",
                                      b"*", b"Zm9v"]), max_size=40).map(b"".join))
def test_the_fast_base64_decoder_gives_binascii_bytes_or_binascii_decides(text):
    """pybase64 decodes strict base64; whatever it refuses goes to binascii, so the bytes
    (or binascii's error) are always binascii's own."""
    import binascii
    from sink.mail.attachments import _decode_base64
    try:
        expected = binascii.a2b_base64(text)
    except binascii.Error:
        with pytest.raises(binascii.Error):
            _decode_base64(text)
        return
    assert _decode_base64(text) == expected
