"""Issue 11 in the pure core: admin rules (every field and op, all/any, first match, config
errors, bounded regexes), tickets, threads, #NUMBER, auto-replies and the loop guard - no
database (MemoryRecords answers what is stored)."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from sink.config import ConfigError, parse_config
from sink.mail.parse import parse_message
from sink.pipeline import evaluate
from sink.pipeline.records import MemoryRecords, ThreadState, TicketState
from tests.support import make_mail

BOX = "crm@firma.cz"


def box(rules=(), **settings):
    return parse_config({"boxes": [{"address": BOX, "rules": list(rules), **settings}]}).boxes[0]


def rule(name="r", action="create_ticket", match="all", **cond):
    conds = cond.pop("conditions", None) or [cond]
    return {"name": name, "match": match, "conditions": conds, "action": action}


def run(directory, rules=(), settings=None, records=None, **mail):
    msg = parse_message(mail.pop("raw", None) or make_mail(**mail))
    return evaluate(msg, box(rules, **(settings or {})), directory, lambda keys: False,
                    records or MemoryRecords())


def entry(decision, name):
    return next(e for e in decision.trace if e.rule == name)


# ------------------------------------------------------------------------------ conditions
@pytest.mark.parametrize("field, op, value, mail, holds", [
    ("subject", "contains", "TISKÁRNA", dict(subject="Naše tiskarna nejde"), True),
    ("subject", "contains", "scanner", dict(subject="Printer down"), False),
    ("subject", "not_contains", "newsletter", dict(subject="Printer down"), True),
    ("subject", "not_contains", "printer", dict(subject="Printer down"), False),
    ("subject", "equals", "printer DOWN", dict(subject="Printer down"), True),
    ("subject", "equals", "printer", dict(subject="Printer down"), False),
    ("subject", "starts_with", "PRINTER", dict(subject="Printer down"), True),
    ("subject", "starts_with", "down", dict(subject="Printer down"), False),
    ("subject", "ends_with", "DOWN", dict(subject="Printer down"), True),
    ("subject", "ends_with", "printer", dict(subject="Printer down"), False),
    ("subject", "regex", r"ticket id: (\d+)", dict(subject="Re: Ticket Id: 42"), True),
    ("subject", "regex", r"^ticket", dict(subject="Re: Ticket Id: 42"), False),
    ("from", "ends_with", "@acme.cz", dict(sender="Jan <jan@acme.cz>"), True),
    ("from", "equals", "jan@acme.cz", dict(sender="Jan <JAN@acme.cz>"), True),
    ("from", "contains", "globex", dict(sender="jan@acme.cz"), False),
    ("to", "equals", "help@firma.cz", dict(to=("alice@firma.cz",), cc=("help@firma.cz",)),
     True),
    ("to", "starts_with", "help@", dict(to=("alice@firma.cz",)), False),
    ("body", "contains", "nefunguje", dict(body="Dobrý den,\ntiskárna NEFUNGUJE."), True),
    ("body", "regex", r"serial: ([A-Z0-9]+)", dict(body="Model X\nSerial: AB12"), True),
    ("body", "starts_with", "model", dict(body="Hello\nModel"), False),
])
def test_every_field_and_op(directory, field, op, value, mail, holds):
    decision = run(directory, [rule(field=field, op=op, value=value, action="do_nothing")],
                   **mail)
    assert (decision.verdict == "RULE_IGNORED") is holds
    assert entry(decision, "admin:r").outcome == ("hit" if holds else "pass")


def test_all_needs_every_condition_any_needs_one(directory):
    conds = [{"field": "subject", "op": "contains", "value": "printer"},
             {"field": "from", "op": "ends_with", "value": "@globex.com"}]
    mail = dict(subject="Printer down", sender="jan@acme.cz")
    assert run(directory, [rule(conditions=conds, action="do_nothing")], **mail).verdict \
        != "RULE_IGNORED"
    assert run(directory, [rule(conditions=conds, match="any", action="do_nothing")],
               **mail).verdict == "RULE_IGNORED"


def test_first_matching_rule_wins_and_later_ones_are_skipped(directory):
    rules = [rule("no-match", field="subject", op="contains", value="invoice",
                  action="do_nothing"),
             rule("spam-it", field="subject", op="contains", value="printer",
                  action="mark_spam"),
             rule("ignore-it", field="subject", op="contains", value="printer",
                  action="do_nothing")]
    decision = run(directory, rules, subject="Printer down")
    assert decision.verdict == "SPAM"
    assert [(e.rule, e.outcome) for e in decision.trace if e.rule.startswith("admin:")] == [
        ("admin:no-match", "pass"), ("admin:spam-it", "hit")]
    assert [m.email for m in decision.spam_marks] == ["jan@acme.cz"]
    # the same rules in another order: the other action
    assert run(directory, rules[::-1], subject="Printer down").verdict == "RULE_IGNORED"


def test_admin_rules_run_after_the_exception_filters(directory):
    rules = [rule(field="subject", op="contains", value="x", action="do_nothing")]
    decision = run(directory, rules, settings={"exception_addresses": ["jan@acme.cz"]},
                   subject="x")
    assert decision.verdict == "EXCEPTION_ADDRESS"
    names = [e.rule for e in run(directory, rules, subject="x").trace]
    assert names.index("admin:r") == names.index("exception-domain") + 1


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize("bad, message", [
    (rule(field="subject", op="regex", value="(unclosed"), "bad regex"),
    (rule(field="header", op="contains", value="x"), "unknown field"),
    (rule(field="subject", op="like", value="x"), "unknown op"),
    (rule(field="subject", op="contains", value="x", action="forward"), "unknown action"),
    (rule(field="subject", op="contains", value="x", match="most"), "match"),
    (rule(field="subject", op="contains", value="x", action="update_ticket"), "update_ticket"),
    ({**rule(field="subject", op="contains", value="x"), "name": "Not Kebab"}, "kebab-case"),
    ({**rule(field="subject", op="contains", value="x"), "extra": 1}, "unknown key"),
])
def test_config_errors_name_the_rule(bad, message):
    with pytest.raises(ConfigError) as error:
        box([{**bad, "name": bad["name"]}])
    assert message in str(error.value)
    assert "rules[0]" in str(error.value)
    if bad["name"] == "r":
        assert "rule r" in str(error.value)


def test_a_rule_name_is_unique_in_the_box():
    r = rule(field="subject", op="contains", value="x")
    with pytest.raises(ConfigError, match="defined twice"):
        box([r, r])


def test_owner_and_record_auto_replies_are_checked():
    assert box(owner="Carol@Firma.cz").owner == "carol@firma.cz"
    with pytest.raises(ConfigError, match="owner"):
        box(owner="nobody")
    with pytest.raises(ConfigError, match="record_auto_replies"):
        box(record_auto_replies="yes")


# ------------------------------------------------------------------------------ bounded regex
def test_a_catastrophic_regex_on_a_huge_body_does_not_stall(directory):
    rules = [rule(f"r{i}", field=field, op="regex", value=r"(x+x+)+y", action="do_nothing")
             for i, field in enumerate(("body", "subject", "to", "body"))]
    started = time.monotonic()
    decision = run(directory, rules, body="x" * 5_000_000, subject="x" * 5000,
                   to=tuple(f"{'x' * 60}{i}@acme.cz" for i in range(200)))
    assert time.monotonic() - started < 5          # the budget is 1 s, overrun a little
    assert decision.verdict != "RULE_IGNORED"
    assert "timed out" in entry(decision, "admin:r0").detail


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(subject=st.text(max_size=200), body=st.text(max_size=2000),
       value=st.text(min_size=1, max_size=20))
def test_rule_evaluation_never_raises_on_arbitrary_text(directory, subject, body, value):
    conds = [{"field": f, "op": op, "value": value}
             for f in ("from", "to", "subject", "body")
             for op in ("contains", "not_contains", "equals", "starts_with", "ends_with")]
    conds.append({"field": "body", "op": "regex", "value": r"(\w+)\s*#(\d+)"})
    raw = make_mail(subject="x", body="x").replace(b"Subject: x", b"Subject: " + subject.encode(
        "utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b" "))
    raw = raw + body.encode("utf-8", "surrogatepass")
    for match in ("all", "any"):
        decision = run(directory, [rule(conditions=conds, match=match, action="link_to")],
                       raw=raw,
                       settings={"owner": "carol@firma.cz", "support_addresses": ["h@firma.cz"]})
        assert decision.verdict is not None


# ------------------------------------------------------------------------------ tickets
SUPPORT = {"support_addresses": ["help@firma.cz"], "owner": "carol@firma.cz"}


def test_support_address_creates_a_ticket_for_the_owner(directory):
    decision = run(directory, settings=SUPPORT, to=("help@firma.cz",), subject="Printer down")
    assert decision.verdict == "PROCESSED"
    assert [t.as_json() for t in decision.tickets] == [{
        "action": "created", "number": None, "title": "Printer down", "contact": "jan@acme.cz",
        "company": "ACME", "rule": "support-address"}]
    act = decision.activities[0]
    assert act.responsible == "carol@firma.cz" and act.new_ticket and act.ticket is None


def test_without_an_owner_a_ticket_alone_is_ticket_created(directory):
    decision = run(directory, settings={"support_addresses": ["help@firma.cz"]},
                   to=("help@firma.cz",))
    assert decision.verdict == "TICKET_CREATED" and decision.activities == ()


def test_internal_sender_to_support_makes_no_ticket(directory):
    decision = run(directory, settings=SUPPORT, sender="alice@firma.cz", to=("help@firma.cz",))
    assert decision.tickets == ()


def test_bracket_number_of_an_existing_ticket_is_a_follow_up(directory):
    records = MemoryRecords(tickets={(BOX, "17"): TicketState("17", BOX, "Printer")})
    decision = run(directory, settings=SUPPORT, records=records, to=("help@firma.cz",),
                   subject="Re: [#17] Printer")
    assert [(t.action, t.number, t.rule) for t in decision.tickets] == [
        ("updated", "17", "follow-up")]
    assert decision.activities[0].ticket == "17"
    unknown = run(directory, settings=SUPPORT, records=records, to=("help@firma.cz",),
                  subject="Re: [#18] Printer")
    assert unknown.tickets[0].action == "created"


def test_a_reply_to_a_ticket_message_updates_its_ticket(directory):
    records = MemoryRecords(threads={(BOX, "<a1@acme.cz>"): ThreadState(
        5, "<a1@acme.cz>", contract="2023-015", ticket="3")})
    decision = run(directory, settings=SUPPORT, records=records, to=("help@firma.cz",),
                   subject="Re: Printer", headers={"In-Reply-To": "<a1@acme.cz>"})
    assert decision.tickets[0].action == "updated" and decision.tickets[0].number == "3"
    assert "follows #5 <a1@acme.cz>" in entry(decision, "thread").detail


@pytest.mark.parametrize("exists", [True, False])
def test_update_ticket_takes_the_first_group_or_creates(directory, exists):
    records = MemoryRecords(tickets={(BOX, "42"): TicketState("42", BOX, "x")} if exists
                            else {})
    rules = [rule("ticket-replies", field="subject", op="regex", value=r"Ticket Id: (\d+)",
                  action="update_ticket")]
    decision = run(directory, rules, settings={"owner": "carol@firma.cz"}, records=records,
                   subject="Re: Ticket Id: 42")
    ticket = decision.tickets[0]
    assert (ticket.action, ticket.number, ticket.rule) == (
        ("updated", "42", "admin:ticket-replies") if exists
        else ("created", None, "admin:ticket-replies"))


def test_automatic_mail_never_makes_a_ticket(directory):
    decision = run(directory, settings={**SUPPORT, "record_auto_replies": True},
                   to=("help@firma.cz",), subject="Automatic reply: Printer",
                   headers={"Auto-Submitted": "auto-replied"})
    assert decision.tickets == ()
    assert entry(decision, "tickets").outcome == "skip"
    bulk = run(directory, settings=SUPPORT, to=("help@firma.cz",),
               headers={"Precedence": "bulk"})
    assert bulk.tickets == () and bulk.verdict != "AUTO_REPLY"


@pytest.mark.parametrize("action, contacts", [("link_from", ["jan@acme.cz"]),
                                              ("link_to", ["eva@globex.com"])])
def test_link_from_and_link_to_record_the_mail_for_the_owner(directory, action, contacts):
    rules = [rule(field="subject", op="contains", value="quote", action=action)]
    decision = run(directory, rules, settings={"owner": "carol@firma.cz"},
                   sender="jan@acme.cz", to=("eva@globex.com",), subject="Quote")
    act = decision.activities[0]
    assert decision.verdict == "PROCESSED" and act.responsible == "carol@firma.cz"
    assert list(act.contacts) == contacts


# ------------------------------------------------------------------------------ threads
def test_a_reply_inherits_the_links_it_does_not_set(directory):
    records = MemoryRecords(threads={(BOX, "<root@x>"): ThreadState(
        9, "<root@x>", contract="2023-015", order="OBJ-77", task="T-100")})
    decision = run(directory, records=records, subject="Re: offer Order:OBJ-77",
                   headers={"References": "<other@x> <root@x>"})
    act = decision.activities[0]
    assert (act.contract, act.order, act.task) == ("2023-015", "OBJ-77", "T-100")
    own = run(directory, records=records, subject="Re: Contract:PRJ-9",
              headers={"In-Reply-To": "<root@x>"})
    assert own.activities[0].contract == "PRJ-9"


def test_hash_number_links_an_existing_task(directory):
    decision = run(directory, subject="Re: install #T-100 done")
    assert decision.activities[0].task == "T-100"
    assert run(directory, subject="Re: #T-999").activities[0].task is None


def test_unknown_type_does_not_hide_the_scope(directory):
    decision = run(directory, sender="alice@firma.cz", to=("jan@acme.cz",),
                   subject="Projekt: 2023-015 neznámý p2")
    act = decision.activities[0]
    assert (act.scope, act.type, act.contract) == ("level:2", "E-mail", "2023-015")


# ------------------------------------------------------------------------------ auto-replies
@pytest.mark.parametrize("headers, subject, auto", [
    ({"Auto-Submitted": "auto-replied"}, "Hello", True),
    ({"Auto-Submitted": "auto-generated"}, "Hello", True),
    ({"Auto-Submitted": "no"}, "Hello", False),
    ({"X-Autoreply": "yes"}, "Hello", True),
    ({"X-Autorespond": "Vacation"}, "Hello", True),
    ({"Precedence": "auto_reply"}, "Hello", True),
    ({"X-Auto-Response-Suppress": "All"}, "Automatic reply: Offer", True),
    ({"X-MS-Exchange-Inbox-Rules-Loop": "x@y.cz"}, "Abwesenheitsnotiz: Angebot", True),
    ({"X-Auto-Response-Suppress": "All"}, "Automatická odpověď: Nabídka", True),
    ({}, "Out of Office: next week", False),           # a person may write that
    ({"X-Auto-Response-Suppress": "All"}, "Meeting", False),
    ({"Precedence": "bulk"}, "Hello", False),
])
def test_auto_reply_detection(directory, headers, subject, auto):
    decision = run(directory, headers=headers, subject=subject)
    assert (decision.verdict == "AUTO_REPLY") is auto


def test_record_auto_replies_lets_them_through(directory):
    decision = run(directory, settings={"record_auto_replies": True},
                   headers={"Auto-Submitted": "auto-replied"})
    assert decision.verdict == "PROCESSED"


def test_a_delivery_report_is_never_an_auto_reply(directory):
    from tests.side_effect_mail import postfix_dsn
    raw = postfix_dsn({"gone@acme.cz": "failed"})
    raw = raw.replace(b"\r\n\r\n", b"\r\nAuto-Submitted: auto-replied\r\n\r\n", 1)
    assert run(directory, raw=raw).verdict != "AUTO_REPLY"


def test_loop_guard_from_the_21st(directory):
    records = MemoryRecords(recent={(BOX, "jan@acme.cz"): 19, (BOX, "alice@firma.cz"): 50})
    assert run(directory, settings=SUPPORT, records=records).verdict == "PROCESSED"
    records = MemoryRecords(recent={(BOX, "jan@acme.cz"): 20, (BOX, "alice@firma.cz"): 50})
    assert run(directory, settings=SUPPORT, records=records).verdict == "LOOP"
    # a plain bcc box answers nothing: no loop runs through it; employees are never a loop
    assert run(directory, records=records).verdict == "PROCESSED"
    assert run(directory, settings=SUPPORT, records=records, sender="alice@firma.cz",
               to=("jan@acme.cz",)).verdict == "PROCESSED"


def test_stored_spam_list_is_read(directory):
    records = MemoryRecords(spam={(BOX, "jan@acme.cz")})
    decision = run(directory, records=records)
    assert decision.verdict == "SPAM" and "stored" in decision.trace[-1].detail


# ------------------------------------------------------------------------------ properties
_WORDS = st.sampled_from(["printer", "down", "acme", "tiskárna", "offer", "x"])
_CONDITION = st.builds(lambda f, op, v: {"field": f, "op": op, "value": v},
                       st.sampled_from(["from", "to", "subject", "body"]),
                       st.sampled_from(["contains", "not_contains", "equals", "starts_with",
                                        "ends_with"]), _WORDS)
_RULE = st.tuples(st.lists(_CONDITION, min_size=1, max_size=3), st.sampled_from(["all", "any"]))


@settings(max_examples=80, deadline=None)
@given(rules=st.lists(_RULE, min_size=1, max_size=5),
       subject=st.lists(_WORDS, max_size=4).map(" ".join),
       body=st.lists(_WORDS, max_size=6).map(" ".join))
def test_first_match_is_the_first_rule_that_holds_alone(rules, subject, body):
    from sink.pipeline.admin import Fields, first_match
    compiled = box([rule(f"r{i}", conditions=conds, match=match, action="do_nothing")
                    for i, (conds, match) in enumerate(rules)]).rules
    fields = Fields("jan@acme.cz", ("help@firma.cz",), subject, body)
    alone = [first_match((r,), fields) is not None for r in compiled]
    found = first_match(compiled, fields)
    expected = alone.index(True) if any(alone) else None
    assert (None if found is None else compiled.index(found.rule)) == expected
    for r in compiled:       # "all" holding implies "any" holding for the same conditions
        if first_match((r,), fields) is not None and r.match == "all":
            anyway = box([rule("a", conditions=[{"field": c.field, "op": c.op,
                                                 "value": c.value} for c in r.conditions],
                               match="any", action="do_nothing")]).rules
            assert first_match(anyway, fields) is not None


def test_the_readme_example_is_a_valid_configuration():
    import tomllib
    from pathlib import Path
    text = (Path(__file__).parent.parent / "README.md").read_text("utf-8")
    block = text[text.index("Three rules for a help desk"):].split("```toml")[1].split("```")[0]
    rules = parse_config(tomllib.loads(block)).boxes[0].rules
    assert [(r.name, r.action) for r in rules] == [
        ("ticket-replies", "update_ticket"), ("newsletters", "do_nothing"),
        ("partner-orders", "link_from")]


def test_a_hostile_references_header_costs_a_bounded_lookup(directory):
    from sink.pipeline.threads import MAX_IDS, followed_ids
    asked = []

    class Counting(MemoryRecords):
        def thread(self, box, message_ids):
            asked.append(message_ids)
            return None
    refs = " ".join(f"<r{i}@x>" for i in range(20_000)) + " <" + "y" * 5000 + "@x>"
    decision = run(directory, records=Counting(),
                   headers={"References": refs, "In-Reply-To": "<parent@x>"})
    assert decision.verdict == "PROCESSED"
    assert len(asked) == 1 and len(asked[0]) == MAX_IDS and asked[0][0] == "<parent@x>"
    # then the newest ancestors the parser kept (it reads 64 KB of a header)
    assert all(i.startswith("<r") for i in asked[0][1:])
    numbers = [int(i[2:-3]) for i in asked[0][1:]]
    assert numbers == sorted(numbers, reverse=True)
    assert followed_ids(None) == ()


@given(st.text(max_size=300))
def test_subject_numbers_never_raise(subject):
    from sink.pipeline.threads import bracket_numbers, hash_numbers
    assert all(n and len(n) <= 99 for n in hash_numbers(subject))
    assert all(n.isdigit() for n in bracket_numbers(subject))
