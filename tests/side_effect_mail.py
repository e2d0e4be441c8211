"""Realistic side-effect messages, built by the tests: delivery reports as Postfix, Exchange /
Outlook.com and Gmail format them, their plain-text forms, the seed's two heuristic forms,
calendar invitations and troubleshooting mails; and a pure pipeline runner."""

from __future__ import annotations

import uuid
from email.message import EmailMessage

from sink.config import parse_config
from sink.directory import Directory
from sink.mail.parse import parse_message
from sink.pipeline import evaluate
from sink.pipeline.records import MemoryRecords

DATE = "Mon, 02 Nov 2026 10:00:00 +0100"
BOX = "crm@firma.cz"


def crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def box(**settings):
    return parse_config({"boxes": [{"address": BOX, **settings}]}).boxes[0]


def never_seen(keys) -> bool:
    return False


def decide(directory: Directory, raw: bytes, records=None, settings=None):
    """The pure pipeline on ``raw`` for the default box."""
    return evaluate(parse_message(raw), box(**(settings or {})), directory, never_seen,
                    records if records is not None else MemoryRecords())


def side_effects(decision) -> dict:
    data = decision.as_json()
    return {k: data[k] for k in ("tasks", "contact_flags", "forbidden", "invitations")}


def trace_of(decision, rule: str):
    return next(e for e in decision.trace if e.rule == rule)


# ------------------------------------------------------------------------------ originals

def returned_original(to=("jan@acme.cz", "eva@globex.com"), sender="alice@firma.cz") -> str:
    return (f"Return-Path: <{sender}>\n"
            "Received: from [10.0.0.5] (unknown [10.0.0.5])\n"
            "\tby mx.firma.cz (Postfix) with ESMTPSA id 4Lx1Y22Z3kz9s\n"
            f"\tfor <{to[0]}>; {DATE}\n"
            f"From: Alice <{sender}>\n"
            f"To: {', '.join(to)}\n"
            "Cc: vip@partner.cz\n"
            "Subject: Offer 2023-015\n"
            f"Date: {DATE}\n"
            "Message-ID: <offer-1@firma.cz>\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "\n"
            "Dear Jan, please find our offer attached.\n")


# ------------------------------------------------------------------------------ Postfix

POSTFIX_TEXT = """This is the mail system at host mx.firma.cz.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system

{lines}
"""

POSTFIX_DELAY_TEXT = """This is the mail system at host mx.firma.cz.

####################################################################
# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #
####################################################################

Your message could not be delivered for more than 4 hour(s).
It will be retried until it is 5 day(s) old.

For further assistance, please send mail to postmaster.

                   The mail system

{lines}
"""

POSTFIX_SUCCESS_TEXT = """This is the mail system at host mx.firma.cz.

Your message was successfully delivered to the destination(s)
listed below. If the message was delivered to mailbox you will
receive no further notifications. Otherwise you may still receive
notifications of mail delivery errors from other systems.

                   The mail system

{lines}
"""


def _postfix_line(address: str, action: str) -> str:
    if action == "failed":
        return (f"<{address}>: host mx.{address.split('@')[1]}[192.0.2.10] said: 550 5.1.1\n"
                f"    <{address}>: Recipient address rejected: User unknown in virtual\n"
                "    mailbox table (in reply to RCPT TO command)")
    if action == "delayed":
        return (f"<{address}>: connect to mx.{address.split('@')[1]}[192.0.2.10]:25: "
                "Connection timed out")
    return f"<{address}>: delivery via mx.{address.split('@')[1]}[192.0.2.10]:25: 250 2.0.0 Ok"


