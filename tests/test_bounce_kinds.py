"""Issue 12: hard and soft bounces (SPEC 5 step 8), bounce records (JSON, table, `sink show`),
and delivery reports that are never SPAM (SPEC 5 step 3)."""

from __future__ import annotations

import json

import pytest
import structlog
from sqlalchemy import select

from sink.cli import main
from sink.db import schema as t
from sink.intake import Envelope, Intake
from sink.mail.parse import parse_message
from sink.pipeline.bounce_kind import classify
from sink.pipeline.context import Context
from sink.pipeline.records import MemoryRecords
from tests.side_effect_mail import BOX, DATE, box, crlf, decide, never_seen, trace_of
from tests.support import DIRECTORY, make_mail

LMTP = Envelope("lmtp", "mta@firma.cz", (BOX,))


def dsn(address: str, status: str, diagnostic: str, *, sender="MAILER-DAEMON@mx.firma.cz",
        action="failed", subject="Undelivered Mail Returned to Sender") -> bytes:
    """A Postfix-style RFC 3464 report for one address."""
    from_line = f"From: {sender}\n" if sender is not None else ""
    return crlf(f"""{from_line}To: alice@firma.cz
Subject: {subject}
Date: {DATE}
Message-ID: <{abs(hash((address, status, diagnostic, sender)))}@mx.firma.cz>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

This is the mail system at host mx.firma.cz. Your message could not
be delivered to one or more recipients.

<{address}>: host mx.example said: {diagnostic}

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.firma.cz

Final-Recipient: rfc822; {address}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; {diagnostic}

--B--
""")


# --------------------------------------------------------------------------- classification

@pytest.mark.parametrize("status, diagnostic", [
    ("5.1.1", "550 5.1.1 <jan@acme.cz>: Recipient address rejected: User unknown"),
    ("5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP lookup"),
    ("5.2.1", "550 5.2.1 The email account that you tried to reach is disabled."),
    ("5.1.2", "Host or domain name not found. Name service error for name=acme.cz type=A"),
    ("5.1.10", "556 5.1.10 Recipient address has null MX"),
    (None, "Sorry, no mailbox here by that name. (#5.1.1)"),
    (None, "550 Benutzer unbekannt"),
    (None, "550 Utilisateur inconnu"),
    (None, "550 Adresát neexistuje"),
    ("5.0.0", "550 Пользователь не найден"),
    ("4.0.0", "The domain acme.cz doesn't receive email according to the administrator"),
])
def test_a_dead_mailbox_or_domain_is_hard(status, diagnostic):
    assert classify(status, diagnostic)[0] == "hard"


@pytest.mark.parametrize("status, diagnostic", [
    ("5.7.1", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
              "zen.spamhaus.org"),
    ("5.1.1", "550 5.1.1 Message rejected: your IP 192.0.2.1 is listed on a blacklist"),
    ("5.7.25", "550-5.7.25 The IP address sending this message does not have a PTR record"),
    ("5.7.26", "550 5.7.26 Unauthenticated email is not accepted: DMARC policy"),
    ("5.7.1", "550 5.7.1 SPF check failed for firma.cz"),
    ("4.7.0", "421 4.7.0 Too many messages, rate limited, try again later"),
    ("4.2.2", "452 4.2.2 Mailbox full"),
    ("5.2.2", "552 5.2.2 Mailbox over quota"),
    ("5.3.4", "552 5.3.4 Message size exceeds fixed limit"),
    ("4.7.1", "450 4.7.1 Greylisted, please try again in 5 minutes"),
    ("4.4.7", "Delivery expired: connection timed out"),
    ("5.7.1", "550 5.7.1 Message rejected as spam by Content Filtering"),
    ("4.1.1", "450 4.1.1 <jan@acme.cz>: Recipient address rejected: User unknown in virtual "
              "alias table"),
    ("5.1.8", "553 5.1.8 Sender address rejected: Domain not found"),
    (None, "This account has been locked, try later"),
])
def test_everything_else_is_soft(status, diagnostic):
    assert classify(status, diagnostic)[0] == "soft"


