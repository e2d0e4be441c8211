"""What every rule may read about one message in one box, computed once and cached, and the
two facts rules hand over (``direction``, ``completed``: :mod:`sink.pipeline.result`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Callable, Iterable

from sink.config import BoxConfig
from sink.directory import Directory, User
from sink.mail.parse import ParsedMessage
from sink.mail.textnorm import domain_of, fold, may_fold_to_colon
from sink.pipeline import threads
from sink.pipeline.bounce_report import Report, read_report
from sink.pipeline.parts import OwnParts, read_own_parts
from sink.pipeline.records import MemoryRecords, Records, ThreadState
from sink.pipeline.references import KINDS, folded_references, scope_token

INCOMING, OUTGOING = "incoming", "outgoing"

Seen = Callable[[Iterable[tuple[str, str]]], bool]


def dedup_keys(msg: ParsedMessage) -> tuple[tuple[str, str], ...]:
    """Seed 000 15.1: date, sender, all recipients (a set) and subject; and the Message-ID."""
    recipients = ",".join(sorted(set(msg.to + msg.cc)))
    material = "\x00".join((msg.date_header, msg.sender or "", recipients, msg.subject))
    keys = [("key", hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest())]
    if msg.message_id:
        keys.append(("message-id", hashlib.sha256(
            msg.message_id.encode("utf-8", "surrogatepass")).hexdigest()))
    return tuple(keys)


@lru_cache(maxsize=64)
def _lowered(entries: tuple[str, ...]) -> frozenset[str]:
    """A box's list as a set, lower-cased: the same for each of its messages."""
    return frozenset(e.lower() for e in entries)


@lru_cache(maxsize=256)
def _folded_entries(entries: tuple[str, ...]) -> tuple[str, ...]:
    """A box's phrase list folded, without the entries that fold to nothing: the same for
    each of its messages."""
    return tuple(f for f in (fold(v) for v in entries) if f)


@dataclass(frozen=True)
class Links:
    contract: str | None = None
    order: str | None = None
    task: str | None = None
    type: str | None = None
    scope: str | None = None
    ticket: str | None = None        # an existing ticket's number
    new_ticket: bool = False         # the ticket this message creates (numbered when stored)


