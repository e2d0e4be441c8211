"""Bounces (SPEC 5 step 8, seed 000 ch. 13): RFC 3464 reports as Postfix, Exchange and Gmail
send them, their plain-text forms and the seed's heuristics; pure pipeline and stored rows."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from sink.db import schema as t
from sink.intake import Envelope, Intake
from sink.mail.parse import parse_message
from sink.pipeline.bounces import body_addresses, delivery_report
from sink.pipeline.records import MemoryRecords
from tests.side_effect_mail import (box, decide, exchange_ndr, gmail_dsn,  # noqa: F401
                                    postfix_dsn, postfix_plain, seed_undeliverable,
                                    seed_undelivered, side_effects, trace_of)
from tests.support import make_mail

LMTP = Envelope("lmtp", "mta@firma.cz", ("crm@firma.cz",))
JAN_BROKEN = {"email": "jan@acme.cz", "non_functional": True}


def ids(directory, email):
    return [c.id for c in directory.contacts.get(email, ())]


# --------------------------------------------------------------------------- RFC 3464 reports

@pytest.mark.parametrize("build", [
    lambda: postfix_dsn({"jan@acme.cz": "failed"}),
    lambda: exchange_ndr(("jan@acme.cz",)),
    lambda: gmail_dsn(("jan@acme.cz",)),
], ids=["postfix", "exchange", "gmail"])
def test_delivery_report_marks_the_failed_contact_and_leaves_the_activity_open(directory, build):
    decision = decide(directory, build())
    assert side_effects(decision) == {"tasks": [], "contact_flags": [JAN_BROKEN],
                                      "forbidden": [], "invitations": []}
    assert trace_of(decision, "bounce").detail.startswith("delivery report")
    for activity in decision.activities:
        assert activity.as_json()["completed"] is False


def test_postfix_bounce_is_an_incoming_activity_that_is_not_completed(directory):
    decision = decide(directory, postfix_dsn({"jan@acme.cz": "failed"}))
    assert decision.verdict == "PROCESSED"
    assert [(a.responsible, a.as_json()["completed"]) for a in decision.activities] == [
        ("alice@firma.cz", False)]


def test_multi_recipient_report_handles_each_final_recipient(directory):
    raw = postfix_dsn({"jan@acme.cz": "failed", "office@globex.com": "failed",
                       "nobody@unknown.cz": "failed", "eva@globex.com": "delivered",
                       "petr@gmail.com": "delayed"})
    effects = side_effects(decide(directory, raw))
    # a company by one of its addresses; an unknown address is forbidden as broken; the
    # delivered and the delayed recipient are not touched
    assert effects["contact_flags"] == [JAN_BROKEN,
                                        {"email": "office@globex.com", "non_functional": True}]
    assert effects["forbidden"] == [{"email": "nobody@unknown.cz", "type": "broken"}]


def test_report_parsing_reads_every_recipient_block():
    report = delivery_report(parse_message(postfix_dsn(
        {"jan@acme.cz": "failed", "eva@globex.com": "delivered"})).message)
    assert report == (("failed", "jan@acme.cz"), ("delivered", "eva@globex.com"))
    assert delivery_report(parse_message(seed_undelivered(("jan@acme.cz",))).message) is None


@pytest.mark.parametrize("action", ["delayed", "delivered"])
def test_delayed_or_successful_report_changes_nothing(directory, action):
    decision = decide(directory, postfix_dsn({"jan@acme.cz": action, "x@nowhere.cz": action}))
    assert side_effects(decision) == {"tasks": [], "contact_flags": [], "forbidden": [],
                                      "invitations": []}
    assert trace_of(decision, "bounce").outcome == "pass"
    assert all(a.completed for a in decision.activities) and decision.activities


def test_a_failed_address_known_only_by_domain_is_not_a_company_match(directory):
    # acme.cz is ACME's domain, but x@acme.cz is none of its addresses
    effects = side_effects(decide(directory, gmail_dsn(("x@acme.cz",))))
    assert effects["contact_flags"] == []
    assert effects["forbidden"] == [{"email": "x@acme.cz", "type": "broken"}]


def test_flags_already_set_and_addresses_already_forbidden_are_not_reported_again(directory):
    [jan] = ids(directory, "jan@acme.cz")
    records = MemoryRecords(entity_flags={("contact", jan): {"non_functional": True}},
                            forbidden_addresses={("gone@nowhere.cz", "broken")})
    decision = decide(directory, postfix_dsn({"jan@acme.cz": "failed",
                                              "gone@nowhere.cz": "failed"}), records)
    assert side_effects(decision)["contact_flags"] == []
    assert side_effects(decision)["forbidden"] == []
    assert [a.completed for a in decision.activities] == [False]


# --------------------------------------------------------------------------- plain-text forms

@pytest.mark.parametrize("raw, form", [
    (postfix_plain(("jan@acme.cz",)), "undelivered-mail"),
    (postfix_plain(("jan@acme.cz",), with_report=False), "undelivered-mail"),
    (exchange_ndr(("jan@acme.cz",), report=False), "exchange"),
    (gmail_dsn(("jan@acme.cz",), report=False), "gmail"),
    (seed_undeliverable(("jan@acme.cz",)), "undeliverable-mail"),
    (seed_undelivered(("jan@acme.cz",)), "undelivered-mail"),
], ids=["postfix", "postfix-notice-only", "outlook.com", "gmail", "seed-undeliverable",
        "seed-undelivered"])
def test_plain_text_bounces_are_recognised(directory, raw, form):
    decision = decide(directory, raw)
    assert trace_of(decision, "bounce").detail.startswith(f"{form} bounce")
    assert side_effects(decision)["contact_flags"] == [JAN_BROKEN]
    assert all(not a.completed for a in decision.activities)


def test_postfix_line_break_inside_could_not_be_delivered_is_matched(directory):
    raw = postfix_plain(("jan@acme.cz",))
    assert b"could not\r\nbe delivered" in raw
    assert trace_of(decide(directory, raw), "bounce").outcome == "hit"


def test_addresses_of_the_returned_original_are_not_taken(directory):
    # the flattened Postfix bounce quotes the original (To: jan, eva; Cc: vip)
    effects = side_effects(decide(directory, postfix_plain(("nobody@unknown.cz",))))
    assert effects["contact_flags"] == []
    assert effects["forbidden"] == [{"email": "nobody@unknown.cz", "type": "broken"}]


def test_multi_recipient_plain_bounces(directory):
    effects = side_effects(decide(directory, seed_undeliverable(
        ("jan@acme.cz", "eva@globex.com", "z@nowhere.cz"))))
    assert effects["contact_flags"] == [JAN_BROKEN,
                                        {"email": "eva@globex.com", "non_functional": True}]
    assert effects["forbidden"] == [{"email": "z@nowhere.cz", "type": "broken"}]
    exchange = side_effects(decide(directory, exchange_ndr(("jan@acme.cz", "vip@partner.cz"),
                                                           report=False)))
    assert [f["email"] for f in exchange["contact_flags"]] == ["jan@acme.cz", "vip@partner.cz"]


def test_box_internal_user_and_system_addresses_in_the_body_are_excluded(directory):
    listed = ("crm@firma.cz", "bob@firma.cz", "alice.novak@firma-group.com",
              "postmaster@acme.cz", "MAILER-DAEMON@relay.partner.cz", "jan@acme.cz")
    decision = decide(directory, seed_undelivered(listed))
    assert side_effects(decision)["contact_flags"] == [JAN_BROKEN]
    assert side_effects(decision)["forbidden"] == []


@pytest.mark.parametrize("subject, body", [
    ("Undelivered Mail Returned to Sender", "Hello, this is an ordinary mail."),
    ("Re: the undelivered mail", "message could not"),
    ("Question", "Your message could not be delivered to one or more recipients: x@y.cz"),
    ("Delivery Status Notification (Delay)", "Your message wasn't delivered to x@y.cz yet"),
])
def test_near_misses_are_not_bounces(directory, subject, body):
    decision = decide(directory, make_mail(sender="jan@acme.cz", subject=subject, body=body))
    assert trace_of(decision, "bounce").outcome == "pass"
    assert side_effects(decision)["forbidden"] == [] and side_effects(decision)[
        "contact_flags"] == []
    assert all(a.completed for a in decision.activities)


def test_body_addresses_stop_at_the_returned_original():
    text = ("Delivery has failed to these recipients or groups:\n\njan@acme.cz (jan@acme.cz)\n\n"
            "Original message headers:\n\nFrom: eva@globex.com\n")
    assert body_addresses(text) == ("jan@acme.cz",)


# --------------------------------------------------------------------------- stored rows

def test_bounce_rows_are_committed_with_the_message(engine):
    intake = Intake(engine)
    raw = postfix_dsn({"jan@acme.cz": "failed", "office@globex.com": "failed",
                       "nobody@unknown.cz": "failed"})
    [delivery] = intake.deliver(raw, LMTP, [box()])
    assert delivery.status == "processed"
    with engine.connect() as conn:
        jan = conn.execute(select(t.contacts).where(t.contacts.c.email == "jan@acme.cz")).one()
        globex = conn.execute(select(t.companies).where(t.companies.c.name == "Globex")).one()
        acme = conn.execute(select(t.companies).where(t.companies.c.name == "ACME")).one()
        forbidden = conn.execute(select(t.forbidden_addresses.c.email,
                                        t.forbidden_addresses.c.type,
                                        t.forbidden_addresses.c.message_id)).all()
        changes = conn.execute(select(t.flag_changes.c.entity, t.flag_changes.c.email,
                                      t.flag_changes.c.changes, t.flag_changes.c.message_id)
                               .order_by(t.flag_changes.c.id)).all()
        activities = conn.execute(select(t.activities.c.completed)).scalars().all()
    assert jan.non_functional and jan.allow_emails          # only the bounce flag changes
    assert globex.non_functional and not acme.non_functional
    assert forbidden == [("nobody@unknown.cz", "broken", delivery.message_id)]
    assert changes == [("contact", "jan@acme.cz", {"non_functional": True}, delivery.message_id),
                       ("company", "office@globex.com", {"non_functional": True},
                        delivery.message_id)]
    assert activities == [False]


def test_a_second_bounce_for_the_same_addresses_records_nothing_new(engine):
    intake = Intake(engine)
    intake.deliver(gmail_dsn(("jan@acme.cz", "nobody@unknown.cz")), LMTP, [box()])
    [second] = intake.deliver(exchange_ndr(("jan@acme.cz", "nobody@unknown.cz")), LMTP, [box()])
    assert second.decision.contact_flags == () and second.decision.forbidden == ()
    with engine.connect() as conn:
        assert len(conn.execute(select(t.forbidden_addresses)).all()) == 1
        assert len(conn.execute(select(t.flag_changes)).all()) == 1