def test_a_report_without_status_or_reason_is_soft_unless_it_is_the_seeds_form():
    assert classify(None, "") == ("soft", None)
    assert classify(None, "", "hard") == ("hard", None)
    assert classify(None, "", None) == (None, None)


def test_an_address_is_no_reason():
    # sisimai's test mailboxes are called after reasons: the words must come from the reply
    assert classify("5.1.1", "550 5.1.1 <mailboxfull@acme.cz>... User Unknown")[0] == "hard"
    assert classify("5.2.2", "552 5.2.2 <userunknown@acme.cz>... Mailbox Full")[0] == "soft"


# --------------------------------------------------------------------------- the rule

def test_a_hard_bounce_flags_and_is_recorded(directory):
    decision = decide(directory, dsn("jan@acme.cz", "5.1.1", "550 5.1.1 User unknown"))
    data = decision.as_json()
    assert data["bounces"] == [{"email": "jan@acme.cz", "kind": "hard", "status": "5.1.1"}]
    assert data["contact_flags"] == [{"email": "jan@acme.cz", "non_functional": True}]
    assert [a.completed for a in decision.activities] == [False]


@pytest.mark.parametrize("address", ["jan@acme.cz", "nobody@unknown.cz"])
def test_a_soft_bounce_is_recorded_and_flags_nothing(directory, address):
    decision = decide(directory, dsn(address, "5.7.1",
                                     "554 5.7.1 Client host [192.0.2.1] blocked using "
                                     "zen.spamhaus.org"))
    data = decision.as_json()
    assert data["bounces"] == [{"email": address, "kind": "soft", "status": "5.7.1"}]
    assert data["contact_flags"] == [] and data["forbidden"] == []
    assert decision.bounces[0].reason.startswith("smtp; 554 5.7.1 Client host")
    assert "1 soft" in trace_of(decision, "bounce").detail


def test_bounces_are_in_the_json_of_every_message_empty_when_none(directory):
    assert decide(directory, make_mail()).as_json()["bounces"] == []


@pytest.mark.parametrize("sender", ["MAILER-DAEMON", "<>", None, "MAILER-DAEMON@mx.firma.cz"])
def test_a_delivery_report_is_never_spam_for_its_sender(directory, sender):
    decision = decide(directory, dsn("jan@acme.cz", "5.1.1", "550 5.1.1 User unknown",
                                     sender=sender))
    assert decision.verdict != "SPAM"
    assert trace_of(decision, "spam").outcome == "pass"
    assert decision.as_json()["bounces"][0]["kind"] == "hard"


@pytest.mark.parametrize("sender", ["MAILER-DAEMON", None])
def test_a_plain_text_bounce_from_a_bare_mailer_daemon_is_no_spam(directory, sender):
    body = ("This is the mail system at host mx.firma.cz.\n\nI'm sorry to have to inform you "
            "that your message could not\nbe delivered to one or more recipients.\n\n"
            "<jan@acme.cz>: host mx.acme.cz said: 550 5.1.1 User unknown\n")
    raw = make_mail(sender=sender, subject="Undelivered Mail Returned to Sender", body=body)
    decision = decide(directory, raw)
    assert decision.verdict != "SPAM"
    assert decision.as_json()["contact_flags"] == [{"email": "jan@acme.cz",
                                                     "non_functional": True}]


def test_mail_that_is_no_report_from_a_bare_sender_is_still_spam(directory):
    decision = decide(directory, make_mail(sender="MAILER-DAEMON", subject="Hello",
                                           body="Cheap watches"))
    assert decision.verdict == "SPAM"


def test_the_context_exposes_the_report_once(directory):
    ctx = Context(parse_message(dsn("jan@acme.cz", "5.1.1", "550 5.1.1 User unknown")), box(),
                  directory, never_seen, records=MemoryRecords())
    report = ctx.delivery_report
    assert report is not None and report is ctx.delivery_report
    assert [(f.email, f.action, f.status) for f in report.failed] == [
        ("jan@acme.cz", "failed", "5.1.1")]
    plain = Context(parse_message(make_mail()), box(), directory, never_seen)
    assert plain.delivery_report is None