def _postfix_block(address: str, action: str) -> str:
    status = {"failed": "5.1.1", "delayed": "4.4.1", "delivered": "2.0.0"}[action]
    block = (f"Final-Recipient: rfc822; {address}\n"
             f"Original-Recipient: rfc822;{address}\n"
             f"Action: {action}\n"
             f"Status: {status}\n"
             f"Remote-MTA: dns; mx.{address.split('@')[1]}\n")
    if action == "failed":
        block += (f"Diagnostic-Code: smtp; 550 5.1.1 <{address}>: Recipient address rejected:\n"
                  "    User unknown in virtual mailbox table\n")
    if action == "delayed":
        block += ("Diagnostic-Code: X-Postfix; connect to mx.example[192.0.2.10]:25: Connection\n"
                  "    timed out\nWill-Retry-Until: Sat, 7 Nov 2026 10:00:00 +0100 (CET)\n")
    return block


POSTFIX_SUBJECTS = {"failed": "Undelivered Mail Returned to Sender",
                    "delayed": "Delayed Mail (still being retried)",
                    "delivered": "Successful Mail Delivery Report"}
POSTFIX_TEXTS = {"failed": POSTFIX_TEXT, "delayed": POSTFIX_DELAY_TEXT,
                 "delivered": POSTFIX_SUCCESS_TEXT}


def postfix_dsn(recipients: dict[str, str], *, to="alice@firma.cz",
                original_to=("jan@acme.cz", "eva@globex.com")) -> bytes:
    """A Postfix delivery status notification (bounce, delay or success report), as Postfix
    3.x writes it: multipart/report with notification, delivery report and the original."""
    kind = "failed" if "failed" in recipients.values() else next(iter(recipients.values()))
    boundary = "4Lx1Y22Z3kz9s.1762074000/mx.firma.cz"
    lines = "\n\n".join(_postfix_line(a, act) for a, act in recipients.items())
    blocks = "\n".join(_postfix_block(a, act) for a, act in recipients.items())
    return crlf(f"""Return-Path: <>
Received: by mx.firma.cz (Postfix)
\tid 4Lx1Y23Z3kzBt; {DATE}
Date: {DATE}
From: MAILER-DAEMON@mx.firma.cz (Mail Delivery System)
Subject: {POSTFIX_SUBJECTS[kind]}
To: {to}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Content-Transfer-Encoding: 8bit
Message-Id: <{uuid.uuid4().hex}@mx.firma.cz>

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

{POSTFIX_TEXTS[kind].format(lines=lines)}
--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.firma.cz
X-Postfix-Queue-ID: 4Lx1Y22Z3kz9s
X-Postfix-Sender: rfc822; {to}
Arrival-Date: {DATE}

{blocks}
--{boundary}
Content-Description: Undelivered Message
Content-Type: message/rfc822
Content-Transfer-Encoding: 8bit

{returned_original(original_to, to)}
--{boundary}--
""")


def postfix_plain(failed: tuple[str, ...], *, with_report=True) -> bytes:
    """Postfix's bounce as one text/plain body (a relay or a forward flattened the report):
    the notification, then the delivery report and the returned original as text."""
    lines = "\n\n".join(_postfix_line(a, "failed") for a in failed)
    text = POSTFIX_TEXT.format(lines=lines)
    if with_report:
        text += ("\nReporting-MTA: dns; mx.firma.cz\nArrival-Date: " + DATE + "\n\n"
                 + "\n".join(_postfix_block(a, "failed") for a in failed) + "\n"
                 + returned_original())
    return crlf(f"""Date: {DATE}
From: MAILER-DAEMON@mx.firma.cz (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: alice@firma.cz
Message-Id: <{uuid.uuid4().hex}@mx.firma.cz>
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

{text}""")


# ------------------------------------------------------------------------------ Exchange

def _exchange_text(failed: tuple[str, ...]) -> str:
    listed = "\n\n".join(f"{a} ({a})\nThe email address you entered couldn't be found. Please "
                         "check the recipient's email address and try to resend the message. "
                         "If the problem continues, please contact your helpdesk."
                         for a in failed)
    remote = "\n\n".join(f"{a}\nRemote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound;"
                         " Recipient not found by SMTP address lookup'" for a in failed)
    return (f"Delivery has failed to these recipients or groups:\n\n{listed}\n\n\n\n\n\n\n"
            "Diagnostic information for administrators:\n\n"
            "Generating server: AM0PR01MB1234.eurprd01.prod.exchangelabs.com\n\n"
            f"{remote}\n\nOriginal message headers:\n\n{returned_original()}")


