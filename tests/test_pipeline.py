"""The pure rule pipeline: every step of SPEC 5 handled here (1, 3-7, 9-11), references,
linking — no sockets, no database (the directory snapshot is plain data)."""

from __future__ import annotations

import pytest

from sink.config import parse_config
from sink.mail.parse import parse_message
from sink.pipeline import RULE_NAMES, evaluate
from tests.support import make_mail


def box(**settings):
    return parse_config({"boxes": [{"address": "crm@firma.cz", **settings}]}).boxes[0]


def never_seen(keys):
    return False


def run(directory, raw=None, settings=None, seen=never_seen, **mail):
    msg = parse_message(raw if raw is not None else make_mail(**mail))
    return evaluate(msg, box(**(settings or {})), directory, seen)


def only(decision):
    assert len(decision.activities) == 1, decision.activities
    return decision.activities[0]


# ------------------------------------------------------------------------- terminal verdicts

@pytest.mark.parametrize("mail, settings, verdict", [
    (dict(sender="not-an-address"), {}, "SPAM"),
    (dict(sender=None), {}, "SPAM"),
    (dict(sender="a@b"), {}, "SPAM"),
    (dict(sender="jan@acme.cz", to=("jan@acme.cz",)), {}, "SPAM"),
    (dict(sender="bad@spam.biz"), {"spam_senders": ["BAD@spam.biz"]}, "SPAM"),
    (dict(sender="license@netgenium.com"), {"system_senders": ["license@netgenium.com"]},
     "SYSTEM_SENDER"),
    (dict(subject="Info about new order",
          body="Hello\nThis is an automatically generated e-mail.\nBye"), {},
     "INFORM_OTHER_USERS"),
    (dict(subject="Order details",
          body="This is an   automatically\ngenerated e-mail"), {}, "INFORM_OTHER_USERS"),
    (dict(subject="Service out of service: disk"), {"ignore_subjects": ["OUT OF SERVICE"]},
     "IGNORED_SUBJECT"),
    (dict(sender="vip@partner.cz"), {"exception_addresses": ["vip@partner.cz"]},
     "EXCEPTION_ADDRESS"),
    (dict(cc=("vip@partner.cz",)), {"exception_addresses": ["vip@partner.cz"]},
     "EXCEPTION_ADDRESS"),
    (dict(sender="x@law-firm.cz"), {"exception_domains": ["law-firm.cz"]}, "EXCEPTION_DOMAIN"),
    (dict(sender="petr@gmail.com"), {"block_free_mail": True}, "EXCEPTION_DOMAIN"),
])
def test_terminal_rules(directory, mail, settings, verdict):
    decision = run(directory, settings=settings, **mail)
    assert decision.verdict == verdict
    assert decision.activities == ()
    assert decision.trace[-1].outcome == "hit"


def test_inform_needs_both_subject_and_body(directory):
    assert run(directory, subject="Info about new order", body="plain").verdict == "PROCESSED"
    assert run(directory, subject="Hello",
               body="This is an automatically generated e-mail").verdict == "PROCESSED"


def test_exception_domain_needs_every_counterpart(directory):
    decision = run(directory, sender="x@law-firm.cz", cc=("jan@acme.cz",),
                   settings={"exception_domains": ["law-firm.cz"]})
    assert decision.verdict == "PROCESSED"
    # ... and the exception-domain address is never linked
    assert only(decision).contacts == ("jan@acme.cz",)


def test_free_mail_passes_without_block_free_mail(directory):
    decision = run(directory, sender="petr@gmail.com")
    assert decision.verdict == "PROCESSED"
    act = only(decision)
    assert act.contacts == ("petr@gmail.com",)
    assert act.companies == ()       # never a company by a free-mail domain


def test_duplicate_is_first_and_terminal(directory):
    decision = run(directory, seen=lambda keys: True, sender="not valid")
    assert decision.verdict == "DUPLICATE"
    assert [t.rule for t in decision.trace] == ["duplicate"]


def test_dedup_key_ignores_recipient_order_and_message_id(directory):
    from sink.pipeline.context import dedup_keys
    a = parse_message(make_mail(to=("alice@firma.cz", "bob@firma.cz"), message_id="<1@x>"))
    b = parse_message(make_mail(to=("bob@firma.cz", "alice@firma.cz"), message_id="<2@x>"))
    c = parse_message(make_mail(to=("bob@firma.cz",), message_id="<3@x>"))
    assert dedup_keys(a)[0] == dedup_keys(b)[0]
    assert dedup_keys(a)[0] != dedup_keys(c)[0]
    assert dedup_keys(a)[1] != dedup_keys(b)[1]