@pytest.mark.parametrize("action", ["delayed", "delivered"])
def test_delay_and_success_reports_record_nothing(directory, action):
    decision = decide(directory, dsn("jan@acme.cz", "4.4.1" if action == "delayed" else "2.0.0",
                                     "451 4.4.1 try later", action=action))
    data = decision.as_json()
    assert data["bounces"] == [] and data["contact_flags"] == [] and data["forbidden"] == []


# --------------------------------------------------------------------------- stored, shown

def test_bounce_rows_are_stored_with_the_message(engine):
    intake = Intake(engine)
    [hard] = intake.deliver(dsn("nobody@unknown.cz", "5.1.1", "550 5.1.1 User unknown"),
                            LMTP, [box()])
    [soft] = intake.deliver(dsn("nobody@unknown.cz", "5.2.2", "552 5.2.2 Mailbox full",
                                subject="Undelivered Mail Returned to Sender (2)"),
                            LMTP, [box()])
    with engine.connect() as conn:
        rows = conn.execute(select(t.bounces.c.message_id, t.bounces.c.email, t.bounces.c.kind,
                                   t.bounces.c.status, t.bounces.c.diagnostic,
                                   t.bounces.c.created).order_by(t.bounces.c.id)).all()
        forbidden = conn.execute(select(t.forbidden_addresses.c.email)).scalars().all()
    assert [r[:4] for r in rows] == [
        (hard.message_id, "nobody@unknown.cz", "hard", "5.1.1"),
        (soft.message_id, "nobody@unknown.cz", "soft", "5.2.2")]
    assert rows[1].diagnostic.startswith("smtp; 552 5.2.2 Mailbox full")
    assert all(r.created is not None for r in rows)
    assert forbidden == ["nobody@unknown.cz"]          # only the hard one


def test_check_ingest_and_show_carry_the_bounces(tmp_path, db_url, capsys):
    config = tmp_path / "sink.toml"
    config.write_text(f'[database]\nurl = "{db_url}"\n\n[[boxes]]\naddress = "{BOX}"\n')
    (tmp_path / "directory.json").write_text(json.dumps(DIRECTORY))
    mail = tmp_path / "bounce.eml"
    mail.write_bytes(dsn("jan@acme.cz", "5.2.2", "552 5.2.2 Mailbox full"))
    logging = structlog.get_config()

    def run(*args):
        code = main(["--config", str(config), *map(str, args)])
        return code, capsys.readouterr().out
    try:
        assert run("db", "upgrade")[0] == 0
        assert run("directory", "import", tmp_path / "directory.json")[0] == 0
        expected = [{"email": "jan@acme.cz", "kind": "soft", "status": "5.2.2"}]
        for command in ("check", "ingest"):
            code, out = run(command, mail)
            assert code == 0 and json.loads(out)["bounces"] == expected
        message_id = json.loads(out)["id"]
        code, shown = run("show", message_id)
        assert "bounces: 1\n  soft jan@acme.cz status=5.2.2 diagnostic='smtp; 552 5.2.2" in shown
    finally:
        structlog.configure(**logging)


def test_reports_written_in_the_same_second_are_each_read(engine):
    """Two Postfix bounces written in one second share Date, sender, recipient and subject -
    the seed's duplicate key - but not their Message-ID: each is processed and its failed
    address recorded (by the seed's key the second was DUPLICATE and its address lost). The
    same report again (its Message-ID) is still a duplicate."""
    from tests.side_effect_mail import postfix_dsn
    intake = Intake(engine)
    first = postfix_dsn({"nobody@acme.cz": "failed"})
    second = postfix_dsn({"ghost@globex.com": "failed"})
    lmtp = Envelope("lmtp", "", ("crm@firma.cz",))
    [a] = intake.deliver(first, lmtp, [box()])
    [b] = intake.deliver(second, lmtp, [box()])
    assert a.verdict != "DUPLICATE" and b.verdict != "DUPLICATE"
    with engine.connect() as conn:
        recorded = set(conn.execute(select(t.bounces.c.email)).scalars())
    assert recorded == {"nobody@acme.cz", "ghost@globex.com"}
    resent = first.replace(b"Received: by mx.firma.cz", b"Received: by mx2.firma.cz")
    [c] = intake.deliver(resent, lmtp, [box()])
    assert c.verdict == "DUPLICATE"
