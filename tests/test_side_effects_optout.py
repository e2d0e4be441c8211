"""Opt-out (SPEC 5 step 8, seed 000 ch. 13): subject phrases in English and Czech clear
allow_emails / allow_bulk_emails, or forbid the sender's address as do-not-send."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from sink.db import schema as t
from sink.db.directory_store import import_directory
from sink.intake import Envelope, Intake
from sink.pipeline.records import MemoryRecords
from tests.side_effect_mail import box, decide, side_effects, trace_of  # noqa: F401
from tests.support import make_mail

LMTP = Envelope("lmtp", "mta@firma.cz", ("crm@firma.cz",))
OPTED_OUT = {"email": "jan@acme.cz", "allow_emails": False, "allow_bulk_emails": False}


@pytest.mark.parametrize("subject", [
    "Please do not send me any more offers",
    "DO NOT SEND",
    "Re: Newsletter - I do not want this",
    "i DO not WANT it",
    "Nezasílat!",
    "NEZASÍLAT obchodní sdělení",
    "nezasilat prosim",
    "Nechci dostávat newsletter",
    "NECHCI",
    "nechci dostavat vase nabidky",
])
def test_opt_out_phrases_in_english_and_czech(directory, subject):
    decision = decide(directory, make_mail(sender="jan@acme.cz", subject=subject))
    assert side_effects(decision)["contact_flags"] == [OPTED_OUT]
    assert side_effects(decision)["forbidden"] == []
    # the activity is still created, completed as usual
    assert decision.verdict == "PROCESSED"
    assert [(a.responsible, a.completed) for a in decision.activities] == [
        ("alice@firma.cz", True)]


def test_company_found_by_one_of_its_addresses(directory):
    effects = side_effects(decide(directory, make_mail(sender="office@globex.com",
                                                       subject="Nechci")))
    assert effects["contact_flags"] == [{"email": "office@globex.com", "allow_emails": False,
                                         "allow_bulk_emails": False}]
    [globex] = [c.id for c in directory.companies_by_address["office@globex.com"]]
    decision = decide(directory, make_mail(sender="office@globex.com", subject="Nechci"))
    assert [(f.entity, f.entity_id) for f in decision.contact_flags] == [("company", globex)]


def test_unknown_sender_is_forbidden_as_do_not_send(directory):
    effects = side_effects(decide(directory, make_mail(sender="stranger@nowhere.cz",
                                                       subject="I do not want your mail")))
    assert effects["contact_flags"] == []
    assert effects["forbidden"] == [{"email": "stranger@nowhere.cz", "type": "do-not-send"}]


def test_a_company_domain_is_not_a_match(directory):
    # acme.cz is ACME's domain; someone@acme.cz is neither a contact nor a company address
    effects = side_effects(decide(directory, make_mail(sender="someone@acme.cz",
                                                       subject="do not send")))
    assert effects["contact_flags"] == []
    assert effects["forbidden"] == [{"email": "someone@acme.cz", "type": "do-not-send"}]


def test_only_the_flags_that_change_are_reported(directory):
    [jan] = [c.id for c in directory.contacts["jan@acme.cz"]]
    half = MemoryRecords(entity_flags={("contact", jan): {"allow_emails": False}})
    assert side_effects(decide(directory, make_mail(subject="nechci"), half))[
        "contact_flags"] == [{"email": "jan@acme.cz", "allow_bulk_emails": False}]
    done = MemoryRecords(entity_flags={("contact", jan): {"allow_emails": False,
                                                          "allow_bulk_emails": False}})
    decision = decide(directory, make_mail(subject="nechci"), done)
    assert side_effects(decision)["contact_flags"] == []
    assert side_effects(decision)["forbidden"] == []
    assert trace_of(decision, "opt-out").detail.endswith("already recorded")


def test_an_address_already_forbidden_is_not_reported_again(directory):
    records = MemoryRecords(forbidden_addresses={("stranger@nowhere.cz", "do-not-send")})
    decision = decide(directory, make_mail(sender="stranger@nowhere.cz", subject="nechci"),
                      records)
    assert side_effects(decision)["forbidden"] == []


def test_our_own_people_never_opt_themselves_out(directory):
    decision = decide(directory, make_mail(sender="alice@firma.cz", to=("jan@acme.cz",),
                                           subject="Fwd: nechci"))
    assert side_effects(decision)["forbidden"] == []
    assert side_effects(decision)["contact_flags"] == []
    assert trace_of(decision, "opt-out").outcome == "skip"


def test_a_box_can_override_the_phrases(directory):
    settings = {"keywords": {"optout_phrases": ["odhlásit"]}}
    assert side_effects(decide(directory, make_mail(subject="ODHLASIT z newsletteru"),
                               settings=settings))["contact_flags"] == [OPTED_OUT]
    assert side_effects(decide(directory, make_mail(subject="do not send"),
                               settings=settings))["contact_flags"] == []


def test_a_terminal_rule_before_step_8_prevents_the_opt_out(directory):
    decision = decide(directory, make_mail(sender="jan@acme.cz", subject="nechci"),
                      settings={"exception_addresses": ["jan@acme.cz"]})
    assert decision.verdict == "EXCEPTION_ADDRESS"
    assert side_effects(decision)["contact_flags"] == []


# --------------------------------------------------------------------------- stored rows

def test_opt_out_clears_contact_and_company_with_the_same_address(engine):
    with engine.begin() as conn:
        import_directory(conn, {"companies": [{"name": "Jan s.r.o.", "emails": ["jan@acme.cz"]}]})
    [delivery] = Intake(engine).deliver(make_mail(sender="jan@acme.cz", subject="Nezasílat"),
                                        LMTP, [box()])
    assert [f.as_json() for f in delivery.decision.contact_flags] == [OPTED_OUT, OPTED_OUT]
    with engine.connect() as conn:
        contact = conn.execute(select(t.contacts).where(t.contacts.c.email == "jan@acme.cz")).one()
        company = conn.execute(select(t.companies).where(t.companies.c.name == "Jan s.r.o.")).one()
        acme = conn.execute(select(t.companies).where(t.companies.c.name == "ACME")).one()
        audit = conn.execute(select(t.flag_changes.c.entity, t.flag_changes.c.entity_id)
                             .order_by(t.flag_changes.c.id)).all()
        activities = conn.execute(select(t.activities.c.message_id)).scalars().all()
    assert not contact.allow_emails and not contact.allow_bulk_emails
    assert not contact.non_functional
    assert not company.allow_emails and not company.allow_bulk_emails
    assert acme.allow_emails                    # jan's company by domain is not touched
    assert audit == [("contact", contact.id), ("company", company.id)]
    assert activities == [delivery.message_id]


def test_unknown_sender_is_stored_once_as_do_not_send(engine):
    intake = Intake(engine)
    first = intake.deliver(make_mail(sender="stranger@nowhere.cz", subject="nechci"), LMTP,
                           [box()])[0]
    second = intake.deliver(make_mail(sender="stranger@nowhere.cz", subject="I do not want"),
                            LMTP, [box()])[0]
    assert [f.as_json() for f in first.decision.forbidden] == [
        {"email": "stranger@nowhere.cz", "type": "do-not-send"}]
    assert second.decision.forbidden == ()
    with engine.connect() as conn:
        rows = conn.execute(select(t.forbidden_addresses.c.email, t.forbidden_addresses.c.type,
                                   t.forbidden_addresses.c.message_id)).all()
    assert rows == [("stranger@nowhere.cz", "do-not-send", first.message_id)]
