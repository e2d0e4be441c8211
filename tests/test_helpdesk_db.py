"""Issue 11 against real databases (SQLite and PostgreSQL): ticket numbers and follow-ups,
also under concurrency between two sink instances, threads, the loop guard, the stored spam
list, ``spam mark`` and ``replay --reprocess``."""

from __future__ import annotations

import threading

from sqlalchemy import func, select

from sink.db import schema as t
from sink.db import spam
from sink.db.queries import message_detail
from sink.intake import Envelope, Intake
from sink.intake.reprocess import reprocess
from tests.conftest import config_for
from tests.support import make_mail

CLI = Envelope("cli", rcpt_tos=("crm@firma.cz",))
SUPPORT = dict(support_addresses=["help@firma.cz"], owner="carol@firma.cz")


def support_mail(subject="Printer down", **kwargs):
    return make_mail(to=("help@firma.cz",), subject=subject, **kwargs)


def deliver(intake, box, raw):
    return intake.deliver(raw, CLI, [box])[0]


def tickets(engine):
    with engine.connect() as conn:
        return conn.execute(select(t.tickets.c.number, t.tickets.c.title)
                            .order_by(t.tickets.c.number)).all()


def test_tickets_are_numbered_and_follow_ups_update_them(engine, db_url):
    box = config_for(db_url, **SUPPORT).boxes[0]
    intake = Intake(engine)
    first = deliver(intake, box, support_mail(message_id="<t1@acme.cz>"))
    deliver(intake, box, support_mail("Scanner down"))
    assert [tk.as_json()["number"] for tk in first.decision.tickets] == ["1"]
    assert first.decision.activities[0].ticket == "1"
    reply = deliver(intake, box, support_mail("Re: Printer down",
                                              headers={"In-Reply-To": "<t1@acme.cz>"}))
    by_number = deliver(intake, box, support_mail("Re: [#2] Scanner down"))
    assert [(x.action, x.number, x.rule) for x in reply.decision.tickets] == [
        ("updated", "1", "follow-up")]
    assert [(x.action, x.number) for x in by_number.decision.tickets] == [("updated", "2")]
    assert [r.number for r in tickets(engine)] == [1, 2]
    with engine.connect() as conn:
        detail = message_detail(conn, reply.message_id)
        history = conn.execute(select(t.ticket_messages.c.action).join(
            t.tickets, t.tickets.c.id == t.ticket_messages.c.ticket_id)
            .where(t.tickets.c.number == 1).order_by(t.ticket_messages.c.id)).scalars().all()
    assert detail["tickets"][0]["number"] == "1" and detail["activities"][0]["ticket"] == "1"
    assert any(e["rule"] == "thread" and e["outcome"] == "hit" for e in detail["trace"])
    assert history == ["created", "updated"]


