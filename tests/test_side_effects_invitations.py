"""Invitations (SPEC 5 step 8, seed 000 ch. 14): iCalendar REQUEST / CANCEL / REPLY, one
invitation per recipient user keyed by UID, SEQUENCE order whatever the arrival order, time
zones and recurrence kept."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from sink.db import schema as t
from sink.db.directory_store import load_directory
from sink.executor import apply
from sink.intake import Envelope, Intake
from sink.mail.parse import parse_message
from sink.pipeline.decision import Decision
from sink.pipeline.invitations import calendar_events, revision
from sink.pipeline.records import MemoryRecords
from tests.side_effect_mail import (box, decide, invitation_mail,  # noqa: F401
                                    side_effects, trace_of, vcalendar, vevent)

LMTP = Envelope("lmtp", "mta@firma.cz", ("crm@firma.cz",))
UID = "040000008200E00074C5B7101A82E008000000001"
RRULE = "FREQ=WEEKLY;UNTIL=20261231T090000Z;INTERVAL=1;BYDAY=TU;WKST=MO"


def request(sequence=0, dtstamp="20261101T090000Z", method="REQUEST", **event):
    return invitation_mail(vcalendar(method, vevent(sequence=sequence, dtstamp=dtstamp,
                                                    **event)),
                           method=method, subject=f"{method} {sequence} {dtstamp}")


def stored(engine, user="alice@firma.cz", uid=UID):
    with engine.connect() as conn:
        return conn.execute(select(t.invitations).join(t.users, t.users.c.id ==
                                                       t.invitations.c.user_id)
                            .where(t.users.c.email == user, t.invitations.c.uid == uid)).one()


# --------------------------------------------------------------------------- pure pipeline

def test_request_makes_one_invitation_per_recipient_user(directory):
    decision = decide(directory, invitation_mail(
        vcalendar("REQUEST", vevent()), to=("alice@firma.cz", "bob@firma.cz", "eva@globex.com")))
    assert side_effects(decision)["invitations"] == [
        {"user": "alice@firma.cz", "uid": UID, "method": "REQUEST"},
        {"user": "bob@firma.cz", "uid": UID, "method": "REQUEST"}]
    # the activity is still created
    assert decision.verdict == "PROCESSED" and len(decision.activities) == 2


@pytest.mark.parametrize("start, end, timezone, expected", [
    ("DTSTART;TZID=Central Europe Standard Time:20261110T100000",
     "DTEND;TZID=Central Europe Standard Time:20261110T110000", None,
     ("2026-11-10T10:00:00+01:00", "Central Europe Standard Time",
      "2026-11-10T11:00:00+01:00", "Central Europe Standard Time")),
    ("DTSTART;TZID=Europe/Prague:20260710T100000", "DTEND;TZID=Europe/Prague:20260710T113000",
     "", ("2026-07-10T10:00:00+02:00", "Europe/Prague", "2026-07-10T11:30:00+02:00",
          "Europe/Prague")),
    ("DTSTART;TZID=W. Europe Standard Time:20261110T100000",
     "DTEND;TZID=W. Europe Standard Time:20261110T110000", "",
     ("2026-11-10T10:00:00+01:00", "W. Europe Standard Time", "2026-11-10T11:00:00+01:00",
      "W. Europe Standard Time")),
    ("DTSTART:20261110T090000Z", "DTEND:20261110T100000Z", "",
     ("2026-11-10T09:00:00+00:00", "UTC", "2026-11-10T10:00:00+00:00", "UTC")),
    ("DTSTART;VALUE=DATE:20261110", "DTEND;VALUE=DATE:20261111", "",
     ("2026-11-10", None, "2026-11-11", None)),
    ("DTSTART:20261110T090000", "DTEND:20261110T100000", "",
     ("2026-11-10T09:00:00", None, "2026-11-10T10:00:00", None)),
], ids=["outlook-vtimezone", "iana-summer", "windows-name", "utc", "all-day", "floating"])
def test_time_zones_are_preserved(directory, start, end, timezone, expected):
    cal = vcalendar("REQUEST", vevent(start=start, end=end)) if timezone is None else \
        vcalendar("REQUEST", vevent(start=start, end=end), timezone=timezone)
    [invitation, _] = decide(directory, invitation_mail(cal)).invitations
    assert (invitation.dtstart, invitation.dtstart_tzid, invitation.dtend,
            invitation.dtend_tzid) == expected


def test_recurring_event_keeps_its_rule_and_details(directory):
    [invitation, _] = decide(directory, request(rrule=RRULE)).invitations
    assert invitation.rrule == RRULE
    assert (invitation.summary, invitation.location, invitation.organizer) == (
        "Porada k zakázce 2023-015", "Brno, Kancelář 3", "jan@acme.cz")
    assert (invitation.status, invitation.sequence) == ("CONFIRMED", 0)


def test_an_older_sequence_than_the_stored_one_is_ignored(directory):
    alice = directory.user("alice@firma.cz").id
    records = MemoryRecords(invitations={(alice, UID): revision(3, "20261101T090000Z",
                                                                 "REQUEST")})
    decision = decide(directory, request(sequence=2), records)
    assert [i.user for i in decision.invitations] == ["bob@firma.cz"]
    assert "alice@firma.cz: stored version" in trace_of(decision, "invitations").detail
    assert [i.user for i in decide(directory, request(sequence=3, dtstamp="20261102T090000Z"),
                                   records).invitations] == ["alice@firma.cz", "bob@firma.cz"]


def test_versions_order_by_sequence_then_dtstamp_and_cancel_wins_a_tie():
    assert revision(2, "20260101T000000Z", "REQUEST") > revision(1, "20270101T000000Z",
                                                                 "CANCEL")
    assert revision(10, None, "REQUEST") > revision(9, "20261101T090000Z", "REQUEST")
    assert revision(1, "20261102T000000Z", "REQUEST") > revision(1, "20261101T000000Z",
                                                                 "REQUEST")
    assert revision(1, "20261101T000000Z", "CANCEL") > revision(1, "20261101T000000Z",
                                                                "REQUEST")


def test_cancel_marks_the_invitation_cancelled(directory):
    [alice, bob] = decide(directory, request(sequence=1, method="CANCEL")).invitations
    assert (alice.method, alice.status, bob.status) == ("CANCEL", "CANCELLED", "CANCELLED")


def test_method_from_the_content_type_when_the_calendar_has_none(directory):
    raw = invitation_mail(vcalendar(None, vevent()), method="REQUEST")
    assert [i.method for i in decide(directory, raw).invitations] == ["REQUEST", "REQUEST"]
    published = invitation_mail(vcalendar("PUBLISH", vevent()), method="PUBLISH")
    assert decide(directory, published).invitations == ()


def test_inline_calendar_and_attached_ics_make_one_invitation_each(directory):
    raw = invitation_mail(vcalendar("REQUEST", vevent()), attach_ics=True)
    assert len(calendar_events(parse_message(raw).message)) == 1
    assert [i.user for i in decide(directory, raw).invitations] == ["alice@firma.cz",
                                                                    "bob@firma.cz"]


def test_cancelling_one_occurrence_does_not_cancel_the_series(directory):
    raw = invitation_mail(vcalendar("CANCEL", vevent(sequence=2,
                                                     recurrence_id="20261117T100000")),
                          method="CANCEL")
    assert decide(directory, raw).invitations == ()


def test_a_calendar_inside_a_forwarded_message_is_not_this_messages_invitation(directory):
    from email.message import EmailMessage
    outer = EmailMessage()
    outer["From"], outer["To"], outer["Subject"] = "jan@acme.cz", "alice@firma.cz", "Fwd"
    outer.set_content("see below")
    outer.add_attachment(parse_message(request()).message)
    assert decide(directory, outer.as_bytes()).invitations == ()


def test_reply_records_the_answer_for_the_organiser(directory):
    reply = invitation_mail(vcalendar("REPLY", vevent(
        organizer="alice@firma.cz", attendees=(("jan@acme.cz", "ACCEPTED"),))),
        sender="jan@acme.cz", to=("alice@firma.cz",), method="REPLY")
    [answer] = decide(directory, reply).invitations
    assert answer.as_json() == {"user": "alice@firma.cz", "uid": UID, "method": "REPLY"}
    assert answer.responses == (("jan@acme.cz", "ACCEPTED"),)


def test_reply_to_an_organiser_who_is_not_a_user_records_nothing(directory):
    reply = invitation_mail(vcalendar("REPLY", vevent(
        organizer="eva@globex.com", attendees=(("alice@firma.cz", "DECLINED"),))),
        sender="alice@firma.cz", to=("eva@globex.com",), method="REPLY")
    decision = decide(directory, reply)
    assert decision.invitations == ()
    assert "organiser is not a user" in trace_of(decision, "invitations").detail


@pytest.mark.parametrize("calendar", [
    "not a calendar at all",
    "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:x\r\nSEQUENCE:many\r\n"
    "DTSTART:2026\r\nDTSTAMP:yesterday\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
    "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:" + "u" * 600 +
    "\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
])
def test_unreadable_calendars_never_raise(directory, calendar):
    decision = decide(directory, invitation_mail(calendar))
    assert decision.verdict == "PROCESSED"
    assert all(i.uid == "x" and i.sequence == 0 and i.dtstart is None
               for i in decision.invitations)


# --------------------------------------------------------------------------- stored rows

def deliver(engine, raw):
    [delivery] = Intake(engine).deliver(raw, LMTP, [box()])
    assert delivery.status == "processed", delivery.error
    return delivery


def test_request_is_stored_per_user_with_time_zone_and_rule(engine):
    delivery = deliver(engine, request(sequence=1, rrule=RRULE))
    row = stored(engine)
    assert (row.method, row.status, row.sequence, row.dtstart, row.dtstart_tzid, row.rrule,
            row.organizer, row.message_id) == (
        "REQUEST", "CONFIRMED", 1, "2026-11-10T10:00:00+01:00", "Central Europe Standard Time",
        RRULE, "jan@acme.cz", delivery.message_id)
    assert stored(engine, "bob@firma.cz").sequence == 1


def test_updates_and_cancellations_in_order(engine):
    deliver(engine, request(sequence=0))
    update = deliver(engine, request(sequence=1, dtstamp="20261102T090000Z",
                                     start="DTSTART;TZID=Europe/Prague:20261112T140000",
                                     end="DTEND;TZID=Europe/Prague:20261112T150000"))
    assert [i.method for i in update.decision.invitations] == ["REQUEST", "REQUEST"]
    row = stored(engine)
    assert (row.sequence, row.dtstart, row.dtstart_tzid) == (1, "2026-11-12T14:00:00+01:00",
                                                             "Europe/Prague")
    deliver(engine, request(sequence=2, method="CANCEL", dtstamp="20261103T090000Z"))
    assert (stored(engine).status, stored(engine, "bob@firma.cz").method) == ("CANCELLED",
                                                                              "CANCEL")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.invitations)).scalar() == 2


def test_out_of_order_arrival_never_goes_back(engine):
    cancel = deliver(engine, request(sequence=2, method="CANCEL", dtstamp="20261103T090000Z"))
    assert stored(engine).status == "CANCELLED"            # a cancellation seen first is kept
    late_update = deliver(engine, request(sequence=1, dtstamp="20261102T090000Z"))
    late_first = deliver(engine, request(sequence=0))
    assert late_update.decision.invitations == () and late_first.decision.invitations == ()
    row = stored(engine)
    assert (row.status, row.sequence, row.method, row.message_id) == (
        "CANCELLED", 2, "CANCEL", cancel.message_id)


def test_the_write_itself_refuses_an_older_sequence(engine):
    """Even a decision made from stale state (a racing session) cannot overwrite a newer
    version: the upsert's WHERE compares revisions in the database."""
    deliver(engine, request(sequence=5, dtstamp="20261105T090000Z", summary="Newest"))
    old = decide(load_directory_for(engine), request(sequence=4, summary="Older"))
    assert len(old.invitations) == 2                      # the rule did not know
    with engine.begin() as conn:
        message_id = conn.execute(select(func.min(t.messages.c.id))).scalar()
        apply(conn, message_id, Decision("PROCESSED", invitations=list(old.invitations)),
              load_directory(conn))
    assert (stored(engine).sequence, stored(engine).summary) == (5, "Newest")