def test_trace_lists_every_rule_until_the_verdict(directory):
    decision = run(directory)
    assert [t.rule for t in decision.trace] == list(RULE_NAMES[:-1])  # incoming ends it
    assert all(t.outcome in ("pass", "hit", "skip") for t in decision.trace)


# ------------------------------------------------------------------------- direction

@pytest.mark.parametrize("mail, direction, responsible", [
    (dict(sender="jan@acme.cz", to=("alice@firma.cz",)), "incoming", ["alice@firma.cz"]),
    (dict(sender="alice@firma.cz", to=("jan@acme.cz",)), "outgoing", ["alice@firma.cz"]),
    # the box as a visible recipient makes it outgoing (seed 15.9.1)
    (dict(sender="jan@acme.cz", to=("alice@firma.cz", "crm@firma.cz")), "outgoing", None),
    # internal sender to exactly one internal recipient: incoming for that colleague
    (dict(sender="alice@firma.cz", to=("bob@firma.cz",)), "incoming", ["bob@firma.cz"]),
    # internal sender to two internal recipients: outgoing
    (dict(sender="alice@firma.cz", to=("bob@firma.cz", "carol@firma.cz")), "outgoing",
     ["alice@firma.cz"]),
    # one activity per recipient user, To and Cc
    (dict(sender="jan@acme.cz", to=("alice@firma.cz",), cc=("bob@firma.cz",)), "incoming",
     ["alice@firma.cz", "bob@firma.cz"]),
    # a user's alias in another domain is the same user, once
    (dict(sender="jan@acme.cz", to=("alice@firma.cz", "Alice.Novak@firma-group.com")),
     "incoming", ["alice@firma.cz"]),
])
def test_direction_and_responsible(directory, mail, direction, responsible):
    decision = run(directory, **mail)
    if responsible is None:
        assert decision.verdict == "NOT_PROCESSED"
        assert decision.direction == "outgoing"
        return
    assert decision.verdict == "PROCESSED"
    assert decision.direction == direction
    assert [a.responsible for a in decision.activities] == responsible
    assert {a.direction for a in decision.activities} == {direction}


def test_incoming_without_user_recipient_is_treated_as_outgoing(directory):
    decision = run(directory, sender="jan@acme.cz", to=("unknown@firma.cz",))
    assert decision.verdict == "NOT_PROCESSED"
    assert decision.direction == "outgoing"
    incoming = next(t for t in decision.trace if t.rule == "incoming")
    assert incoming.detail == "no recipient is a user"


def test_outgoing_from_non_user_records_nothing(directory):
    decision = run(directory, sender="ghost@firma.cz", to=("jan@acme.cz",))
    assert decision.verdict == "NOT_PROCESSED"
    assert decision.activities == ()


def test_outgoing_from_user_via_alias(directory):
    decision = run(directory, sender="alice.novak@firma-group.com", to=("jan@acme.cz",),
                   settings={"internal_domains": ["firma.cz", "firma-group.com"]})
    assert only(decision).responsible == "alice@firma.cz"
    assert decision.direction == "outgoing"


# ------------------------------------------------------------------------- references

@pytest.mark.parametrize("subject, body, contract, order, task", [
    ("Contract:2023-015", "", "2023-015", None, None),
    ("ZAKÁZKA: 2023-015", "", "2023-015", None, None),
    ("re: zakazka:2023-015", "", "2023-015", None, None),
    ("Project:prj-9", "", "PRJ-9", None, None),
    ("Projekt: PRJ-9", "", "PRJ-9", None, None),
    ("Objednávka:OBJ-77", "", None, "OBJ-77", None),
    ("order: obj-77", "", None, "OBJ-77", None),
    ("ÚKOL:T-100", "", None, None, "T-100"),
    ("task:t-100", "", None, None, "T-100"),
    ("Hello", "see Contract:2023-015 and Order:OBJ-77 thanks", "2023-015", "OBJ-77", None),
    ("Contract:999", "", None, None, None),                 # unknown number: no link
    ("Subcontract:2023-015", "", None, None, None),         # not a keyword on its own
    ("Contract : 2023-015", "", None, None, None),          # the colon follows the keyword
    ("Contract:2023-015", "Contract:PRJ-9", "2023-015", None, None),  # subject first
])
def test_reference_links(directory, subject, body, contract, order, task):
    act = only(run(directory, subject=subject, body=body or "body"))
    assert (act.contract, act.order, act.task) == (contract, order, task)