def exchange_ndr(failed: tuple[str, ...], *, report=True) -> bytes:
    """An Exchange Online non-delivery report ("Undeliverable: ..."): with its
    message/delivery-status part, or (``report=False``) as Outlook.com's plain text."""
    boundary = "_000_AM0PR01MB1234C0FFEE_"
    alternative = "_001_AM0PR01MB1234C0FFEE_"
    text = _exchange_text(failed)
    html = "<html><body>" + "".join(
        f'<p><b><a href="mailto:{a}">{a}</a></b><br>The email address you entered couldn&#39;t '
        f"be found.</p>" for a in failed) + "</body></html>"
    head = f"""From: Microsoft Outlook <postmaster@firma.onmicrosoft.com>
To: <alice@firma.cz>
Date: {DATE}
Subject: Undeliverable: Offer 2023-015
Message-ID: <{uuid.uuid4().hex}@AM0PR01MB1234.eurprd01.prod.exchangelabs.com>
MIME-Version: 1.0
X-MS-Exchange-Message-Is-Ndr:
"""
    if not report:
        return crlf(head + f"Content-Type: text/plain; charset=\"utf-8\"\n\n{text}")
    blocks = "\n".join(f"Final-Recipient: rfc822;{a}\nAction: failed\nStatus: 5.1.10\n"
                       "Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; "
                       "Recipient not found by SMTP address lookup\n" for a in failed)
    return crlf(head + f"""Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Content-Language: en-US

--{boundary}
Content-Type: multipart/alternative; differences=Content-Type;
\tboundary="{alternative}"

--{alternative}
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: 8bit

{text}
--{alternative}
Content-Type: text/html; charset="utf-8"

{html}
--{alternative}--

--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns;AM0PR01MB1234.eurprd01.prod.exchangelabs.com
Received-From-MTA: dns;AM0PR01MB5678.eurprd01.prod.exchangelabs.com
Arrival-Date: Mon, 2 Nov 2026 09:00:00 +0000

{blocks}
--{boundary}
Content-Type: text/rfc822-headers

{returned_original().split(chr(10) + chr(10))[0]}

--{boundary}--
""")


# ------------------------------------------------------------------------------ Gmail

def gmail_text(failed: tuple[str, ...]) -> str:
    return "\n".join(
        f"\n** Address not found **\n\nYour message wasn't delivered to {a} because the "
        "address couldn't be found, or is unable to receive mail.\n\n"
        "Learn more here: https://support.google.com/mail/?p=NoSuchUser\n\n"
        "The response from the remote server was:\n"
        "550 5.1.1 The email account that you tried to reach does not exist." for a in failed
    ) + "\n\n----- Original message -----\n\n" + returned_original()


