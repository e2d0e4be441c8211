"""sink.mail.flatten against the stdlib BytesGenerator it stands in for: the same bytes (or the
same exception) for generated messages of every shape the generator handles differently (line
ends of every kind, 8-bit text kept as surrogates, multiparts with preamble and epilogue,
attached messages, delivery reports), for every message and attached message of the bench
corpora and tests/data, and for texts written straight through the private method it
overrides; and mime.headers_of against the stdlib's headersonly parse."""

from __future__ import annotations

import email
import email.parser
from email.generator import BytesGenerator
from email.message import Message
from email.policy import compat32
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import corpus as bench_corpus
from sink.mail import flatten as flat
from sink.mail import mime
from sink.mail import parse as mailparse
from tests import attachment_corpus
from tests.test_headerblock import header_blocks

DATA = Path(__file__).parent / "data"
POLICIES = {"crlf-lenient": mailparse._POLICY.clone(linesep="\r\n"),
            "lf-lenient": mailparse._POLICY,
            "crlf-compat32": compat32.clone(linesep="\r\n")}


def stdlib_flatten(msg: Message, policy) -> bytes:
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=policy).flatten(msg)
    return out.getvalue()


def outcome(write, msg: Message, policy):
    try:
        return write(msg, policy)
    except Exception as exc:
        return ("raises", type(exc))


def assert_same_bytes(raw: bytes) -> int:
    """Both writers agree on ``raw``'s message and every message attached to it, under every
    policy; the number of messages compared."""
    msg = email.message_from_bytes(raw, policy=mailparse._POLICY)
    compared = 0
    for node in [msg] + [p for p in msg.walk() if p is not msg]:
        for policy in POLICIES.values():
            assert outcome(flat.flatten, node, policy) == outcome(stdlib_flatten, node, policy)
        compared += 1
    return compared


_PIECES = st.sampled_from(["a", "line", " ", "=", "é", "\udcc3\udca9", "\udcff", "\r", "\n",
                           "\r\n", "\n\r", "\r\r\n", "--b", "From x", "\t"])
_TEXTS = st.lists(_PIECES, max_size=40).map("".join)


@settings(max_examples=800, deadline=None)
@given(_TEXTS, st.sampled_from(["\n", "\r\n", "\r"]))
def test_written_lines_equal_the_stdlib_generators(text, linesep):
    ours, theirs = BytesIO(), BytesIO()
    policy = compat32.clone(linesep=linesep)
    for out, cls in ((ours, flat._Generator), (theirs, BytesGenerator)):
        generator = cls(out, mangle_from_=False, policy=policy)
        generator._NL = linesep             # flatten sets it from the policy
        try:
            generator._write_lines(text)
        except UnicodeEncodeError:
            out.write(b"<raised>")
    # the stdlib raises part-way, after writing the lines before the bad one; flatten's
    # callers throw a failed write away, so only "it raised" has to agree
    if theirs.getvalue().endswith(b"<raised>"):
        assert ours.getvalue() == b"<raised>"
    else:
        assert ours.getvalue() == theirs.getvalue()


@st.composite
def messages(draw) -> bytes:
    """Mail as bytes: a leaf or a multipart with an attached message, a delivery report,
    preamble and epilogue, 8-bit bodies, mixed line ends."""
    eol = draw(st.sampled_from(["\r\n", "\n"]))

    def body() -> str:
        return draw(_TEXTS.filter(lambda t: "--b" not in t))

    def leaf(ctype: str) -> str:
        return (f"Content-Type: {ctype}{eol}Content-Transfer-Encoding: 8bit{eol}"
                f"Subject: {draw(st.sampled_from(['x', 'a very long subject ' * 6, 'é']))}"
                f"{eol}{eol}{body()}")

    kind = draw(st.sampled_from(["leaf", "multipart", "report", "attached"]))
    if kind == "leaf":
        text = leaf("text/plain; charset=utf-8")
    else:
        parts = [leaf("text/plain; charset=utf-8")]
        if kind == "report":
            parts.append(f"Content-Type: message/delivery-status{eol}{eol}"
                         f"Reporting-MTA: dns; mx{eol}{eol}Final-Recipient: rfc822; a@b{eol}"
                         f"Action: failed{eol}Status: 5.1.1{eol}")
        if kind in ("report", "attached"):
            parts.append(f"Content-Type: message/rfc822{eol}{eol}From: x@y{eol}"
                         + leaf("text/plain; charset=iso-8859-2"))
        ctype = "multipart/report; report-type=delivery-status" if kind == "report" \
            else "multipart/mixed"
        text = (f"Content-Type: {ctype}; boundary=\"b\"{eol}{eol}"
                + draw(st.sampled_from(["", "preamble" + eol]))
                + "".join(f"--b{eol}{part}{eol}" for part in parts) + f"--b--{eol}"
                + draw(st.sampled_from(["", "epilogue\r", "epi" + eol + "logue"])))
    return ("From: a@b" + eol + text).encode("utf-8", "surrogateescape")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_generated_messages_are_written_as_the_stdlib_writes_them(raw):
    assert assert_same_bytes(raw) >= 1


@pytest.mark.parametrize("profile", ["4k-1", "100k-1"])
def test_bench_corpus_is_written_as_the_stdlib_writes_it(profile):
    mails = bench_corpus.build(profile, 150, seed=31)
    compared = sum(assert_same_bytes(m.raw) for m in mails)
    assert compared > len(mails) * 1.2      # parts and attached messages, not roots only
    # the corpus holds the case this module is for: a bounce carrying its original
    assert any(b"message/rfc822" in m.raw for m in mails)


def test_real_world_mail_and_the_attachment_corpus_are_written_as_the_stdlib_writes_them():
    real = sorted(DATA.rglob("*.eml"))
    assert len(real) > 600
    for path in real:
        assert_same_bytes(path.read_bytes())
    for make in attachment_corpus.CORPUS.values():
        assert_same_bytes(make())


def test_a_payload_the_generator_cannot_encode_raises_in_both():
    msg = Message()
    msg["Content-Type"] = "text/plain"
    msg.set_payload("caf\u00e9 \u20ac\r\nline\n")        # real characters, not surrogates
    policy = POLICIES["crlf-compat32"]
    assert outcome(stdlib_flatten, msg, policy)[0] == "raises"
    assert outcome(flat.flatten, msg, policy) == outcome(stdlib_flatten, msg, policy)


def headers_state(msg: Message) -> tuple:
    return (list(msg._headers), msg._unixfrom, [(type(d), d.args) for d in msg.defects],
            str(msg.get("Subject")))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header_blocks(), st.sampled_from([b"", b"body\r\n", b"Subject: not a header\n\n",
                                          b"x" * 300 + b"\r\n", b"\r"]))
def test_headers_of_equal_the_stdlib_headersonly_parse(drawn, tail):
    data = drawn[0].encode("utf-8", "surrogateescape") + tail

    def ours():
        return headers_state(mime.headers_of(data, mailparse._POLICY))

    def theirs():
        return headers_state(email.parser.BytesHeaderParser(
            policy=mailparse._POLICY).parsebytes(data))

    results = []
    for parse in (ours, theirs):
        try:
            results.append(parse())
        except Exception as exc:
            results.append(("raises", type(exc)))
    assert results[0] == results[1]
