"""Issue 15: the calendar sync against the fake Entra ID + Graph (tests/graph_fake.py), over
real TLS with a test CA, through the real msal (a requests session) and the real httpx, on
SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from sink.db import schema as t
from tests.calendar_support import hour


def linked(cal, table, column, activity_id) -> set[str]:
    target = t.contacts if table is t.calendar_activity_contacts else t.companies
    with cal.engine.connect() as conn:
        return set(conn.execute(select(target.c.name).join(table, table.c[column] == target.c.id)
                                .where(table.c.activity_id == activity_id)).scalars())


def test_first_full_sync_of_two_users(cal):
    kickoff = cal.tenant.add_event(cal.alice, "Kickoff", hour(2), location="Praha",
                                   attendees=["jan@acme.cz", "alice@firma.cz"])
    cal.tenant.add_event(cal.alice, "Review", hour(3, 14), hours=2)
    cal.tenant.add_event(cal.alice, "Planning", hour(-3))
    cal.tenant.add_event(cal.alice, "Next year", hour(500))     # outside the 365-day window
    lunch = cal.tenant.add_event(cal.bob, "Lunch", hour(1, 12), attendees=["eva@globex.com"])

    reports = cal.run()

    assert {u: r.status for u, r in reports.items()} == {
        "alice@firma.cz": "ok", "bob@firma.cz": "ok", "carol@firma.cz": "no-mailbox",
        "dave@firma.cz": "not-in-tenant"}
    assert reports["alice@firma.cz"].full_sync and reports["alice@firma.cz"].pulled["created"] == 3
    assert [r.subject for r in cal.rows("alice@firma.cz")] == ["Planning", "Kickoff", "Review"]
    assert [r.subject for r in cal.rows("bob@firma.cz")] == ["Lunch"]
    row = cal.row(kickoff)
    assert (row.location, row.organizer, row.type_name, row.event_type, row.outlook) == (
        "Praha", "alice.novak@firma-group.com", "Meeting", "singleInstance", True)
    assert row.start.replace(tzinfo=None) == hour(2).replace(tzinfo=None)
    assert row.end.replace(tzinfo=None) == hour(2, 10).replace(tzinfo=None)
    assert {a["email"] for a in row.attendees} == {"jan@acme.cz", "alice@firma.cz"}
    # Linked as mail is: the contact and its company; the user's own address is not a party.
    assert linked(cal, t.calendar_activity_contacts, "contact_id", row.id) == {"Jan"}
    assert linked(cal, t.calendar_activity_companies, "company_id", row.id) == {"ACME"}
    assert linked(cal, t.calendar_activity_companies, "company_id", cal.row(lunch).id) == {"Globex"}
    # Three events on pages of two: the round followed @odata.nextLink.
    assert any("$skiptoken=" in p for p in cal.graph_calls("GET"))
    with cal.engine.connect() as conn:
        states = conn.execute(select(t.calendar_sync_state)).all()
    assert sum(1 for s in states if s.delta_link and "$deltatoken=" in s.delta_link) == 2

    again = cal.run()
    assert not again["alice@firma.cz"].full_sync
    assert again["alice@firma.cz"].pulled == dict.fromkeys(again["alice@firma.cz"].pulled, 0)
    assert len(cal.rows()) == 4


def test_an_outlook_edit_travels_once(cal):
    event = cal.tenant.add_event(cal.alice, "Kickoff", hour(2))
    cal.run()
    cal.tenant.edit(cal.alice, event, subject="Kickoff (room 3)", location="Room 3",
                    start=hour(2, 10), end=hour(2, 11))
    report = cal.run("alice@firma.cz")["alice@firma.cz"]
    assert report.pulled["updated"] == 1 and report.pushed == dict.fromkeys(report.pushed, 0)
    row = cal.row(event)
    assert (row.subject, row.location) == ("Kickoff (room 3)", "Room 3")
    assert row.start.replace(tzinfo=None) == hour(2, 10).replace(tzinfo=None)
    cal.run()
    cal.run()
    assert cal.graph_calls("PATCH") == [] and cal.graph_calls("POST") == []


def test_a_crm_edit_travels_once(cal):
    event = cal.tenant.add_event(cal.alice, "Kickoff", hour(2), attendees=["jan@acme.cz"])
    cal.run()
    cal.crm_edit(cal.row(event).id, subject="Kickoff, agenda sent", location="ACME office")
    report = cal.run("alice@firma.cz")["alice@firma.cz"]
    assert report.pushed["updated"] == 1 and report.conflicts == 0
    outlook = cal.tenant.events[cal.alice][event]
    assert (outlook["subject"], outlook["location"]["displayName"]) == (
        "Kickoff, agenda sent", "ACME office")
    assert outlook["attendees"][0]["emailAddress"]["address"] == "jan@acme.cz"
    # Our own edit comes back in the next delta round with the change key we stored: skipped,
    # and nothing is sent again.
    for _ in range(2):
        report = cal.run("alice@firma.cz")["alice@firma.cz"]
        assert report.pulled["updated"] == 0 and report.pushed["updated"] == 0
    assert len(cal.graph_calls("PATCH")) == 1
    assert cal.row(event).change_key == outlook["changeKey"]


def test_a_crm_activity_marked_for_the_calendar_becomes_one_event(cal):
    activity = cal.crm_create("bob@firma.cz", "Demo at Globex", hour(4, 13),
                              attendees=[{"email": "eva@globex.com", "name": "Eva"}])
    bob = cal.user_id("bob@firma.cz")
    with cal.engine.begin() as conn:      # not marked: stays in the CRM only
        conn.execute(insert(t.calendar_activities).values(
            user_id=bob, outlook=False, crm_deleted=False,
            type_name="Meeting", subject="Private note", start=hour(5), attendees=[],
            event_type="singleInstance", cancelled=False, all_day=False))
    report = cal.run("bob@firma.cz")["bob@firma.cz"]
    assert report.pushed["created"] == 1
    events = list(cal.tenant.events[cal.bob].values())
    assert [e["subject"] for e in events] == ["Demo at Globex"]
    assert events[0]["transactionId"] == f"crm-sink-{activity}"
    for _ in range(2):
        cal.run("bob@firma.cz")
    assert len(cal.graph_calls("POST")) == 1
    rows = [r for r in cal.rows("bob@firma.cz") if r.outlook]
    assert [(r.id, r.graph_id, r.ical_uid) for r in rows] == [
        (activity, events[0]["id"], events[0]["iCalUId"])]


@pytest.mark.parametrize("later", ["crm", "outlook"])
def test_a_conflict_goes_to_the_later_change_and_the_trace_says_so(cal, later):
    event = cal.tenant.add_event(cal.alice, "Kickoff", hour(2))
    cal.run()
    base = hour(0, 8)
    crm_time, outlook_time = (base + timedelta(hours=1), base) if later == "crm" \
        else (base, base + timedelta(hours=1))
    cal.crm_edit(cal.row(event).id, crm_time, subject="CRM title")
    cal.tenant.edit(cal.alice, event, modified=outlook_time, subject="Outlook title")

    report = cal.run("alice@firma.cz")["alice@firma.cz"]

    winner = "CRM title" if later == "crm" else "Outlook title"
    assert report.conflicts == 1
    assert cal.row(event).subject == winner
    assert cal.tenant.events[cal.alice][event]["subject"] == winner
    [entry] = cal.trace("conflict")
    assert entry.detail.startswith(f"{later} wins") and entry.graph_id == event
    # Settled: the next passes move nothing either way.
    patches = len(cal.graph_calls("PATCH"))
    again = cal.run("alice@firma.cz")["alice@firma.cz"]
    assert again.conflicts == 0 and len(cal.graph_calls("PATCH")) == patches
    assert cal.row(event).subject == winner


def test_a_series_with_an_exception_and_a_cancelled_occurrence(cal):
    master, instances = cal.tenant.add_series(cal.alice, "Weekly sync", hour(7), 4,
                                              attendees=["jan@acme.cz"])
    cal.tenant.edit(cal.alice, instances[1], subject="Weekly sync (moved)",
                    start=hour(14, 15), end=hour(14, 16))
    cal.run()

    rows = cal.rows("alice@firma.cz")
    [series] = [r for r in rows if r.event_type == "seriesMaster"]
    assert series.graph_id == master
    assert series.recurrence["pattern"]["type"] == "weekly"
    assert series.recurrence["range"]["numberOfOccurrences"] == 4
    instances_rows = [r for r in rows if r.series_master_id == master]
    assert [r.event_type for r in instances_rows] == ["occurrence", "exception", "occurrence",
                                                       "occurrence"]
    assert len({r.start for r in instances_rows}) == 4     # not collapsed to the first date
    assert {r.ical_uid for r in rows} == {series.ical_uid}

    cal.tenant.remove(cal.alice, instances[2])            # one occurrence cancelled in Outlook
    report = cal.run("alice@firma.cz")["alice@firma.cz"]
    assert report.pulled["cancelled"] == 1
    cancelled = cal.row(instances[2])
    assert cancelled.cancelled and cancelled.series_master_id == master
    assert [e.action for e in cal.trace("cancelled-in-outlook")] == ["cancelled-in-outlook"]

    cal.crm_edit(cal.row(instances[3]).id, cancelled=True)  # and one cancelled in the CRM
    report = cal.run("alice@firma.cz")["alice@firma.cz"]
    assert report.pushed["deleted"] == 1
    assert instances[3] not in cal.tenant.events[cal.alice]
    assert cal.row(instances[3]).cancelled
    assert cal.run("alice@firma.cz")["alice@firma.cz"].pulled["cancelled"] == 0

    cal.tenant.remove(cal.alice, master)                  # the whole series deleted
    cal.run("alice@firma.cz")
    assert cal.rows("alice@firma.cz") == []


def test_an_occurrence_cancelled_before_the_first_sync_is_a_cancelled_row(cal):
    """The calendar view never lists a cancelled occurrence: only the master's
    cancelledOccurrences names it. It becomes a row once, however often the master is read,
    and an occurrence cancelled after the first sync is not doubled by it."""
    master, instances = cal.tenant.add_series(cal.alice, "Weekly sync", hour(7), 4,
                                              attendees=["jan@acme.cz"])
    gone_start = cal.tenant.events[cal.alice][instances[1]]["originalStart"]
    cal.tenant.remove(cal.alice, instances[1])            # before the sink ever saw it
    report = cal.run("alice@firma.cz")["alice@firma.cz"]
    assert report.pulled["cancelled"] == 1
    assert any("cancelledOccurrences" in p for p in cal.graph_calls("GET"))
    rows = [r for r in cal.rows("alice@firma.cz") if r.series_master_id == master]
    assert len(rows) == 4
    [before] = [r for r in rows if r.cancelled]
    assert before.graph_id is None and before.event_type == "occurrence"
    assert before.start.replace(tzinfo=None) == hour(14).replace(tzinfo=None)
    assert before.original_start.replace(tzinfo=None).isoformat() == gone_start[:19]
    assert (before.end - before.start) == timedelta(hours=1)
    assert before.subject == "Weekly sync" and before.outlook
    assert linked(cal, t.calendar_activity_contacts, "contact_id", before.id) == {"Jan"}
    assert [e.detail for e in cal.trace("cancelled-in-outlook")] == [
        f"cancelled before it was synchronised: {hour(14).date()}"]

    cal.tenant.remove(cal.alice, instances[2])            # after: its @removed marks it
    report = cal.run("alice@firma.cz")["alice@firma.cz"]
    assert report.pulled["cancelled"] == 1 and report.pushed == dict.fromkeys(report.pushed, 0)
    cal.tenant.expire_delta_tokens()                      # a full round reads the master again
    report = cal.run("alice@firma.cz")["alice@firma.cz"]
    assert report.full_sync and report.pulled["cancelled"] == 0
    rows = [r for r in cal.rows("alice@firma.cz") if r.series_master_id == master]
    assert len(rows) == 4 and sum(r.cancelled for r in rows) == 2
    cal.crm_edit(before.id, cancelled=False)              # Graph cannot restore it
    cal.run("alice@firma.cz")
    assert [r.cancelled for r in cal.rows("alice@firma.cz") if r.id == before.id] == [True]
    assert [e.detail for e in cal.trace("refused-by-outlook")] == [
        "a cancelled occurrence cannot be restored"]
    assert not cal.graph_calls("POST")                    # nothing sent back to Outlook


def test_a_deletion_on_each_side(cal):
    kept = cal.tenant.add_event(cal.alice, "Kept", hour(1))
    in_outlook = cal.tenant.add_event(cal.alice, "Deleted in Outlook", hour(2))
    in_crm = cal.tenant.add_event(cal.alice, "Deleted in the CRM", hour(3))
    cal.run()
    cal.tenant.remove(cal.alice, in_outlook)
    cal.crm_edit(cal.row(in_crm).id, crm_deleted=True)

    report = cal.run("alice@firma.cz")["alice@firma.cz"]

    assert report.pulled["deleted"] == 1 and report.pushed["deleted"] == 1
    assert [r.subject for r in cal.rows("alice@firma.cz")] == ["Kept"]
    assert list(cal.tenant.events[cal.alice]) == [kept]
    assert [e.graph_id for e in cal.trace("deleted-in-outlook")] == [in_outlook]
    again = cal.run("alice@firma.cz")["alice@firma.cz"]     # the @removed of ours: a no-op
    assert again.pulled["deleted"] == 0 and len(cal.rows("alice@firma.cz")) == 1


def test_a_429_storm_is_waited_out_as_retry_after_says(cal):
    cal.tenant.add_event(cal.alice, "Kickoff", hour(2))
    cal.tenant.add_event(cal.bob, "Lunch", hour(1))
    cal.fake.throttle_next, cal.fake.retry_after = 5, "7"
    reports = cal.run()
    assert reports["alice@firma.cz"].status == reports["bob@firma.cz"].status == "ok"
    assert cal.sleeps == [7.0] * 5
    cal.fake.throttle_status, cal.fake.throttle_next, cal.fake.retry_after = 503, 2, "2"
    cal.tenant.add_event(cal.bob, "Coffee", hour(1, 15))
    assert cal.run("bob@firma.cz")["bob@firma.cz"].status == "ok"
    assert cal.sleeps[5:] == [2.0, 2.0]
    assert len(cal.rows()) == 3


def test_a_storm_longer_than_a_pass_allows_fails_one_user_not_the_others(cal):
    cal.tenant.add_event(cal.alice, "Kickoff", hour(2))
    cal.tenant.add_event(cal.bob, "Lunch", hour(1))
    cal.fake.throttle_next, cal.fake.retry_after = 7, "500"     # > max_retries; capped wait
    reports = cal.run()
    assert reports["alice@firma.cz"].status == "failed"
    assert "429" in reports["alice@firma.cz"].error
    assert reports["bob@firma.cz"].status == "ok"
    assert cal.sleeps == [120.0] * 6
    assert cal.run()["alice@firma.cz"].status == "ok"
    assert [r.subject for r in cal.rows()] == ["Lunch", "Kickoff"]


def test_410_means_a_full_resync_without_duplicates(cal):
    first = cal.tenant.add_event(cal.alice, "First", hour(1))
    gone = cal.tenant.add_event(cal.alice, "Gone", hour(2))
    master, _ = cal.tenant.add_series(cal.alice, "Series", hour(3), 3)
    cal.run()
    before = {r.graph_id: r.id for r in cal.rows("alice@firma.cz")}
    cal.tenant.expire_delta_tokens()
    cal.tenant.remove(cal.alice, gone)
    new = cal.tenant.add_event(cal.alice, "New", hour(4))
    cal.tenant.edit(cal.alice, first, subject="First (edited)")

    report = cal.run("alice@firma.cz")["alice@firma.cz"]

    assert report.status == "ok" and report.full_sync
    assert [e.detail for e in cal.trace("resync")] == ["delta token expired (410)"]
    after = {r.graph_id: r.id for r in cal.rows("alice@firma.cz")}
    expected = set(cal.tenant.events[cal.alice])
    assert set(after) == expected and new in after and gone not in after
    assert all(after[g] == before[g] for g in after if g in before)   # same rows, not copies
    assert cal.row(first).subject == "First (edited)"
    assert cal.row(master).event_type == "seriesMaster"


def test_an_invitation_from_mail_and_its_graph_event_are_one_thing(cal):
    uid = "040000008200E00074C5B7101A82E00800000000D0F6"
    alice = cal.user_id("alice@firma.cz")
    with cal.engine.begin() as conn:
        invitation = conn.execute(insert(t.invitations).values(
            user_id=alice, uid=uid, method="REQUEST", status="CONFIRMED",
            sequence=0, revision="0000", summary="Partner meeting", location="",
            organizer="jan@acme.cz")).inserted_primary_key[0]
    event = cal.tenant.add_event(cal.alice, "Partner meeting", hour(5), iCalUId=uid,
                                 organizer={"emailAddress": {"name": "Jan",
                                                             "address": "jan@acme.cz"}})
    cal.run()
    [row] = cal.rows("alice@firma.cz")
    assert (row.graph_id, row.invitation_id, row.organizer) == (event, invitation, "jan@acme.cz")
    assert linked(cal, t.calendar_activity_contacts, "contact_id", row.id) == {"Jan"}


def test_an_invitation_recorded_after_its_event_was_synced_is_linked_too(cal):
    event = cal.tenant.add_event(cal.alice, "Partner meeting", hour(5))
    cal.run()
    alice, bob, uid = cal.user_id("alice@firma.cz"), cal.user_id("bob@firma.cz"), \
        cal.row(event).ical_uid
    with cal.engine.begin() as conn:
        invitation = conn.execute(insert(t.invitations).values(
            user_id=alice, uid=uid, method="REQUEST", status="CONFIRMED", sequence=0,
            revision="0000", summary="Partner meeting", location="")).inserted_primary_key[0]
        conn.execute(insert(t.invitations).values(       # Bob's invitation: not Alice's row
            user_id=bob, uid=uid,
            method="REQUEST", status="CONFIRMED", sequence=0, revision="0000"))
    cal.run()
    assert cal.row(event).invitation_id == invitation


def test_a_pass_in_progress_for_a_user_makes_another_skip_it(cal):
    from sink.calendar.store import user_lock
    cal.tenant.add_event(cal.alice, "Kickoff", hour(2))
    with user_lock(cal.engine, cal.user_id("alice@firma.cz")) as mine:
        assert mine
        reports = cal.run()
    assert reports["alice@firma.cz"].status == "busy" and reports["bob@firma.cz"].status == "ok"
    assert cal.rows("alice@firma.cz") == []
    assert cal.run()["alice@firma.cz"].status == "ok"


def test_a_series_the_crm_creates_arrives_as_a_series_and_its_instances_come_back(cal):
    recurrence = {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
                  "range": {"type": "numbered", "startDate": hour(7).date().isoformat(),
                            "numberOfOccurrences": 3}}
    activity = cal.crm_create("bob@firma.cz", "Weekly call", hour(7), event_type="seriesMaster",
                              recurrence=recurrence)
    cal.run("bob@firma.cz")
    [master] = [e for e in cal.tenant.events[cal.bob].values() if e["type"] == "seriesMaster"]
    assert master["recurrence"] == recurrence
    cal.run("bob@firma.cz")
    rows = cal.rows("bob@firma.cz")
    assert [r.id for r in rows if r.event_type == "seriesMaster"] == [activity]
    assert sorted(r.event_type for r in rows if r.series_master_id == master["id"]) == [
        "occurrence"] * 3
    assert len(cal.graph_calls("POST")) == 1 and cal.graph_calls("PATCH") == []


def test_an_outlook_edit_later_than_a_crm_deletion_keeps_the_event(cal):
    event = cal.tenant.add_event(cal.alice, "Kickoff", hour(2))
    cal.run()
    base = hour(0, 8)
    cal.crm_edit(cal.row(event).id, base, crm_deleted=True)
    cal.tenant.edit(cal.alice, event, modified=base.replace(hour=9), subject="Kickoff, moved")
    report = cal.run("alice@firma.cz")["alice@firma.cz"]
    assert report.conflicts == 1 and report.pushed["deleted"] == 0
    row = cal.row(event)
    assert (row.subject, row.crm_deleted) == ("Kickoff, moved", False)
    assert event in cal.tenant.events[cal.alice]


def test_an_activity_outlook_refuses_is_traced_and_stops_neither_the_user_nor_others(cal):
    from datetime import datetime, timezone
    bad = cal.crm_create("bob@firma.cz", "No end", hour(2))
    with cal.engine.begin() as conn:      # Graph refuses an event without a usable start
        conn.execute(t.calendar_activities.update().where(t.calendar_activities.c.id == bad)
                     .values(start=datetime(1, 1, 1, tzinfo=timezone.utc)))
    cal.fake.tenant.create = (lambda original: lambda user, body: (
        (400, {}, {"error": {"code": "ErrorInvalidRequest", "message": "bad start"}})
        if body["start"]["dateTime"].startswith("0001") else original(user, body)))(
        cal.fake.tenant.create)
    cal.crm_create("bob@firma.cz", "Fine", hour(3))
    report = cal.run("bob@firma.cz")["bob@firma.cz"]
    assert report.status == "ok" and report.pushed["created"] == 1
    assert [e.activity_id for e in cal.trace("refused-by-outlook")] == [bad]
    assert [e["subject"] for e in cal.tenant.events[cal.bob].values()] == ["Fine"]
    cal.run("bob@firma.cz")                        # not retried until the CRM edits it
    assert len(cal.trace("refused-by-outlook")) == 1


def test_events_get_the_configured_activity_type(cal):
    import dataclasses
    cal.syncer.config = dataclasses.replace(cal.syncer.config, activity_type="Phone call")
    event = cal.tenant.add_event(cal.bob, "Call Eva", hour(1), attendees=["eva@globex.com"])
    cal.run("bob@firma.cz")
    with cal.engine.connect() as conn:
        phone = conn.execute(select(t.activity_types.c.id)
                             .where(t.activity_types.c.name == "Phone call")).scalar()
    row = cal.row(event)
    assert (row.type_name, row.type_id) == ("Phone call", phone) and phone is not None


def test_hostile_event_text_is_stored_not_a_failed_pass(cal):
    event = cal.tenant.add_event(cal.alice, "Q\x00uarterly\x1b[31m review", hour(2),
                                 location="Room\x00 7", attendees=["j\x00an@acme.cz"])
    cal.tenant.events[cal.alice][event]["attendees"].append({"emailAddress": "junk"})
    report = cal.run("alice@firma.cz")["alice@firma.cz"]
    assert report.status == "ok"
    row = cal.row(event)
    assert (row.subject, row.location) == ("Quarterly\x1b[31m review", "Room 7")
    assert [a["email"] for a in row.attendees] == ["jan@acme.cz"]