def gmail_dsn(failed: tuple[str, ...], *, report=True) -> bytes:
    """Gmail's "Delivery Status Notification (Failure)": multipart/report (report-type after
    the boundary) with a multipart/related notification, or its plain text alone."""
    text = gmail_text(failed)
    head = f"""Delivered-To: alice@firma.cz
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: alice@firma.cz
Auto-Submitted: auto-replied
Subject: Delivery Status Notification (Failure)
References: <offer-1@firma.cz>
In-Reply-To: <offer-1@firma.cz>
Message-ID: <{uuid.uuid4().hex}@mx.google.com>
Date: Mon, 02 Nov 2026 01:00:01 -0800 (PST)
MIME-Version: 1.0
"""
    if not report:
        return crlf(head + f"Content-Type: text/plain; charset=\"UTF-8\"\n\n{text}")
    blocks = "\n".join(
        f"Final-Recipient: rfc822; {a}\nAction: failed\nStatus: 5.1.1\n"
        f"Remote-MTA: dns; mx.{a.split('@')[1]}. (192.0.2.10, the server for the domain "
        f"{a.split('@')[1]}.)\nDiagnostic-Code: smtp; 550 5.1.1 The email account that you "
        "tried to reach does not exist.\nLast-Attempt-Date: Mon, 02 Nov 2026 01:00:01 -0800 "
        "(PST)\n" for a in failed)
    return crlf(head + f"""Content-Type: multipart/report; boundary="000000000000a1b2c3"; report-type=delivery-status

--000000000000a1b2c3
Content-Type: multipart/related; boundary="000000000000a1b2c4"

--000000000000a1b2c4
Content-Type: multipart/alternative; boundary="000000000000a1b2c5"

--000000000000a1b2c5
Content-Type: text/plain; charset="UTF-8"

{text}
--000000000000a1b2c5
Content-Type: text/html; charset="UTF-8"

<html><body><h2>Address not found</h2><p>Your message wasn't delivered.</p></body></html>
--000000000000a1b2c5--

--000000000000a1b2c4--

--000000000000a1b2c3
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; alice@firma.cz
Arrival-Date: Mon, 02 Nov 2026 01:00:00 -0800 (PST)
X-Original-Message-ID: <offer-1@firma.cz>

{blocks}
--000000000000a1b2c3
Content-Type: message/rfc822

{returned_original()}
--000000000000a1b2c3--
""")


# ------------------------------------------------------------------------------ seed forms

def _plain_bounce(sender: str, subject: str, text: str) -> bytes:
    domain = sender.split("@")[1]
    return crlf(f"""From: {sender}
To: alice@firma.cz
Subject: {subject}
Date: {DATE}
Message-ID: <{uuid.uuid4().hex}@{domain}>
Content-Type: text/plain; charset=utf-8

{text}""")


def seed_undeliverable(failed: tuple[str, ...]) -> bytes:
    """Seed 000 ch. 13, first form: "Undeliverable Mail" / "The following mail failed to be
    delivered" and "To:"."""
    listing = "\n".join(f"To: {a}" for a in failed)
    return _plain_bounce("postmaster@mail.partner.cz", "Undeliverable Mail",
                         "The following mail failed to be delivered...\n\n"
                         f"From: alice@firma.cz\n{listing}\nSubject: Offer 2023-015\n"
                         "Reason: 550 mailbox unavailable\n")


def seed_undelivered(failed: tuple[str, ...]) -> bytes:
    """Seed 000 ch. 13, second form: "Undelivered Mail" / "message could not" and "be
    delivered to one or more recipients"."""
    listing = "\n".join(f"    {a}" for a in failed)
    return _plain_bounce("mailer@relay.partner.cz", "Undelivered Mail",
                         "Your message could not be delivered to one or more recipients:\n\n"
                         f"{listing}\n")


# ------------------------------------------------------------------------------ calendars

OUTLOOK_TZ = """BEGIN:VTIMEZONE
TZID:Central Europe Standard Time
BEGIN:STANDARD
DTSTART:16010101T030000
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=10
END:STANDARD
BEGIN:DAYLIGHT
DTSTART:16010101T020000
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
RRULE:FREQ=YEARLY;INTERVAL=1;BYDAY=-1SU;BYMONTH=3
END:DAYLIGHT
END:VTIMEZONE
"""