@dataclass
class Context:
    msg: ParsedMessage
    box: BoxConfig
    directory: Directory
    seen: Seen
    records: Records = field(default_factory=MemoryRecords)
    # handed over by rules (sink.pipeline.result), applied by the chain
    direction: str | None = None
    completed: bool = True

    # -- addresses ---------------------------------------------------------------------------
    @cached_property
    def sender(self) -> str:
        return self.msg.sender or ""

    @cached_property
    def recipients(self) -> tuple[str, ...]:
        return self.msg.recipients

    @cached_property
    def internal_domains(self) -> frozenset[str]:
        return frozenset(self.box.internal_domains)

    def is_internal(self, address: str) -> bool:
        return domain_of(address) in self.internal_domains

    def user(self, address: str) -> User | None:
        return self.directory.user(address)

    @cached_property
    def free_mail(self) -> frozenset[str]:
        return _lowered(self.box.rule_list("free_mail_domains"))

    def is_exception_domain(self, address: str) -> bool:
        domain = domain_of(address)
        return domain in self.box.exception_domains or (
            self.box.block_free_mail and domain in self.free_mail)

    def is_ours(self, address: str) -> bool:
        """The box, an internal address or a user's (an alias may be in another domain)."""
        return (address == self.box.address or self.is_internal(address)
                or self.user(address) is not None)

    @cached_property
    def recipient_users(self) -> tuple[User, ...]:
        """Users among the recipients, once each, in recipient order (the box is no user)."""
        users: dict[int, User] = {}
        for address in self.recipients:
            user = self.user(address)
            if user is not None and address != self.box.address:
                users.setdefault(user.id, user)
        return tuple(users.values())

    @cached_property
    def counterparts(self) -> tuple[str, ...]:
        """Sender and recipients that are neither internal, nor users, nor the box."""
        out = []
        for address in (self.sender, *self.recipients):
            if (address and address != self.box.address and not self.is_internal(address)
                    and self.user(address) is None):
                out.append(address)
        return tuple(dict.fromkeys(out))

    # -- text --------------------------------------------------------------------------------
    @cached_property
    def subject(self) -> str:
        return fold(self.msg.subject)

    @cached_property
    def body(self) -> str:
        return fold(self.msg.body_text)

    def folded_list(self, name: str) -> tuple[str, ...]:
        return _folded_entries(self.box.rule_list(name))

    # -- MIME parts and delivery report ------------------------------------------------
    @cached_property
    def own_parts(self) -> OwnParts:
        """The message's own parts and their content types, read once for the bounce and
        invitation rules (most mail has neither a report nor a calendar part)."""
        return read_own_parts(self.msg.message)

    @cached_property
    def delivery_report(self) -> Report | None:
        """The delivery report (a bounce, a delay or a success: SPEC 5 step 8) this message
        is, or None; read once. A report is never SPAM for its sender nor an AUTO_REPLY."""
        try:
            parts = self.own_parts
        except Exception:    # hostile structure, as read_report says: no report
            return None
        return read_report(self.msg, parts)

    @cached_property
    def dedup_keys(self) -> tuple[tuple[str, str], ...]:
        """What makes this message a duplicate (SPEC 5 step 1). A delivery report counts by its
        Message-ID alone: the reports one MTA writes in one second share date, sender,
        recipient and subject, and each names other failed addresses - by the seed's key the
        second would be a DUPLICATE and its dead addresses never read."""
        keys = dedup_keys(self.msg)
        if self.delivery_report is not None:
            keys = tuple(key for key in keys if key[0] == "message-id")
        return keys

    # -- references and links -----------------------------------------------------------
    @cached_property
    def own_links(self) -> Links:
        """Subject first, then body: the first existing number of each kind; TYPE and SCOPE from
        the first reference that carries them. A TYPE that names no activity type does not
        hide the SCOPE after it (``Projekt: 2023-015 neznámý p2`` is level 2)."""
        keywords = {k: self.box.rule_list(f"{k}_keywords") for k in KINDS}
        refs = folded_references(self.subject, keywords) + self._body_references(keywords)
        tables = {"contract": self.directory.contracts, "order": self.directory.orders,
                  "task": self.directory.tasks}
        found: dict[str, str | None] = {"contract": None, "order": None, "task": None,
                                        "type": None, "scope": None}
        max_words = self.directory.type_max_words
        for ref in refs:
            if found[ref.kind] is None:
                found[ref.kind] = self._existing(tables[ref.kind], ref)
            rest = ref.words
            for n in range(min(max_words, len(rest)), 0, -1):
                kind = self.directory.activity_types.get(" ".join(rest[:n]))
                if kind is not None:
                    found["type"] = found["type"] or kind.number
                    rest = rest[n:]
                    break
            else:
                # no type named: the first word may be an unknown TYPE, the SCOPE after it
                if rest and scope_token(rest[0]) is None:
                    rest = rest[1:]
            if rest and found["scope"] is None:
                found["scope"] = scope_token(rest[0])
        return Links(**found)

    def _body_references(self, keywords) -> list:
        """The body's references; a body with no character folding to ':' has none, and is
        not folded for them (the folded body is shared: :attr:`body`)."""
        if not may_fold_to_colon(self.msg.body_text):
            return []
        return folded_references(self.body, keywords)

    @cached_property
    def links(self) -> Links:
        """The message's own references, then ``#NUMBER`` of an existing task or ticket (the
        carrying wrapper's number first, SPEC 2.3), then what the message it replies to was
        linked to (SPEC 5 "Threads"); the ticket this message creates or updates first of
        all."""
        own, thread = self.own_links, self.thread
        hashed_task = hashed_ticket = None
        carrier = (self.msg.carrier_link,) if self.msg.carrier_link else ()
        for number in carrier + threads.hash_numbers(self.msg.subject):   # the wrapper's first
            folded = fold(number)
            record = self.directory.tasks.get(folded)
            task = record.number if record else self.records.task_number(folded)
            hashed_task = hashed_task or task
            if hashed_ticket is None and number.isdigit():
                ticket = self.records.ticket(self.box.address, number)
                hashed_ticket = ticket.number if ticket else None
        plan = self.ticket_plan
        inherited = thread or ThreadState(0, "")
        return Links(
            contract=own.contract or inherited.contract,
            order=own.order or inherited.order,
            task=own.task or hashed_task or inherited.task,
            type=own.type, scope=own.scope,
            ticket=(plan.number if plan is not None else None) or hashed_ticket
            or inherited.ticket,
            new_ticket=plan is not None and plan.number is None)

    # -- help desk (sink.pipeline.helpdesk) --------------------------------------------------
    @cached_property
    def thread(self) -> ThreadState | None:
        """The earlier stored message of the box this one replies to, if any."""
        return self.records.thread(self.box.address,
                                   threads.followed_ids(self.msg.message, self.header_names))

    @cached_property
    def header_names(self) -> frozenset[str]:
        """The message's header names, lower-cased, read once: the thread, auto-reply and
        Precedence lookups ask for headers that most mail does not have."""
        from sink.pipeline.automatic import header_names
        return header_names(self.msg.message)

    @cached_property
    def auto_reply(self) -> str | None:
        from sink.pipeline.automatic import auto_reply_reason, is_bounce
        reason = auto_reply_reason(self.msg, self.box,   # headers first: cheap, and rare
                                   self.header_names)
        return None if reason is None or is_bounce(self) else reason

    @cached_property
    def automatic(self) -> str | None:
        """An auto-reply, a bounce or Precedence bulk/junk/list: never a ticket from it."""
        from sink.pipeline.automatic import automatic_reason, is_bounce
        if self.auto_reply:
            return self.auto_reply
        if is_bounce(self):
            return "a delivery report"
        return automatic_reason(self.msg, self.box, self.header_names)

    @cached_property
    def admin_match(self):
        from sink.pipeline.helpdesk import admin_match
        return admin_match(self)

    @cached_property
    def ticket_plan(self):
        from sink.pipeline.helpdesk import ticket_plan
        return ticket_plan(self)

    @cached_property
    def linked(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Contacts and companies of the counterparts (never an exception domain; a company by
        domain never for a free-mail domain)."""
        return self.linked_for(self.counterparts)

    def linked_for(self, addresses) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Contacts and companies of ``addresses``, as :attr:`linked` finds them."""
        contacts: dict[str, None] = {}
        companies: dict[str, None] = {}
        for address in addresses:
            if self.is_exception_domain(address):
                continue
            for contact in self.directory.contacts.get(address, ()):
                contacts[contact.email] = None
                if contact.company:        # mail with a company's contact belongs to the company
                    companies[contact.company] = None
            for company in self.directory.companies_by_address.get(address, ()):
                companies[company.name] = None
            domain = domain_of(address)
            if domain not in self.free_mail:
                for company in self.directory.companies_by_domain.get(domain, ()):
                    companies[company.name] = None
        return tuple(contacts), tuple(companies)

    def _existing(self, table, ref) -> str | None:
        """The number as stored, when the contract, order or task exists: in the directory, or
        for a task also one a message made (read in this transaction, so a task made by an
        earlier message of the same batch is found exactly as it would be one batch later)."""
        record = table.get(ref.number)
        if record is not None:
            return record.number
        return self.records.task_number(ref.number) if ref.kind == "task" else None
