"""Tasks made from mail: troubleshooting mails (SPEC 5 step 2, seed 000 15.2) and "New task:"
subjects (SPEC 5 step 8, seed 000 15.6)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from sink.db import schema as t
from sink.db.directory_store import import_directory
from sink.intake import Envelope, Intake
from sink.pipeline.records import MemoryRecords, TaskState
from sink.pipeline.troubleshooting import read_problem
from tests.side_effect_mail import (box, decide, side_effects,  # noqa: F401
                                    trace_of, troubleshooting_mail)
from tests.support import make_mail

LMTP = Envelope("lmtp", "mta@firma.cz", ("crm@firma.cz",))
CREATED_4711 = {"action": "created", "number": "4711", "subject": "Printer & toner",
                "status": "Open", "solvers": [], "approver": None}


# --------------------------------------------------------------------------- troubleshooting

@pytest.mark.parametrize("subject", [
    "Problem No. 4711", "Description Problem No. 4711: printer", "Commentary Problem No. 4711",
    "Status Problem No. 4711", "New Issue No. 4711", "PROBLEM NO. 4711", "problem no.4711",
])
def test_troubleshooting_mail_creates_the_task(directory, subject):
    decision = decide(directory, troubleshooting_mail(subject=subject))
    assert decision.verdict == "TASK_CREATED"
    assert side_effects(decision)["tasks"] == [CREATED_4711]
    assert decision.activities == ()              # terminal: no activity
    assert [e.rule for e in decision.trace] == ["duplicate", "troubleshooting"]


def test_existing_problem_is_updated(directory):
    records = MemoryRecords(tasks={"4711": TaskState("4711", "Printer", "Open")})
    decision = decide(directory, troubleshooting_mail(status="Closed"), records)
    assert decision.verdict == "TASK_UPDATED"
    assert side_effects(decision)["tasks"] == [{**CREATED_4711, "action": "updated",
                                                "status": "Closed"}]


HTML_VARIANTS = {
    "attribute order, single quotes, uppercase tags": """
        <P>Contract: 2023-015</P>
        <A target='_blank' class="btn" HREF='https://ts.example/p.aspx?x=1&amp;id=4711'>open</A>
        <TABLE><TR><TD>Subject</TD><TD>Printer &amp; toner</TD></TR>
        <TR><TD>Status</TD><TD>Open</TD></TR></TABLE>""",
    "nested tags and th cells with colons": """
        <div><span>Contract:</span> <b>2023-015</b></div>
        <p><a href="https://ts.example/p.aspx?a=b&amp;id=4711"><img src="x.png"> link</a></p>
        <table><tbody>
          <tr><th><font color="red"><b>Subject:</b></font></th>
              <td><div><span>Printer</span> &amp; <i>toner</i></div></td></tr>
          <tr><th>Status:</th><td><p><strong>Open</strong></p></td></tr>
        </tbody></table>""",
    "raw & in href, entities and whitespace": """
        <p>Contract:&nbsp;2023-015.</p>
        <a href="https://ts.example/p.aspx?view=1&id=4711&amp;tab=2">link</a>
        <table>
          <tr>
            <td>
                Subject
            </td>
            <td>
                Printer
                &#38;
                toner
            </td>
          </tr>
          <tr><td>\tStatus\n</td><td>\n Open \n</td></tr>
        </table>""",
    "contract in a table row, doubly escaped href": """
        <table>
          <tr><td>Contract: 2023-015</td></tr>
          <tr><td>Subject</td><td>Printer &amp; toner</td></tr>
          <tr><td>Status</td><td>Open</td></tr>
        </table>
        <a href="https://ts.example/p.aspx?id=9&amp;amp;id=4711">x</a>""",
    "a link with ?id= first, nested tables": """
        <a href="https://ts.example/help.aspx?id=1">help</a>
        <a href="https://ts.example/p.aspx?mode=1&amp;id=4711">problem</a>
        <table><tr><td>
          <table>
            <tr><td>Subject</td><td>Printer &amp; toner</td></tr>
            <tr><td>Status</td><td>Open</td></tr>
          </table>
        </td></tr></table>
        <p>Contract: 2023-015</p>""",
}


@pytest.mark.parametrize("html", HTML_VARIANTS.values(), ids=HTML_VARIANTS.keys())
def test_troubleshooting_html_variants(directory, html):
    problem = read_problem(html)
    assert (problem.contract, problem.problem_id, problem.status, problem.subject) == (
        "2023-015", "4711", "Open", "Printer & toner")
    decision = decide(directory, troubleshooting_mail(html))
    assert decision.verdict == "TASK_CREATED"
    assert side_effects(decision)["tasks"] == [CREATED_4711]


@pytest.mark.parametrize("missing, html", [
    ("contract", '<a href="x?a=1&amp;id=4711">x</a><table><tr><td>Subject</td><td>S</td></tr>'
                 '<tr><td>Status</td><td>Open</td></tr></table>'),
    ("problem id", '<p>Contract: 1</p><a href="x?id=4711">x</a><table><tr><td>Subject</td>'
                   '<td>S</td></tr><tr><td>Status</td><td>Open</td></tr></table>'),
    ("status", '<p>Contract: 1</p><a href="x?a=1&amp;id=4711">x</a><table><tr><td>Subject</td>'
               '<td>S</td></tr><tr><td>State</td><td>Open</td></tr></table>'),
    ("subject", '<p>Contract: 1</p><a href="x?a=1&amp;id=4711">x</a><table><tr><td>Subject</td>'
                '<td> </td></tr><tr><td>Status</td><td>Open</td></tr></table>'),
    ("problem id", '<p>Contract: 1</p><a href="x?a=1&amp;id=abc">x</a><table><tr><td>Subject'
                   '</td><td>S</td></tr><tr><td>Status</td><td>Open</td></tr></table>'),
])
def test_incomplete_troubleshooting_mail_is_invalid_and_records_nothing(directory, missing,
                                                                        html):
    decision = decide(directory, troubleshooting_mail(html))
    assert decision.verdict == "INVALID_TASK"
    assert missing in trace_of(decision, "troubleshooting").detail
    assert side_effects(decision)["tasks"] == [] and decision.activities == ()


def test_troubleshooting_mail_without_html_is_invalid(directory):
    decision = decide(directory, make_mail(subject="Problem No. 4711",
                                           body="Contract: 1\nStatus Open\n&id=4711"))
    assert decision.verdict == "INVALID_TASK"


def test_a_reply_to_a_troubleshooting_mail_is_an_ordinary_mail(directory):
    decision = decide(directory, troubleshooting_mail(subject="Re: Problem No. 4711",
                                                      sender="jan@acme.cz"))
    assert decision.verdict == "PROCESSED" and decision.tasks == ()


def test_troubleshooting_task_is_created_then_updated_in_the_database(engine):
    intake = Intake(engine)
    [first] = intake.deliver(troubleshooting_mail(), LMTP, [box()])
    [second] = intake.deliver(troubleshooting_mail(subject="Status Problem No. 4711",
                                                   status="Solved",
                                                   problem_subject="Printer fixed"),
                              LMTP, [box()])
    assert (first.verdict, second.verdict) == ("TASK_CREATED", "TASK_UPDATED")
    with engine.connect() as conn:
        task = conn.execute(select(t.tasks).where(t.tasks.c.number == "4711")).one()
        changes = conn.execute(select(t.task_changes.c.message_id, t.task_changes.c.action,
                                      t.task_changes.c.status).order_by(t.task_changes.c.id)
                               ).all()
        activities = conn.execute(select(func.count()).select_from(t.activities)).scalar()
    assert (task.subject, task.status, task.contract_number, task.origin) == (
        "Printer fixed", "Solved", "2023-015", "troubleshooting")
    assert changes == [(first.message_id, "created", "Open"),
                       (second.message_id, "updated", "Solved")]
    assert activities == 0


def test_troubleshooting_updates_an_imported_task_with_that_number(engine):
    with engine.begin() as conn:
        import_directory(conn, {"tasks": [{"number": "4711", "subject": "Imported"}]})
    [delivery] = Intake(engine).deliver(troubleshooting_mail(), LMTP, [box()])
    assert delivery.verdict == "TASK_UPDATED"
    with engine.connect() as conn:
        rows = conn.execute(select(t.tasks.c.subject, t.tasks.c.status, t.tasks.c.origin)
                            .where(t.tasks.c.number == "4711")).all()
    assert rows == [("Printer & toner", "Open", None)]     # still the imported task


def test_racing_troubleshooting_mails_for_one_problem_make_one_task(engine):
    """Eight sessions deliver different mails about problem 4711 at once: one task row, every
    message processed (the upsert is keyed by number, not read-then-insert)."""
    intake = Intake(engine)
    barrier = threading.Barrier(8)
    results, errors = [], []

    def worker(n):
        raw = troubleshooting_mail(status=f"Status {n}",
                                   date=f"Mon, 02 Nov 2026 11:{n:02d}:00 +0100")
        barrier.wait()
        try:
            results.extend(intake.deliver(raw, LMTP, [box()]))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(d.status for d in results) == ["processed"] * 8
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.tasks).where(
            t.tasks.c.number == "4711")).scalar() == 1
        assert conn.execute(select(func.count()).select_from(t.task_changes)).scalar() == 8


# --------------------------------------------------------------------------- new task

@pytest.mark.parametrize("subject, expected", [
    ("New task: Call Jan about the offer", "Call Jan about the offer"),
    ("NEW TASK:Call Jan", "Call Jan"),
    ("new task : Fwd: customer problem", "Fwd: customer problem"),
    ("Nový úkol: Zavolat Janovi", "Zavolat Janovi"),
    ("Novy ukol: Zavolat Janovi", "Zavolat Janovi"),
    ("NOVÝ ÚKOL: Připravit nabídku", "Připravit nabídku"),
])
def test_new_task_subject_prefixes(directory, subject, expected):
    decision = decide(directory, make_mail(sender="alice@firma.cz",
                                           to=("bob@firma.cz", "jan@acme.cz"),
                                           cc=("carol@firma.cz", "crm@firma.cz"),
                                           subject=subject))
    assert side_effects(decision)["tasks"] == [{
        "action": "created", "number": None, "subject": expected, "status": None,
        "solvers": ["bob@firma.cz", "carol@firma.cz"], "approver": "alice@firma.cz"}]
    # the activity is still created
    assert decision.verdict == "PROCESSED" and len(decision.activities) == 1


def test_new_task_from_someone_who_is_not_a_user_makes_no_task(directory):
    decision = decide(directory, make_mail(sender="jan@acme.cz", to=("alice@firma.cz",),
                                           subject="New task: do it"))
    assert decision.tasks == ()
    assert trace_of(decision, "new-task").detail.startswith("unknown user")
    assert len(decision.activities) == 1


@pytest.mark.parametrize("subject", ["Re: New task: x", "Task: 4711", "The new task: x",
                                     "Novy ukol"])
def test_subjects_that_do_not_start_with_a_new_task_prefix(directory, subject):
    decision = decide(directory, make_mail(sender="alice@firma.cz", to=("bob@firma.cz",),
                                           subject=subject))
    assert decision.tasks == ()


def test_new_task_is_stored_with_solvers_approver_and_a_number(engine):
    raw = make_mail(sender="alice.novak@firma-group.com", to=("bob@firma.cz", "carol@firma.cz"),
                    subject="Nový úkol: Připravit nabídku")
    [delivery] = Intake(engine).deliver(raw, LMTP, [box()])
    [task] = delivery.decision.tasks
    assert task.number == f"MAIL-{delivery.message_id}"     # assigned when stored
    with engine.connect() as conn:
        row = conn.execute(select(t.tasks).where(t.tasks.c.number == task.number)).one()
        approver = conn.execute(select(t.users.c.email).where(t.users.c.id == row.approver_id)
                                ).scalar()
        solvers = conn.execute(select(t.users.c.email).join(
            t.task_solvers, t.task_solvers.c.user_id == t.users.c.id).where(
            t.task_solvers.c.task_id == row.id).order_by(t.users.c.email)).scalars().all()
        change = conn.execute(select(t.task_changes.c.message_id, t.task_changes.c.action)).one()
        activities = conn.execute(select(func.count()).select_from(t.activities)).scalar()
    assert (row.subject, row.origin, approver) == ("Připravit nabídku", "new-task",
                                                   "alice@firma.cz")
    assert solvers == ["bob@firma.cz", "carol@firma.cz"]
    assert tuple(change) == (delivery.message_id, "created")
    assert activities == 2      # incoming (the alias is outside firma.cz) for bob and carol


def test_a_created_task_is_linkable_by_its_number_afterwards(engine):
    intake = Intake(engine)
    intake.deliver(troubleshooting_mail(), LMTP, [box()])
    [reply] = intake.deliver(make_mail(sender="alice@firma.cz", to=("jan@acme.cz",),
                                       subject="Task:4711 printer"), LMTP, [box()])
    assert [a.task for a in reply.decision.activities] == ["4711"]
