"""message_facts' shortcuts (sink.mail.parse: the one-pass header reads, the decoded-subject and
charset memories, the unencoded-subject shortcut) against the plain reads they replace: the
same ParsedMessage, field for field and defect for defect, for generated headers and the bench
and real-world mail."""

from __future__ import annotations

import email
from contextlib import contextmanager
from email.header import decode_header, make_header
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import corpus as bench_corpus
from sink.mail import parse as mailparse

DATA = Path(__file__).parent / "data"


def plain_decode(value):
    """decode_text_header as it was: every value through the stdlib's header classes."""
    if not value:
        return ""
    try:
        return mailparse.storable(str(make_header(decode_header(value))))
    except Exception:
        return mailparse.storable(value)


@contextmanager
def plain_reads():
    """message_facts reading through Message.get/get_all, get_content_charset and the
    stdlib's decoding every time, as before the shortcuts."""
    saved = mailparse._Headers, mailparse._content_charset, mailparse.decode_text_header
    mailparse._Headers = lambda msg: msg
    mailparse._content_charset = lambda part: part.get_content_charset()
    mailparse.decode_text_header = plain_decode
    try:
        yield
    finally:
        mailparse._Headers, mailparse._content_charset, mailparse.decode_text_header = saved


def facts(raw: bytes):
    msg = email.message_from_bytes(raw, policy=mailparse._POLICY)
    return mailparse.message_facts(raw, msg, [])


def assert_same_facts(raw: bytes) -> None:
    with plain_reads():
        expected = facts(raw)
    assert facts(raw) == expected
    assert facts(raw) == expected           # the memories filled, answering again


@pytest.mark.parametrize("profile", ["4k-1", "100k-1"])
def test_bench_mail_facts_equal_the_plain_reads(profile):
    for mail in bench_corpus.build(profile, 300, seed=7):
        assert_same_facts(mail.raw)


def test_real_world_facts_equal_the_plain_reads():
    for path in sorted(DATA.rglob("*.eml")):
        assert_same_facts(path.read_bytes())


_NAMES = st.sampled_from(["From", "FROM", "To", "to", "Cc", "Subject", "subject", "Date",
                          "Message-ID", "message-id", "Content-Type", "content-type",
                          "Content-Transfer-Encoding", "X-Other"])
_VALUES = st.one_of(
    st.sampled_from(["Jan <jan@acme.cz>", "a@b.cz, c@d.cz", "=?utf-8?q?P=C5=99=C3=ADli=C5=A1?=",
                     "=?utf-8?b?w6lsw6k=?= x", "=?bogus?q?x?=", "=?utf-8?q?bad", "plain = ? text",
                     "Mon, 1 Jan 2024 10:00:00 +0100", "garbage date", "<id@x>",
                     "text/plain; charset=UTF-8", "text/plain; charset=\"iso-8859-2\"",
                     "text/plain; charset*=utf-8''%C3%A9", "text/html; charset=bogus-cs",
                     "text/plain; charset=", "quoted-printable", "base64", "8bit", ""]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=30))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=10),
       st.sampled_from([b"hello =C5=99\n", b"w6lsw6k=\n", b"\xc3\xa9 8bit\n", b""]))
def test_generated_headers_give_the_facts_of_the_plain_reads(headers, body):
    """Repeated, differently cased, missing and malformed headers; encoded, broken and plain
    subjects; charsets plain, quoted, RFC 2231, unknown."""
    raw = b"".join(f"{name}: {value}\n".encode() for name, value in headers) + b"\n" + body
    assert_same_facts(raw)


@settings(max_examples=400, deadline=None)
@given(st.text(st.sampled_from(list("=?qQbB_ a\t\u0159\udcc3:")), max_size=24))
def test_decoded_subjects_equal_the_stdlib_decoding(value):
    assert mailparse.decode_text_header(value) == plain_decode(value)
    assert mailparse.decode_text_header(value) == plain_decode(value)


def _fetch_as_before(value: str) -> str:
    """The policy's header_fetch_parse before it skipped the unfold regex for values
    without a line end (issue 16): kept as the reference."""
    if not value.isascii() and any("\udc80" <= ch <= "\udcff" for ch in value):
        value = value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    return mailparse.storable(mailparse._FOLD.sub("", value[:mailparse.MAX_HEADER]).strip())


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(["a", " ", "\t", "\r", "\n", "\r\n ", "\n\t", "\r\n", "é",
                                 "\udcc3\udca9", "\udcff", "\x00", ";", "=?utf-8?q?x?="]),
                max_size=30).map("".join))
def test_header_values_read_as_before(value):
    def outcome(read):
        try:
            return read()
        except Exception as exc:        # a real character beside surrogates: both raise
            return type(exc)
    assert outcome(lambda: mailparse._POLICY.header_fetch_parse("Subject", value)) == \
        outcome(lambda: _fetch_as_before(value))


def test_a_header_value_is_cut_before_it_is_unfolded():
    value = "x" * (mailparse.MAX_HEADER - 1) + "\r\n y"
    assert mailparse._POLICY.header_fetch_parse("Subject", value) == _fetch_as_before(value)
    assert "\n" not in _fetch_as_before(value)