@pytest.mark.parametrize("sender, to, subject, type_, scope", [
    # type only for outgoing mail, and only an existing type (as the directory spells it)
    ("alice@firma.cz", ("jan@acme.cz",), "Contract:2023-015 documentation", "Documentation",
     "role:Sales"),
    ("jan@acme.cz", ("alice@firma.cz",), "Contract:2023-015 Documentation", "E-mail",
     "role:Sales"),
    ("alice@firma.cz", ("jan@acme.cz",), "Contract:2023-015 Meeting", "E-mail", "role:Sales"),
    ("alice@firma.cz", ("jan@acme.cz",), "Contract:2023-015 Phone Call p1", "Phone call",
     "level:1"),
    # scope: p- none, pN level N, absent: responsible user's role
    ("alice@firma.cz", ("jan@acme.cz",), "Contract:2023-015 p-", "E-mail", "none"),
    ("alice@firma.cz", ("jan@acme.cz",), "Contract:2023-015 Documentation P3", "Documentation",
     "level:3"),
    ("alice@firma.cz", ("jan@acme.cz",), "Contract:2023-015 p12", "E-mail", "role:Sales"),
    ("jan@acme.cz", ("bob@firma.cz",), "Order:OBJ-77 p-", "E-mail", "none"),
    ("jan@acme.cz", ("bob@firma.cz",), "Order:OBJ-77", "E-mail", "role:Management"),
    ("jan@acme.cz", ("dave@firma.cz",), "Hello", "E-mail", "none"),  # user without a role
])
def test_type_and_scope(directory, sender, to, subject, type_, scope):
    act = only(run(directory, sender=sender, to=to, subject=subject))
    assert (act.type, act.scope) == (type_, scope)


def test_references_in_html_only_body(directory):
    html = "<html><body><p>Dear Alice,</p><p>re <b>Zakázka:</b> 2023-015</p></body></html>"
    act = only(run(directory, body=None, html=html))
    assert act.contract == "2023-015"
    assert "Dear Alice" in act.text and "<p>" not in act.text


# ------------------------------------------------------------------------- linking, settings

def test_contacts_and_companies_linked_by_address_and_domain(directory):
    decision = run(directory, sender="jan@acme.cz", to=("alice@firma.cz",),
                   cc=("eva@globex.com", "office@globex.com", "someone@acme.cz"))
    act = decision.activities[0]
    assert act.contacts == ("jan@acme.cz", "eva@globex.com")
    assert act.companies == ("ACME", "Globex")   # ACME by domain, Globex by its address only


def test_free_mail_company_linked_by_address_only(directory):
    act = only(run(directory, sender="shop.owner@gmail.com"))
    assert act.companies == ("FreeMail Shop",)
    assert only(run(directory, sender="other@gmail.com")).companies == ()


def test_save_originals_and_incoming_as_pending(directory):
    settings = {"save_originals_from": ["jan@acme.cz"], "incoming_as_pending": True}
    act = only(run(directory, settings=settings))
    assert act.original_attached and act.due and not act.completed
    out = only(run(directory, settings=settings, sender="alice@firma.cz", to=("jan@acme.cz",)))
    assert not out.original_attached and not out.due and out.completed


def test_box_keyword_override(directory):
    settings = {"keywords": {"contract_keywords": ["Smlouva"]}}
    assert only(run(directory, settings=settings, subject="Smlouva:2023-015")).contract \
        == "2023-015"
    assert only(run(directory, settings=settings, subject="Contract:2023-015")).contract is None
    # an empty list replaces the default too: no word of it is a contract keyword then
    settings = {"keywords": {"contract_keywords": []}}
    assert only(run(directory, settings=settings, subject="Contract:2023-015")).contract is None
    assert only(run(directory, subject="Contract:2023-015")).contract == "2023-015"


def test_internal_domains_setting(directory):
    settings = {"internal_domains": ["firma.cz", "acme.cz"]}
    decision = run(directory, settings=settings, sender="jan@acme.cz",
                   to=("alice@firma.cz", "bob@firma.cz"))
    assert decision.direction == "outgoing"    # acme.cz counts as internal now
    assert decision.verdict == "NOT_PROCESSED"


def test_json_shape(directory):
    data = run(directory, subject="Contract:2023-015").as_json()
    assert set(data) == {"verdict", "direction", "activities", "tasks", "contact_flags",
                         "forbidden", "invitations", "tickets", "bounces", "trace"}
    assert set(data["activities"][0]) == {
        "responsible", "direction", "type", "scope", "contract", "order", "task", "completed",
        "due", "original_attached", "contacts", "companies", "ticket"}  # SPEC 6
    for key in ("tasks", "contact_flags", "forbidden", "invitations", "tickets"):
        assert data[key] == []


def test_contacts_company_is_linked_with_the_contact(directory):
    act = only(run(directory, sender="eva@globex.com"))
    assert act.contacts == ("eva@globex.com",) and act.companies == ("Globex",)
