"""The rules, one small function each (SPEC section 5). Their order lives in ``__init__``.

A rule reads the :class:`Context` and returns a :class:`Result`: an outcome for the trace, and
optionally a verdict (which ends the pipeline), a direction, and records to create as plain data.
Rules never write anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from sink.pipeline.context import Context, dedup_keys
from sink.pipeline.decision import (ActivityAction, FlagAction, ForbiddenAction,
                                    InvitationAction, TaskAction, Verdict)
from sink.pipeline.references import KINDS, find_references, scope_token
from sink.mail.textnorm import domain_of, fold

INCOMING, OUTGOING = "incoming", "outgoing"
EMAIL_TYPE = "E-mail"


@dataclass(frozen=True)
class Result:
    outcome: str = "pass"
    verdict: str | None = None
    detail: str = ""
    direction: str | None = None
    activities: tuple[ActivityAction, ...] = ()
    tasks: tuple[TaskAction, ...] = ()
    contact_flags: tuple[FlagAction, ...] = ()
    forbidden: tuple[ForbiddenAction, ...] = ()
    invitations: tuple[InvitationAction, ...] = ()
    # Merged into ctx.facts for the rules after this one (e.g. {"completed": False}).
    facts: Mapping[str, object] = field(default_factory=dict)


PASS = Result()


def hit(verdict: str, detail: str = "") -> Result:
    return Result("hit", verdict, detail)


# --------------------------------------------------------------------------- terminal filters

def duplicate(ctx: Context) -> Result:
    if ctx.seen(dedup_keys(ctx.msg)):
        return hit(Verdict.DUPLICATE, "date, sender, recipients and subject, or Message-ID, seen")
    return PASS


def spam(ctx: Context) -> Result:
    if not ctx.msg.sender_valid:
        return hit(Verdict.SPAM, f"sender {ctx.sender or '(none)'} is not a valid address")
    if ctx.recipients == (ctx.sender,):
        return hit(Verdict.SPAM, "the only recipient is the sender")
    if ctx.sender in ctx.box.spam_senders:
        return hit(Verdict.SPAM, "sender on the box's spam list")
    return PASS


def system_sender(ctx: Context) -> Result:
    if ctx.sender in ctx.box.system_senders:
        return hit(Verdict.SYSTEM_SENDER, ctx.sender)
    return PASS


def inform_other_users(ctx: Context) -> Result:
    subject_matches = (
        any(ctx.subject.startswith(p) for p in ctx.folded_list("inform_subject_prefixes"))
        or any(p in ctx.subject for p in ctx.folded_list("inform_subject_contains")))
    if subject_matches and any(p in ctx.body for p in ctx.folded_list("inform_body_phrases")):
        return hit(Verdict.INFORM_OTHER_USERS)
    return PASS


def ignored_subject(ctx: Context) -> Result:
    for phrase in ctx.box.ignore_subjects:
        if fold(phrase) and fold(phrase) in ctx.subject:
            return hit(Verdict.IGNORED_SUBJECT, phrase)
    return PASS


def exception_address(ctx: Context) -> Result:
    listed = set(ctx.box.exception_addresses)
    for address in (ctx.sender, *ctx.msg.to, *ctx.msg.cc):
        if address in listed:
            return hit(Verdict.EXCEPTION_ADDRESS, address)
    return PASS


def exception_domain(ctx: Context) -> Result:
    if ctx.counterparts and all(ctx.is_exception_domain(a) for a in ctx.counterparts):
        return hit(Verdict.EXCEPTION_DOMAIN,
                   ", ".join(sorted({domain_of(a) for a in ctx.counterparts})))
    return PASS


# --------------------------------------------------------------------------- direction, records

def direction(ctx: Context) -> Result:
    recipients = ctx.recipients
    if ctx.box.address in recipients:
        return Result("hit", direction=OUTGOING, detail="the box is a recipient")
    if ctx.is_internal(ctx.sender) and not (
            len(recipients) == 1 and ctx.is_internal(recipients[0])):
        return Result("hit", direction=OUTGOING, detail="internal sender")
    return Result("hit", direction=INCOMING)


def incoming(ctx: Context) -> Result:
    if ctx.direction != INCOMING:
        return Result("skip")
    users = {}
    for address in ctx.recipients:
        user = ctx.user(address)
        if user is not None and address != ctx.box.address:
            users.setdefault(user.id, user)
    if not users:
        return Result("pass", direction=OUTGOING, detail="no recipient is a user")
    acts = tuple(_activity(ctx, u, INCOMING) for u in users.values())
    return Result("hit", Verdict.PROCESSED, activities=acts)


def outgoing(ctx: Context) -> Result:
    user = ctx.user(ctx.sender)
    if user is None:
        return hit(Verdict.NOT_PROCESSED, "sender is not a user")
    return Result("hit", Verdict.PROCESSED, activities=(_activity(ctx, user, OUTGOING),))


# --------------------------------------------------------------------------- activity building

@dataclass(frozen=True)
class Links:
    contract: str | None = None
    order: str | None = None
    task: str | None = None
    type: str | None = None
    scope: str | None = None


def references(ctx: Context) -> Links:
    """Subject first, then body: the first existing number of each kind; TYPE and SCOPE from
    the first reference that carries them."""
    if "references" in ctx.facts:
        return ctx.facts["references"]
    keywords = {k: ctx.box.rule_list(f"{k}_keywords") for k in KINDS}
    refs = find_references(ctx.msg.subject, keywords) + find_references(ctx.msg.body_text,
                                                                         keywords)
    tables = {"contract": ctx.directory.contracts, "order": ctx.directory.orders,
              "task": ctx.directory.tasks}
    found: dict[str, str | None] = {"contract": None, "order": None, "task": None,
                                    "type": None, "scope": None}
    max_words = ctx.directory.type_max_words
    for ref in refs:
        record = tables[ref.kind].get(ref.number)
        if record is not None and found[ref.kind] is None:
            found[ref.kind] = record.number
        rest = ref.words
        for n in range(min(max_words, len(rest)), 0, -1):
            kind = ctx.directory.activity_types.get(" ".join(rest[:n]))
            if kind is not None:
                found["type"] = found["type"] or kind.number
                rest = rest[n:]
                break
        if rest and found["scope"] is None:
            found["scope"] = scope_token(rest[0])
    links = Links(**found)
    ctx.facts["references"] = links
    return links


def _scope(links: Links, role: str | None) -> str:
    if links.scope == "p-":
        return "none"
    if links.scope:
        return f"level:{links.scope[1]}"
    return f"role:{role}" if role else "none"


def _linked(ctx: Context) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if "linked" in ctx.facts:
        return ctx.facts["linked"]
    contacts: dict[str, None] = {}
    companies: dict[str, None] = {}
    for address in ctx.counterparts:
        if ctx.is_exception_domain(address):
            continue
        for contact in ctx.directory.contacts.get(address, ()):
            contacts[contact.email] = None
            if contact.company:        # mail with a company's contact belongs to the company
                companies[contact.company] = None
        for company in ctx.directory.companies_by_address.get(address, ()):
            companies[company.name] = None
        domain = domain_of(address)
        if domain not in ctx.free_mail:
            for company in ctx.directory.companies_by_domain.get(domain, ()):
                companies[company.name] = None
    ctx.facts["linked"] = (tuple(contacts), tuple(companies))
    return ctx.facts["linked"]


def _activity(ctx: Context, user, way: str) -> ActivityAction:
    links = references(ctx)
    email_type = ctx.directory.activity_type(EMAIL_TYPE)
    kind = (links.type if way == OUTGOING and links.type else
            (email_type.number if email_type else EMAIL_TYPE))
    pending = way == INCOMING and ctx.box.incoming_as_pending
    contacts, companies = _linked(ctx)
    return ActivityAction(
        responsible=user.email,
        direction=way,
        type=kind,
        scope=_scope(links, user.role),
        subject=ctx.msg.subject,
        text=ctx.msg.body_text,
        date=ctx.msg.date,
        contract=links.contract,
        order=links.order,
        task=links.task,
        completed=ctx.facts.get("completed", True) and not pending,
        due=pending,
        original_attached=ctx.sender in ctx.box.save_originals_from,
        contacts=contacts,
        companies=companies,
    )
