"""Realistic, unique CRM mail for the benchmark, built from templates (fast and deterministic).

What a bcc'd copy of a company's mail looks like: mostly customer <-> employee conversations
(replies with quoted text, In-Reply-To/References), some with ``Contract:``/``Order:``
references, a few bounces (RFC 3464 reports), calendar invitations, forwarded copies with the
same date/sender/recipients/subject (the pipeline's DUPLICATE) and byte-identical resends (an MTA
retry after a lost reply). Headers look like they came through Postfix and Exchange (Received,
DKIM-Signature, Authentication-Results, Thread-Topic, ...), bodies are UTF-8 Czech/English text
in quoted-printable or 8bit, subjects partly RFC 2047 encoded.

A *profile* fixes the size class and the envelope recipients: ``4k-1``, ``4k-5``, ``100k-1``,
``100k-5`` (about 4 KB or 100 KB per message; 1 or 5 LMTP RCPTs, each naming one of the
:data:`BOXES` configured in the sink under test). Every message of a profile and seed is unique
unless it is one of the deliberate duplicates; different profiles and seeds never collide.
"""

from __future__ import annotations

import base64
import binascii
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

BOXES = ("crm@firma.cz", "crm-sales@firma.cz", "crm-support@firma.cz",
         "crm-projects@firma.cz", "crm-archive@firma.cz")
INTERNAL = "firma.cz"

SIZES = {"4k": 4 * 1024, "100k": 100 * 1024}
PROFILES = ("4k-1", "4k-5", "100k-1", "100k-5")

# Shares of the message kinds (the rest is incoming customer mail).
MIX = (("outgoing", 0.30), ("unknown_sender", 0.06), ("bounce", 0.03), ("invitation", 0.04),
       ("forwarded_copy", 0.02), ("resend", 0.01))

_FIRST = ("Jan", "Petr", "Eva", "Jana", "Tomáš", "Lucie", "Martin", "Kateřina", "Jiří", "Lenka",
          "Pavel", "Marie", "Ondřej", "Tereza", "Lukáš", "Veronika", "Michal", "Zuzana",
          "Anna", "David", "Karel", "Hana", "Josef", "Alena", "Radek", "Monika", "Filip", "Iva")
_LAST = ("Novák", "Svoboda", "Dvořák", "Černý", "Procházka", "Kučera", "Veselý", "Horák",
         "Němec", "Pokorný", "Marek", "Pospíšil", "Hájek", "Král", "Jelínek", "Růžička",
         "Beneš", "Fiala", "Sedláček", "Doležal", "Zeman", "Kolář", "Navrátil", "Čermák")
_COMPANY_WORDS = ("Stavby", "Logistika", "Software", "Energie", "Strojírny", "Obchod", "Media",
                  "Consulting", "Trade", "Systems", "Agro", "Elektro", "Textil", "Pharma",
                  "Data", "Nábytek", "Tisk", "Servis", "Doprava", "Projekt")
_TLDS = ("cz", "cz", "cz", "com", "de", "sk", "eu")
_FREE = ("gmail.com", "seznam.cz", "email.cz", "outlook.com", "yahoo.com", "centrum.cz")
_ROLES = (("Management", 1), ("Sales", 2), ("Projects", 2), ("Support", 3), ("Accounting", 3))
_TYPES = ("E-mail", "Documentation", "Phone call", "Meeting", "Offer")

_SUBJECTS = (
    "Nabídka na dodávku", "Faktura za {month}", "Dotaz k objednávce", "Schůzka příští týden",
    "Podklady ke smlouvě", "Reklamace zboží", "Cenová nabídka", "Potvrzení objednávky",
    "Quarterly review", "Delivery schedule", "Invoice {n}", "Meeting notes", "Question about "
    "the offer", "Technická specifikace", "Změna termínu dodání", "Update on the project",
    "Prodloužení licence", "Harmonogram prací", "Předávací protokol", "Připomínky k návrhu")
_MONTHS = ("leden", "únor", "březen", "duben", "květen", "červen", "červenec", "srpen", "září",
           "říjen", "listopad", "prosinec")
