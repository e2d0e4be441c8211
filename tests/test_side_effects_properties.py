"""Properties (hypothesis) of the side-effect rules: arbitrary calendar text and arbitrary HTML
never make the pipeline raise (nor the executor fail to store what it decided), and a message
with no side-effect trigger yields no side-effect records."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from sqlalchemy import select

from sink.db import schema as t
from sink.intake import Envelope, Intake
from sink.mail.parse import parse_message
from sink.pipeline.bounces import FORMS
from sink.ruledata import default_list
from sink.mail.textnorm import fold
from tests.conftest import create_pg_database, drop_pg_database, postgres_available, seeded
from tests.side_effect_mail import (box, decide, invitation_mail,  # noqa: F401
                                    troubleshooting_html, troubleshooting_mail)
from tests.support import make_mail

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
SIDE_EFFECT_RULES = ("troubleshooting", "opt-out", "bounce", "invitations", "new-task")

# ------------------------------------------------------------------------------ strategies

ICAL_NAMES = ["BEGIN:VCALENDAR", "END:VCALENDAR", "BEGIN:VEVENT", "END:VEVENT",
              "BEGIN:VTIMEZONE", "END:VTIMEZONE", "BEGIN:STANDARD", "END:STANDARD",
              "BEGIN:DAYLIGHT", "END:DAYLIGHT", "METHOD:", "UID:", "SEQUENCE:", "DTSTAMP:",
              "DTSTART:", "DTSTART;TZID=", "DTSTART;VALUE=DATE:", "DTEND;TZID=", "DTEND:",
              "RRULE:", "RECURRENCE-ID:", "ORGANIZER:", "ORGANIZER;CN=x:mailto:",
              "ATTENDEE;PARTSTAT=", "ATTENDEE:mailto:", "SUMMARY:", "LOCATION:", "STATUS:",
              "TZID:", "TZOFFSETFROM:", "TZOFFSETTO:", "EXDATE:", " ", "\t", ""]
ICAL_VALUES = ["REQUEST", "CANCEL", "REPLY", "PUBLISH", "20261110T100000", "20261110T100000Z",
               "20261110", "Europe/Prague", "Central Europe Standard Time",
               "Central Europe Standard Time:20261110T100000", "FREQ=WEEKLY;BYDAY=TU",
               "FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10", "-1", "99999999999999999999", "0", "7",
               "alice@firma.cz", "mailto:alice@firma.cz", "mailto:bob@firma.cz", "ACCEPTED",
               "ACCEPTED:mailto:jan@acme.cz", "+0100", "-0230", "u" * 600, "\\,", ";", ":", ""]
ICAL_LINE = st.tuples(st.sampled_from(ICAL_NAMES),
                      st.one_of(st.sampled_from(ICAL_VALUES), st.text(max_size=30))
                      ).map("".join)
STRUCTURED_CALENDAR = st.lists(ICAL_LINE, max_size=40).map(
    lambda lines: "\r\n".join(["BEGIN:VCALENDAR", "METHOD:REQUEST", "BEGIN:VEVENT", *lines,
                               "END:VEVENT", "END:VCALENDAR"]))
# A readable event with arbitrary lines mixed in: exercises the paths that make invitations.
PROPERTY_LINE = st.tuples(
    st.sampled_from([n for n in ICAL_NAMES if n.endswith((":", "="))
                     and not n.startswith(("BEGIN", "END", "UID"))]),
    st.one_of(st.sampled_from(ICAL_VALUES), st.text(max_size=20))).map("".join)
MUTATED_EVENT = st.lists(PROPERTY_LINE, max_size=8).map(
    lambda lines: "\r\n".join(["BEGIN:VCALENDAR", "METHOD:REQUEST", "BEGIN:VEVENT",
                                "UID:event-1", *lines, "ORGANIZER:mailto:jan@acme.cz",
                                "DTSTART;TZID=Europe/Prague:20261110T100000", "END:VEVENT",
                                "END:VCALENDAR"]))
CALENDAR_TEXT = st.one_of(st.text(max_size=400), STRUCTURED_CALENDAR, MUTATED_EVENT,
                          st.lists(ICAL_LINE, max_size=30).map("\n".join))
METHOD = st.sampled_from(["REQUEST", "CANCEL", "REPLY", None])

HTML_PIECES = ["<table>", "</table>", "<tr>", "</tr>", "<td>", "</td>", "<th>", "</th>",
               "Status", "Subject", "Status:", "Contract:", " 2023-015 ", "<p>", "</p>",
               '<a href="https://ts.example/p?a=1&amp;id=', '<a href=x?id=', "4711", "abc",
               '">', "</a>", "<b>", "</b>", "<!--", "-->", "&amp;", "&#0;", "&nbsp;", "\x00",
               "<script>", "</script>", "<style>", "<", ">", '"', "'", "&", "=", "\n",
               "<tbody>", "<template>", "<svg><tr><td>", "Open"]
HTML_PIECE = st.one_of(st.sampled_from(HTML_PIECES), st.text(max_size=15))
VALID_HTML = troubleshooting_html()


def mutate(insertions) -> str:
    """The valid troubleshooting HTML with pieces inserted at arbitrary places."""
    html = VALID_HTML
    for position, piece in insertions:
        at = position % (len(html) + 1)
        html = html[:at] + piece + html[at:]
    return html


HTML = st.one_of(st.text(max_size=400),
                 st.lists(HTML_PIECE, max_size=60).map("".join),
                 st.lists(st.tuples(st.integers(0, 10 ** 6), HTML_PIECE), max_size=6).map(mutate))

ADDRESSES = ["alice@firma.cz", "bob@firma.cz", "carol@firma.cz", "jan@acme.cz",
             "eva@globex.com", "office@globex.com", "info@acme.cz", "petr@gmail.com",
             "stranger@nowhere.cz", "x@acme.cz", "alice.novak@firma-group.com"]
NEAR_MISS_WORDS = ["Re:", "Fwd:", "Task:4711", "task", "new", "New", "problem", "Problem",
                   "No.", "issue", "send", "do", "not", "want", "I", "mail", "Mail",
                   "undelivered", "Undeliverable", "delivery", "status", "úkol", "nový",
                   "nezasílá", "chci", "Details", "invitation", "Porada", ":", "-", "4711"]
SUBJECT = st.lists(st.one_of(st.sampled_from(NEAR_MISS_WORDS),
                             st.text(st.characters(blacklist_categories=("Cc", "Cs")),
                                     max_size=12)), max_size=8).map(" ".join)


def trigger_in(subject: str) -> bool:
    folded = fold(subject)
    heads = [fold(p).rstrip(":").strip() for p in default_list("new_task_prefixes")]
    return (any(fold(p) in folded for p in default_list("optout_phrases"))
            or any(folded.startswith(h) for h in heads)
            or any(folded.startswith(fold(p)) for p in default_list("troubleshooting_prefixes"))
            or any(p in folded for form in FORMS for p in form.subject))


# ------------------------------------------------------------------------------ pure

@SETTINGS
@given(calendar=CALENDAR_TEXT, method=METHOD)
def test_arbitrary_calendar_text_never_raises(directory, calendar, method):
    decision = decide(directory, invitation_mail(calendar, method=method))
    assert decision.verdict == "PROCESSED"
    for invitation in decision.invitations:
        assert invitation.method in ("REQUEST", "CANCEL", "REPLY")
        assert 0 < len(invitation.uid) <= 500 and "\x00" not in invitation.uid
        assert 0 <= invitation.sequence < 2 ** 31
        assert re.fullmatch(r"\d{10}\.\d{8}T\d{6}Z\.[01]", invitation.revision)
        assert invitation.user in ("alice@firma.cz", "bob@firma.cz") or \
            invitation.method == "REPLY"


@SETTINGS
@given(html=HTML, subject=st.sampled_from(default_list("troubleshooting_prefixes")))
def test_arbitrary_html_never_raises(directory, html, subject):
    decision = decide(directory, troubleshooting_mail(html, subject=f"{subject} 1"))
    assert decision.verdict in ("TASK_CREATED", "TASK_UPDATED", "INVALID_TASK")
    assert decision.activities == ()
    if decision.verdict == "INVALID_TASK":
        assert decision.tasks == ()
    else:
        [task] = decision.tasks
        assert task.number.isdigit() and len(task.number) <= 100
        assert task.subject and task.status and len(task.status) <= 200
        assert "\x00" not in task.subject + task.status + (task.contract or "")


@SETTINGS
@given(subject=SUBJECT, body=st.text(max_size=300), sender=st.sampled_from(ADDRESSES),
       to=st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=4, unique=True))
def test_no_trigger_means_no_side_effect_records(directory, subject, body, sender, to):
    raw = make_mail(sender=sender, to=to, subject=subject, body=body)
    assume(not trigger_in(parse_message(raw).subject))
    decision = decide(directory, raw)
    assert (decision.tasks, decision.contact_flags, decision.forbidden,
            decision.invitations) == ((), (), (), ())
    assert all(a.completed for a in decision.activities)
    assert all(e.outcome != "hit" for e in decision.trace if e.rule in SIDE_EFFECT_RULES)


# ------------------------------------------------------------------------------ stored

@pytest.fixture(scope="module")
def strict_engine(tmp_path_factory):
    """PostgreSQL when it is there (it refuses NUL characters and over-long values), else
    SQLite; one database for all examples."""
    name = f"sink_prop_{uuid.uuid4().hex[:12]}"
    pg = postgres_available()
    url = create_pg_database(name) if pg else \
        f"sqlite:///{tmp_path_factory.mktemp('prop')}/p.db"
    engine = seeded(url)
    yield engine
    engine.dispose()
    if pg:
        drop_pg_database(name)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calendar=CALENDAR_TEXT, method=METHOD, html=HTML)
def test_what_the_rules_decide_is_always_stored(strict_engine, calendar, method, html):
    intake = Intake(strict_engine)
    for raw in (invitation_mail(calendar, method=method),
                troubleshooting_mail(html, subject=f"Problem No. {uuid.uuid4().hex[:6]}")):
        [delivery] = intake.deliver(raw, Envelope("cli"), [box()])
        assert delivery.status == "processed", delivery.error
        with strict_engine.connect() as conn:
            stored = conn.execute(select(t.invitations.c.id).where(
                t.invitations.c.message_id == delivery.message_id)).all()
        assert len(stored) <= len(delivery.decision.invitations)