def vevent(*, uid="040000008200E00074C5B7101A82E008000000001", sequence=0,
           dtstamp="20261101T090000Z", start="DTSTART;TZID=Central Europe Standard Time:"
           "20261110T100000", end="DTEND;TZID=Central Europe Standard Time:20261110T110000",
           summary="Porada k zakázce 2023-015", organizer="jan@acme.cz",
           attendees=(("alice@firma.cz", "NEEDS-ACTION"), ("bob@firma.cz", "NEEDS-ACTION")),
           rrule=None, status=None, recurrence_id=None, extra="") -> str:
    lines = ["BEGIN:VEVENT", f"UID:{uid}", f"SEQUENCE:{sequence}", f"DTSTAMP:{dtstamp}",
             start, end, f"SUMMARY;LANGUAGE=cs-CZ:{summary}", "LOCATION:Brno\\, Kancelář 3",
             f"ORGANIZER;CN=Organizer:mailto:{organizer}"]
    lines += [f"ATTENDEE;ROLE=REQ-PARTICIPANT;PARTSTAT={p};RSVP=TRUE:mailto:{a}"
              for a, p in attendees]
    if rrule:
        lines.append(f"RRULE:{rrule}")
    if status:
        lines.append(f"STATUS:{status}")
    if recurrence_id:
        lines.append(f"RECURRENCE-ID;TZID=Central Europe Standard Time:{recurrence_id}")
    if extra:
        lines.append(extra)
    lines.append("END:VEVENT")
    return "\n".join(lines) + "\n"


def vcalendar(method: str | None, *events: str, timezone: str = OUTLOOK_TZ) -> str:
    head = "BEGIN:VCALENDAR\nPRODID:-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN\n" \
           "VERSION:2.0\n" + (f"METHOD:{method}\n" if method else "")
    return (head + timezone + "".join(events) + "END:VCALENDAR\n").replace("\n", "\r\n")


def _headers(sender: str, to, subject: str, date: str, domain: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = date
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@{domain}>"
    return msg


def invitation_mail(calendar: str, *, sender="jan@acme.cz",
                    to=("alice@firma.cz", "bob@firma.cz"), method="REQUEST",
                    subject="Porada", attach_ics=False) -> bytes:
    """An invitation as Outlook and Gmail send it: multipart/alternative with text, HTML and
    text/calendar (method parameter), and optionally the same calendar attached as invite.ics
    (Gmail)."""
    msg = _headers(sender, to, subject, DATE, "test")
    msg.set_content("You are invited.")
    msg.add_alternative("<p>You are invited.</p>", subtype="html")
    params = {"method": method} if method else {}
    msg.add_alternative(calendar.encode("utf-8"), maintype="text", subtype="calendar",
                        params={"charset": "utf-8", **params})
    if attach_ics:
        msg.make_mixed()
        msg.add_attachment(calendar.encode("utf-8"), maintype="application", subtype="ics",
                           filename="invite.ics")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


# ------------------------------------------------------------------------------ troubleshooting

TROUBLESHOOTING_HTML = """<html><head><style>td {{ padding: 2px }}</style></head><body>
<p>Area: Web shop</p>
<p>Contract: {contract}</p>
<p>A problem was {verb}: <a href="https://support.example.cz/app/problem.aspx?mode=detail&amp;id={pid}&amp;lang=en">open the problem</a></p>
<table border="1">
<tr><td>Subject</td><td>{subject}</td></tr>
<tr><td>Status</td><td>{status}</td></tr>
<tr><td>Priority</td><td>High</td></tr>
</table>
</body></html>"""


def troubleshooting_html(contract="2023-015", pid="4711", status="Open",
                         problem_subject="Printer &amp; toner", verb="created") -> str:
    return TROUBLESHOOTING_HTML.format(contract=contract, pid=pid, status=status,
                                       subject=problem_subject, verb=verb)


def troubleshooting_mail(html: str | None = None, *, subject="Problem No. 4711",
                         sender="helpdesk@support.example.cz", to=("alice@firma.cz",),
                         contract="2023-015", pid="4711", status="Open",
                         problem_subject="Printer &amp; toner", verb="created",
                         date=DATE) -> bytes:
    if html is None:
        html = troubleshooting_html(contract, pid, status, problem_subject, verb)
    msg = _headers(sender, to, subject, date, "support.example.cz")
    msg.set_content(html, subtype="html")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


# ------------------------------------------------------------------------------ fixtures