def _at_once(jobs):
    barrier = threading.Barrier(len(jobs))
    errors = []

    def go(job):
        try:
            barrier.wait()
            job()
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
    threads = [threading.Thread(target=go, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


def test_two_instances_number_tickets_without_gaps_or_twins(engine, db_url):
    box = config_for(db_url, **SUPPORT).boxes[0]
    instances = [Intake(engine), Intake(engine)]
    mails = [support_mail(f"Problem {i}", sender=f"c{i}@acme.cz") for i in range(8)]
    _at_once([lambda i=i: deliver(instances[i % 2], box, mails[i]) for i in range(8)])
    assert [r.number for r in tickets(engine)] == list(range(1, 9))


def test_two_messages_of_one_new_thread_at_once_make_one_ticket(engine, db_url):
    box = config_for(db_url, **SUPPORT).boxes[0]
    instances = [Intake(engine), Intake(engine)]
    root = support_mail(message_id="<root@acme.cz>")
    reply = support_mail("Re: Printer down", headers={"References": "<root@acme.cz>"})
    results = []
    _at_once([lambda: results.append(deliver(instances[0], box, root)),
              lambda: results.append(deliver(instances[1], box, reply))])
    assert len(tickets(engine)) == 1
    assert sorted(d.decision.tickets[0].action for d in results) == ["created", "updated"]
    assert {d.decision.tickets[0].number for d in results} == {"1"}


def test_a_reply_inherits_contract_and_order_from_the_stored_message(engine, db_url):
    box = config_for(db_url).boxes[0]
    intake = Intake(engine)
    deliver(intake, box, make_mail(subject="Offer Contract:2023-015 Order:OBJ-77",
                                   message_id="<o1@acme.cz>"))
    reply = deliver(intake, box, make_mail(subject="Re: Offer",
                                           headers={"In-Reply-To": "<o1@acme.cz>"}))
    act = reply.decision.activities[0]
    assert (act.contract, act.order) == ("2023-015", "OBJ-77")
    other_box = config_for(db_url, address="other@firma.cz").boxes[0]
    elsewhere = deliver(intake, other_box, make_mail(subject="Re: Offer",
                                                     headers={"In-Reply-To": "<o1@acme.cz>"}))
    assert elsewhere.decision.activities[0].contract is None   # threads stay in their box


def test_loop_guard_from_the_21st_message(engine, db_url):
    box = config_for(db_url, **SUPPORT).boxes[0]
    intake = Intake(engine)
    verdicts = [deliver(intake, box, make_mail(subject=f"Ping {i}")).verdict for i in range(21)]
    assert verdicts[:20] == ["PROCESSED"] * 20 and verdicts[20] == "LOOP"
    assert deliver(intake, box, make_mail(sender="eva@globex.com")).verdict == "PROCESSED"


def test_stored_spam_list_and_mark_spam_rule(engine, db_url):
    rules = [{"name": "junk", "conditions": [{"field": "subject", "op": "contains",
                                              "value": "viagra"}], "action": "mark_spam"}]
    box = config_for(db_url, rules=rules).boxes[0]
    intake = Intake(engine)
    with engine.begin() as conn:
        assert spam.add(conn, box.address, ["eva@globex.com"]) == ["eva@globex.com"]
        assert spam.add(conn, box.address, ["eva@globex.com"]) == []
    assert deliver(intake, box, make_mail(sender="eva@globex.com")).verdict == "SPAM"
    assert deliver(intake, box, make_mail(subject="Cheap VIAGRA")).verdict == "SPAM"
    later = deliver(intake, box, make_mail(subject="Hello again"))
    assert later.verdict == "SPAM" and "stored spam list" in later.decision.trace[-1].detail
    with engine.begin() as conn:
        assert spam.remove(conn, box.address, ["jan@acme.cz"]) == ["jan@acme.cz"]
    assert deliver(intake, box, make_mail(subject="Hello")).verdict == "PROCESSED"


def test_spam_mark_deletes_the_ticket_and_activities_in_one_go(engine, db_url):
    box = config_for(db_url, **SUPPORT).boxes[0]
    intake = Intake(engine)
    made = deliver(intake, box, support_mail(sender="eva@globex.com"))
    kept = deliver(intake, box, support_mail("Other", sender="jan@acme.cz"))
    with engine.begin() as conn:
        result = spam.mark(conn, made.message_id)
    assert result["tickets_deleted"] == ["1"] and result["activities_deleted"] == 1
    assert [r.number for r in tickets(engine)] == [2]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.activities).where(
            t.activities.c.message_id == kept.message_id)).scalar_one() == 1
        assert spam.listed(conn, box.address)[0]["email"] == "eva@globex.com"
    assert deliver(intake, box, support_mail("New", sender="eva@globex.com")).verdict == "SPAM"


def test_reprocess_replaces_records_and_is_never_its_own_duplicate(engine, db_url):
    box = config_for(db_url, **SUPPORT).boxes[0]
    intake = Intake(engine)
    made = deliver(intake, box, support_mail())
    same = reprocess(intake, made.message_id, [box])
    assert same["before"]["verdict"] == same["after"]["verdict"] == "PROCESSED"
    assert same["after"]["tickets"][0]["action"] == "created"
    assert len(tickets(engine)) == 1
    ignoring = config_for(db_url, **SUPPORT, rules=[{
        "name": "ignore-printers", "conditions": [{"field": "subject", "op": "contains",
                                                   "value": "printer"}],
        "action": "do_nothing"}]).boxes[0]
    dry = reprocess(intake, made.message_id, [ignoring], dry_run=True)
    assert dry["after"]["verdict"] == "RULE_IGNORED" and dry["before"]["tickets"]
    assert len(tickets(engine)) == 1                       # a dry run writes nothing
    done = reprocess(intake, made.message_id, [ignoring])
    assert done["after"]["verdict"] == "RULE_IGNORED"
    assert tickets(engine) == []
    with engine.connect() as conn:
        detail = message_detail(conn, made.message_id)
    assert detail["verdict"] == "RULE_IGNORED" and detail["activities"] == []


def test_follow_ups_at_once_from_two_instances_update_one_ticket(engine, db_url):
    box = config_for(db_url, **SUPPORT).boxes[0]
    deliver(Intake(engine), box, support_mail(message_id="<f1@acme.cz>"))
    instances = [Intake(engine), Intake(engine)]
    replies = [support_mail(f"Re: Printer down {i}", headers={"In-Reply-To": "<f1@acme.cz>"})
               for i in range(4)]
    results = []
    _at_once([lambda i=i: results.append(deliver(instances[i % 2], box, replies[i]))
              for i in range(4)])
    assert {(d.decision.tickets[0].action, d.decision.tickets[0].number) for d in results} \
        == {("updated", "1")}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.ticket_messages)).scalar_one() \
            == 5
    assert len(tickets(engine)) == 1