_WORDS = (
    "dobrý den", "děkujeme", "za zaslání", "podkladů", "v příloze", "posíláme", "upravenou",
    "nabídku", "termín", "dodání", "prosím", "o potvrzení", "objednávky", "smlouvy", "projektu",
    "faktura", "splatnost", "cena", "bez DPH", "s pozdravem", "we would like", "to confirm",
    "the delivery", "next week", "please find attached", "the updated", "schedule", "invoice",
    "regarding", "our meeting", "on Tuesday", "kind regards", "the contract", "amendment",
    "technical", "specification", "rozsah", "prací", "zahájení", "realizace", "kontrolní den",
    "předání", "díla", "záruka", "servisní", "podmínky", "obratem", "zpětně", "upřesnit",
    "množství", "kusů", "sklad", "expedice", "doprava", "zdarma", "akce", "sleva", "platnost")


@dataclass(frozen=True)
class Mail:
    """One message as the driver sends it."""
    mail_from: str              # '' for a bounce (MAIL FROM:<>)
    rcpts: tuple[str, ...]      # boxes, in RCPT order
    raw: bytes                  # RFC 5322 bytes, CRLF, not dot-stuffed


# --------------------------------------------------------------------------------- directory

def _ascii(text: str) -> str:
    table = str.maketrans("áčďéěíňóřšťúůýžÁČĎÉĚÍŇÓŘŠŤÚŮÝŽ", "acdeeinorstuuyzACDEEINORSTUUYZ")
    return text.translate(table)