def load_directory_for(engine):
    with engine.connect() as conn:
        return load_directory(conn)


def test_racing_versions_leave_the_newest(engine):
    intake = Intake(engine)
    mails = [request(sequence=n, dtstamp=f"202611{n + 1:02d}T090000Z", summary=f"v{n}")
             for n in range(8)]
    barrier = threading.Barrier(len(mails))
    errors = []

    def worker(raw):
        barrier.wait()
        try:
            intake.deliver(raw, LMTP, [box()])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(raw,)) for raw in reversed(mails)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert (stored(engine).sequence, stored(engine).summary) == (7, "v7")
    assert (stored(engine, "bob@firma.cz").sequence) == 7


def test_reply_answers_are_stored_on_the_organisers_invitation(engine):
    def reply(partstat, sequence, dtstamp):
        return invitation_mail(vcalendar("REPLY", vevent(
            organizer="alice@firma.cz", attendees=(("jan@acme.cz", partstat),),
            sequence=sequence, dtstamp=dtstamp)), sender="jan@acme.cz", to=("alice@firma.cz",),
            method="REPLY", subject=f"{partstat}: Porada")

    accepted = deliver(engine, reply("ACCEPTED", 1, "20261102T090000Z"))
    late_tentative = deliver(engine, reply("TENTATIVE", 0, "20261101T090000Z"))
    assert [i.method for i in accepted.decision.invitations] == ["REPLY"]
    assert late_tentative.decision.invitations == ()
    with engine.connect() as conn:
        answers = conn.execute(select(t.invitation_responses.c.attendee,
                                      t.invitation_responses.c.partstat,
                                      t.invitation_responses.c.message_id)).all()
    assert answers == [("jan@acme.cz", "ACCEPTED", accepted.message_id)]
    assert stored(engine).organizer == "alice@firma.cz"
    # the organiser's own REQUEST (seen later) replaces what the reply could tell
    deliver(engine, invitation_mail(vcalendar("REQUEST", vevent(
        organizer="alice@firma.cz", sequence=1, summary="Porada (organiser)")),
        sender="alice@firma.cz", to=("jan@acme.cz", "alice@firma.cz")))
    assert (stored(engine).method, stored(engine).summary) == ("REQUEST", "Porada (organiser)")
