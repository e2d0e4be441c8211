"""Properties (hypothesis) of bounce reading (issue 12): arbitrary text and arbitrary delivery
report structures never make the pipeline raise, and never flag an internal address, a user's,
the box's own or the reporting system's."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from sink.mail.textnorm import domain_of
from sink.pipeline.bounce_kind import classify
from sink.pipeline.bounce_report import find_status, read_report
from sink.mail.parse import parse_message
from sink.pipeline.bounce_text import SUBJECTS
from tests.bounce_corpus import flagged
from tests.side_effect_mail import BOX, DATE, crlf, decide

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

OURS = ("crm@firma.cz", "alice@firma.cz", "bob@firma.cz", "alice.novak@firma-group.com",
        "postmaster@firma.cz", "mailer-daemon@mx.firma.cz")
OUTSIDE = ("jan@acme.cz", "nobody@unknown.cz", "x@y.example")
ADDRESS = st.sampled_from(OURS + OUTSIDE + ("MAILER-DAEMON@relay.acme.cz", "postmaster@acme.cz"))
WORDS = st.sampled_from([
    "550", "5.1.1", "4.2.2", "5.7.1", "#5.1.1", "User unknown", "Mailbox full", "spamhaus",
    "No such user", "null MX", "try again later", "Final-Recipient: rfc822;", "Action: failed",
    "Status: 5.1.1", "Diagnostic-Code: smtp;", "-- Original message --", "Return-Path: <>",
    "Received: from x", "<", ">", ":", ";", "\n", "\n\n", " ", "\t", "=?utf-8?q?x?=",
    "could not be delivered", "permanent error", "failed", "Benutzer unbekannt"])
TEXT = st.lists(st.one_of(WORDS, ADDRESS, st.text(max_size=20)), max_size=60).map(" ".join)
SENDER = st.sampled_from(["MAILER-DAEMON", "<>", None, "MAILER-DAEMON@mx.firma.cz",
                          "postmaster@acme.cz", "jan@acme.cz", "alice@firma.cz", BOX])
SUBJECT = st.one_of(st.sampled_from(SUBJECTS + ("Undelivered Mail Returned to Sender",
                                                "failure notice", "Hello")),
                    st.text(max_size=40))
FIELD = st.sampled_from(["Final-Recipient", "Original-Recipient", "Action", "Status",
                         "Diagnostic-Code", "Remote-MTA", "Reporting-MTA", "X-Junk"])
VALUE = st.one_of(ADDRESS.map(lambda a: f"rfc822; {a}"), ADDRESS, WORDS, st.text(max_size=30),
                  st.sampled_from(["failed", "delayed", "delivered", "FAILED", "5.1.1", "4.4.7",
                                   "2.0.0", "5.7.1", "smtp; 550 5.1.1 User unknown", ""]))
BLOCK = st.lists(st.tuples(FIELD, VALUE), max_size=8).map(
    lambda fields: "\n".join(f"{n}: {v}".replace("\r", " ") for n, v in fields))
STATUS_BODY = st.lists(BLOCK, max_size=6).map("\n\n".join)
CONTENT_TYPE = st.sampled_from(["message/delivery-status", "text/plain",
                                "message/global-delivery-status", "application/octet-stream"])


def _header(name: str, value: str | None) -> str:
    return "" if value is None else f"{name}: {' '.join(value.split()) or 'x'}\n"


def report(sender, subject, notice, status_type, status_body) -> bytes:
    return crlf(f"""{_header("From", sender)}To: alice@firma.cz
{_header("Subject", subject)}Date: {DATE}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="=B="

--=B=
Content-Type: text/plain; charset=utf-8

{notice}
--=B=
Content-Type: {status_type}

{status_body}
--=B=--
""")


def plain(sender, subject, notice) -> bytes:
    return crlf(f"""{_header("From", sender)}To: alice@firma.cz
{_header("Subject", subject)}Date: {DATE}
Content-Type: text/plain; charset=utf-8

{notice}
""")


def never_ours(directory, raw: bytes) -> None:
    decision = decide(directory, raw)
    for address in flagged(decision) | {b.email for b in decision.bounces}:
        assert address not in OURS and domain_of(address) != "firma.cz", address
        assert directory.user(address) is None, address
        assert address.partition("@")[0] not in ("postmaster", "mailer-daemon"), address


@SETTINGS
@given(sender=SENDER, subject=SUBJECT, notice=TEXT, status_type=CONTENT_TYPE,
       status_body=STATUS_BODY)
def test_arbitrary_delivery_reports_never_raise_nor_flag_ours(directory, sender, subject, notice,
                                                               status_type, status_body):
    never_ours(directory, report(sender, subject, notice, status_type, status_body))


@SETTINGS
@given(sender=SENDER, subject=SUBJECT, notice=TEXT)
def test_arbitrary_plain_text_never_raises_nor_flags_ours(directory, sender, subject, notice):
    never_ours(directory, plain(sender, subject, notice))


@SETTINGS
@given(raw=st.binary(max_size=2000))
def test_arbitrary_bytes_are_read_without_raising(raw):
    read_report(parse_message(raw))


@settings(max_examples=300, deadline=None)
@given(status=st.one_of(st.none(), st.text(max_size=12)), text=st.text(max_size=300),
       default=st.sampled_from(["hard", "soft", None]))
def test_classify_is_total_and_answers_a_kind(status, text, default):
    kind, _ = classify(status, text, default)
    assert kind in ("hard", "soft") or (kind is None and default is None)
    found = find_status(text)
    assert found is None or found[0] in "245"


def test_a_huge_hostile_report_is_read_in_bounded_time(directory):
    # 1000 recipients, each listed many times in a 0.8 MB notice: reading is linear in the
    # notice (the quadratic first version took minutes here), and at most 1000 are taken
    import time
    blocks = "\n\n".join(f"Final-Recipient: rfc822; u{i}@x{i}.example\nAction: failed\n"
                         f"Status: 5.0.0" for i in range(1500))
    notice = "\n".join(f"<u{i % 1000}@x{i % 1000}.example>: said nothing" for i in range(20000))
    raw = report("MAILER-DAEMON", "Undelivered Mail Returned to Sender", notice,
                 "message/delivery-status", "Reporting-MTA: dns; x\n\n" + blocks)
    started = time.perf_counter()
    decision = decide(directory, raw)
    assert time.perf_counter() - started < 20
    assert 0 < len(decision.bounces) <= 1000