def _person(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    return f"{first} {last}", f"{_ascii(first).lower()}.{_ascii(last).lower()}"


class World:
    """The benchmark's directory (who is who) and address pools, deterministic."""

    def __init__(self, seed: int = 7, users: int = 40, companies: int = 400,
                 contacts_per_company: int = 5, free_contacts: int = 100):
        rng = random.Random(seed)
        self.users: list[dict] = []
        taken = set()
        while len(self.users) < users:
            name, local = _person(rng)
            email = f"{local}@{INTERNAL}"
            if email in taken:
                continue
            taken.add(email)
            role = rng.choice(_ROLES)[0] if rng.random() < 0.9 else None
            aliases = [f"{local}@firma-group.com"] if rng.random() < 0.2 else []
            user = {"email": email, "name": name, "aliases": aliases}
            if role:
                user["role"] = role
            self.users.append(user)
        self.companies: list[dict] = []
        self.contacts: list[dict] = []
        for n in range(companies):
            word = rng.choice(_COMPANY_WORDS)
            domain = f"{_ascii(word).lower()}{n}.{rng.choice(_TLDS)}"
            cname = f"{word} {n} s.r.o."
            self.companies.append({"name": cname, "emails": [f"info@{domain}"],
                                   "domains": [domain]})
            for _ in range(contacts_per_company):
                name, local = _person(rng)
                email = f"{local}@{domain}"
                if email in taken:
                    continue
                taken.add(email)
                self.contacts.append({"email": email, "name": name, "company": cname})
        for _ in range(free_contacts):
            name, local = _person(rng)
            email = f"{local}{rng.randint(1, 999)}@{rng.choice(_FREE)}"
            if email not in taken:
                taken.add(email)
                self.contacts.append({"email": email, "name": name})
        self.contracts = [{"number": f"2024-{i:03d}", "name": f"Projekt {i}",
                           "kind": "project" if i % 4 == 0 else "contract"}
                          for i in range(1, 201)]
        self.orders = [{"number": f"OBJ-{i}"} for i in range(1000, 1200)]
        self.tasks = [{"number": f"T-{i}", "subject": f"Úkol {i}"} for i in range(100, 300)]
        self.names = {u["email"]: u["name"] for u in self.users}
        self.names.update({c["email"]: c["name"] for c in self.contacts})

    def directory(self) -> dict:
        """The ``sink directory import`` document."""
        return {"roles": [{"name": n, "level": lvl} for n, lvl in _ROLES],
                "users": self.users, "companies": self.companies, "contacts": self.contacts,
                "contracts": self.contracts, "orders": self.orders, "tasks": self.tasks,
                "activity_types": list(_TYPES)}


# --------------------------------------------------------------------------------- messages

_WORLD: World | None = None


def world() -> World:
    global _WORLD
    if _WORLD is None:
        _WORLD = World()
    return _WORLD


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _make_pool(count: int = 3000) -> tuple[tuple[str, int], ...]:
    rng = random.Random(11)
    pool = []
    for _ in range(count):
        line = _words(rng, rng.randint(8, 14)).capitalize() + "."
        if rng.random() < 0.3:
            line += "\n" + _words(rng, rng.randint(6, 12)) + "."
        pool.append((line, len(line.encode()) + 2))
    return tuple(pool)


_POOL = _make_pool()


def _paragraphs(rng: random.Random, size: int) -> str:
    out, total, n = [], 0, len(_POOL)
    while total < size:
        line, length = _POOL[int(rng.random() * n)]
        out.append(line)
        total += length
    return "\n\n".join(out)


def _encoded_subject(subject: str) -> str:
    if subject.isascii():
        return subject
    data, step = subject.encode(), 36
    out, pos = [], 0
    while pos < len(data):
        chunk = data[pos:pos + step]
        while True:
            try:
                chunk.decode()
                break
            except UnicodeDecodeError:
                chunk = chunk[:-1]
        out.append(f"=?utf-8?b?{base64.b64encode(chunk).decode()}?=")
        pos += len(chunk)
    return "\n ".join(out)


def _addr(address: str) -> str:
    name = world().names.get(address)
    if not name:
        return address
    if name.isascii():
        return f'"{name}" <{address}>'
    return f"=?utf-8?q?{binascii.b2a_qp(name.encode(), header=True).decode()}?= <{address}>"


def _qp(text: str) -> bytes:
    return binascii.b2a_qp(text.encode())


def _b64_lines(data: bytes) -> bytes:
    return base64.encodebytes(data)


class Builder:
    """Builds the messages of one profile and seed; ``build(n)`` returns n :class:`Mail`."""

    def __init__(self, profile: str = "4k-1", seed: int = 1):
        size, rcpts = profile.split("-")
        self.profile = profile
        self.size = SIZES[size]
        self.rcpts = BOXES[:int(rcpts)]
        self.seed = seed
        self.rng = random.Random(f"{profile}/{seed}")
        self.tag = f"{profile.replace('-', '')}s{seed}"
        self.start = datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc) + timedelta(days=seed % 300)
        self.world = world()
        self.sent: list[tuple[Mail, dict]] = []
        self.kinds: dict[str, int] = {}

    def build(self, count: int) -> list[Mail]:
        return [self.next(i) for i in range(count)]

    # ---------------------------------------------------------------------------- one message
    def next(self, i: int) -> Mail:
        rng = self.rng
        kind = "incoming"
        roll = rng.random()
        for name, share in MIX:
            if roll < share:
                kind = name
                break
            roll -= share
        if kind in ("forwarded_copy", "resend") and not self.sent:
            kind = "incoming"
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if kind == "resend":
            mail, _ = rng.choice(self.sent[-500:])
            return mail
        if kind == "forwarded_copy":
            _, head = rng.choice(self.sent[-500:])
            head = dict(head, message_id=self._message_id(i, "fwd"), hop=f"fwd{i}")
            mail = self._render(i, head, kind)
        else:
            head = getattr(self, f"_head_{kind}")(i)
            mail = self._render(i, head, kind)
        if kind in ("incoming", "outgoing", "unknown_sender"):
            self.sent.append((mail, head))
        return mail

    def _message_id(self, i: int, what: str = "m") -> str:
        return f"<{self.tag}.{i}.{what}.{self.rng.getrandbits(40):010x}@mail.{INTERNAL}>"

    def _date(self, i: int) -> str:
        return format_datetime(self.start + timedelta(seconds=i * 7 + self.rng.randint(0, 6)))

    def _subject(self, i: int) -> str:
        rng = self.rng
        subject = rng.choice(_SUBJECTS).format(month=rng.choice(_MONTHS), n=10000 + i)
        roll = rng.random()
        if roll < 0.12:
            subject += f" - Contract: {rng.choice(self.world.contracts)['number']}"
        elif roll < 0.18:
            subject = f"Zakázka: {rng.choice(self.world.contracts)['number']} " \
                      f"{rng.choice(_TYPES[1:])} p{rng.randint(1, 3)} {subject}"
        elif roll < 0.24:
            subject += f" (Order: {rng.choice(self.world.orders)['number']})"
        if rng.random() < 0.35:
            subject = ("Re: " if rng.random() < 0.8 else "Fwd: ") + subject
        return subject

    def _people(self):
        rng, w = self.rng, self.world
        contact = rng.choice(w.contacts)["email"]
        users = [u["email"] for u in rng.sample(w.users, rng.randint(1, 2))]
        return contact, users

    def _head_incoming(self, i: int) -> dict:
        rng, w = self.rng, self.world
        contact, users = self._people()
        cc = [rng.choice(w.users)["email"]] if rng.random() < 0.3 else []
        if rng.random() < 0.15:
            cc.append(rng.choice(w.contacts)["email"])
        return dict(sender=contact, to=users, cc=cc, subject=self._subject(i),
                    date=self._date(i), message_id=self._message_id(i), hop=str(i))

    def _head_outgoing(self, i: int) -> dict:
        rng, w = self.rng, self.world
        contact, users = self._people()
        to = [contact] + ([rng.choice(w.contacts)["email"]] if rng.random() < 0.2 else [])
        cc = users[1:] + ([self.rcpts[0]] if rng.random() < 0.1 else [])
        return dict(sender=users[0], to=to, cc=cc, subject=self._subject(i),
                    date=self._date(i), message_id=self._message_id(i), hop=str(i))

    def _head_unknown_sender(self, i: int) -> dict:
        rng, w = self.rng, self.world
        _, local = _person(rng)
        sender = f"{local}{rng.randint(1, 99)}@{rng.choice(_FREE)}"
        return dict(sender=sender, to=[rng.choice(w.users)["email"]], cc=[],
                    subject=self._subject(i), date=self._date(i),
                    message_id=self._message_id(i), hop=str(i))

    def _head_bounce(self, i: int) -> dict:
        rng, w = self.rng, self.world
        user = rng.choice(w.users)["email"]
        failed = rng.choice(w.contacts)["email"]
        return dict(sender=f"MAILER-DAEMON@mail.{INTERNAL}", to=[user], cc=[],
                    subject="Undelivered Mail Returned to Sender", date=self._date(i),
                    message_id=self._message_id(i, "dsn"), hop=str(i), failed=failed,
                    envelope_from="")

    def _head_invitation(self, i: int) -> dict:
        head = self._head_incoming(i)
        head["subject"] = f"Pozvánka: {self.rng.choice(_SUBJECTS).format(month='', n=i)}"
        head["uid"] = f"{self.tag}-{i}-{self.rng.getrandbits(32):08x}@calendar"
        return head

    # ---------------------------------------------------------------------------- rendering
    def _headers(self, head: dict, content_type: str, extra: str = "") -> str:
        rng = self.rng
        d = head["date"]
        lines = [
            f"Return-Path: <{head.get('envelope_from', head['sender'])}>",
            f"Received: from mail.{INTERNAL} (mail.{INTERNAL} [10.0.0.25])\n\tby crm.{INTERNAL} "
            f"(Postfix) with ESMTPS id {rng.getrandbits(40):010X}\n\tfor <{self.rcpts[0]}>; {d}",
            f"Received: from EX01.{INTERNAL} (10.0.1.{rng.randint(2, 250)}) by mail.{INTERNAL}\n"
            f"\twith Microsoft SMTP Server (version=TLS1_2) id 15.2.{head['hop']}; {d}",
            f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={INTERNAL}; s=sel1;\n"
            f"\tt={1700000000 + rng.getrandbits(20)}; h=from:to:cc:subject:date:message-id;\n"
            f"\tbh={base64.b64encode(rng.randbytes(32)).decode()};\n"
            f"\tb={base64.b64encode(rng.randbytes(96)).decode()}",
            f"Authentication-Results: mail.{INTERNAL}; dkim=pass header.d={INTERNAL}; "
            f"spf=pass smtp.mailfrom={head['sender']}",
            f"From: {_addr(head['sender'])}",
            f"To: {', '.join(_addr(a) for a in head['to'])}",
        ]
        if head["cc"]:
            lines.append(f"Cc: {', '.join(_addr(a) for a in head['cc'])}")
        lines += [
            f"Subject: {_encoded_subject(head['subject'])}",
            f"Date: {d}",
            f"Message-ID: {head['message_id']}",
        ]
        if head["subject"].startswith(("Re:", "Fwd:")):
            ref = f"<{self.tag}.ref{rng.getrandbits(40):010x}@mail.{INTERNAL}>"
            lines += [f"In-Reply-To: {ref}", f"References: {ref}"]
        lines += [
            f"Thread-Topic: {_encoded_subject(head['subject'])}",
            "Content-Language: cs-CZ",
            "X-MS-Has-Attach: " + ("yes" if self.size > 8192 else ""),
            "User-Agent: Microsoft Outlook 16.0",
            "MIME-Version: 1.0",
            f"Content-Type: {content_type}",
        ]
        return "\n".join(lines) + "\n" + extra

    def _body(self, budget: int) -> str:
        text = _paragraphs(self.rng, max(200, budget // 2))
        quoted = _paragraphs(self.rng, max(100, budget - len(text.encode())))
        sender = self.world.users[0]["name"]
        return f"{text}\n\n-- \n{sender}\nFirma s.r.o.\n\n" + "\n".join(
            "> " + line for line in quoted.split("\n"))

    def _render(self, i: int, head: dict, kind: str) -> Mail:
        rng = self.rng
        boundary = f"=_b{i}_{rng.getrandbits(48):012x}"
        big = self.size > 8192
        if kind == "bounce":
            raw = self._bounce(head, boundary)
        else:
            header_guess = 1800
            if big:
                text_budget = 6000
            else:
                text_budget = self.size - header_guess - (900 if kind == "invitation" else 0)
            body = self._body(max(300, int(text_budget / 1.15)))
            parts = [("text/plain; charset=utf-8", "quoted-printable", _qp(body))]
            if big:
                html = "<html><body>" + "".join(f"<p>{p}</p>" for p in body.split("\n\n")) + \
                       "</body></html>"
                parts.append(("text/html; charset=utf-8", "quoted-printable", _qp(html)))
            if kind == "invitation":
                parts.append(("text/calendar; charset=utf-8; method=REQUEST", "8bit",
                              self._ics(head).encode()))
            raw = self._mime(head, parts, boundary, big)
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        return Mail(head.get("envelope_from", head["sender"]), self.rcpts, raw)

    def _mime(self, head: dict, parts, boundary: str, big: bool) -> bytes:
        if len(parts) == 1 and not big:
            ctype, cte, data = parts[0]
            return (self._headers(head, ctype, f"Content-Transfer-Encoding: {cte}\n")
                    .encode() + b"\n" + data + b"\n")
        alt = f"{boundary}_alt"
        chunks = []
        for ctype, cte, data in parts:
            chunks.append(f"--{alt}\nContent-Type: {ctype}\n"
                          f"Content-Transfer-Encoding: {cte}\n\n".encode() + data + b"\n")
        alternative = b"".join(chunks) + f"--{alt}--\n".encode()
        if not big:
            return (self._headers(head, f'multipart/alternative; boundary="{alt}"').encode()
                    + b"\n" + alternative)
        so_far = len(alternative) + 2500
        attachment = self.rng.randbytes(max(1024, int((self.size - so_far) * 0.74)))
        name = f"Nabidka_{self.rng.randint(100, 999)}.pdf"
        return (self._headers(head, f'multipart/mixed; boundary="{boundary}"').encode()
                + b"\nThis is a multi-part message in MIME format.\n\n"
                + f"--{boundary}\nContent-Type: multipart/alternative; boundary=\"{alt}\"\n\n"
                .encode() + alternative
                + f"\n--{boundary}\nContent-Type: application/pdf; name=\"{name}\"\n"
                  f"Content-Disposition: attachment; filename=\"{name}\"\n"
                  f"Content-Transfer-Encoding: base64\n\n".encode()
                + _b64_lines(b"%PDF-1.7\n" + attachment) + f"--{boundary}--\n".encode())

    def _ics(self, head: dict) -> str:
        start = self.start + timedelta(days=self.rng.randint(1, 30), hours=self.rng.randint(0, 8))
        stamp = self.start.strftime("%Y%m%dT%H%M%SZ")
        attendees = "\n".join(f"ATTENDEE;CN={a};RSVP=TRUE:mailto:{a}" for a in head["to"])
        return ("BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//Microsoft Corporation//Outlook 16.0//EN"
                "\nMETHOD:REQUEST\nBEGIN:VEVENT\n"
                f"UID:{head['uid']}\nSEQUENCE:0\nDTSTAMP:{stamp}\n"
                f"DTSTART:{start.strftime('%Y%m%dT%H%M%SZ')}\n"
                f"DTEND:{(start + timedelta(hours=1)).strftime('%Y%m%dT%H%M%SZ')}\n"
                f"SUMMARY:{head['subject']}\nLOCATION:Zasedačka 2\n"
                f"ORGANIZER;CN=Organizer:mailto:{head['sender']}\n{attendees}\n"
                "END:VEVENT\nEND:VCALENDAR\n")

    def _bounce(self, head: dict, boundary: str) -> bytes:
        failed = head["failed"]
        original = (f"From: {head['to'][0]}\nTo: {failed}\nSubject: Nabídka\n"
                    f"Date: {head['date']}\nMessage-ID: <orig.{head['message_id'][1:]}\n")
        text = ("This is the mail system at host mail.firma.cz.\n\nI'm sorry to have to "
                "inform you that your message could not\nbe delivered to one or more "
                f"recipients.\n\n<{failed}>: host mx.example said: 550 5.1.1 User unknown\n")
        budget = self.size - 2600 - len(text) - len(original)
        filler = _paragraphs(self.rng, max(100, budget))
        report = (f"Reporting-MTA: dns; mail.{INTERNAL}\nArrival-Date: {head['date']}\n\n"
                  f"Final-Recipient: rfc822; {failed}\nOriginal-Recipient: rfc822;{failed}\n"
                  "Action: failed\nStatus: 5.1.1\nRemote-MTA: dns; mx.example\n"
                  "Diagnostic-Code: smtp; 550 5.1.1 User unknown\n")
        body = (f"--{boundary}\nContent-Description: Notification\n"
                "Content-Type: text/plain; charset=us-ascii\n\n" + text + "\n"
                f"--{boundary}\nContent-Description: Delivery report\n"
                "Content-Type: message/delivery-status\n\n" + report + "\n"
                f"--{boundary}\nContent-Description: Undelivered Message\n"
                "Content-Type: message/rfc822\nContent-Transfer-Encoding: 8bit\n\n"
                + original + "Content-Type: text/plain; charset=utf-8\n"
                "Content-Transfer-Encoding: 8bit\n\n" + filler + "\n"
                f"--{boundary}--\n")
        ctype = (f'multipart/report; report-type=delivery-status;\n\tboundary="{boundary}"')
        return self._headers(head, ctype).encode() + b"\n" + body.encode()


def build(profile: str, count: int, seed: int = 1) -> list[Mail]:
    """``count`` messages of ``profile``; the same arguments always give the same bytes."""
    return Builder(profile, seed).build(count)


def dot_stuff(raw: bytes) -> bytes:
    """The DATA payload: dot-stuffed, CRLF-terminated, with the final dot line."""
    if raw.startswith(b"."):
        raw = b"." + raw
    raw = raw.replace(b"\r\n.", b"\r\n..")
    if not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    return raw + b".\r\n"
