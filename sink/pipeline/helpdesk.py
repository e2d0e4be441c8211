"""The box's own rules (SPEC 5 steps 7a and 7b) and threads.

- admin rules: each ``[[boxes.rules]]`` entry runs as the chain rule ``admin:NAME``; the first
  whose conditions hold acts (:func:`admin_match`, computed once per message), the ones before
  it pass, the ones after it are skipped. ``do_nothing`` ends the chain with RULE_IGNORED,
  ``mark_spam`` with SPAM (and puts the sender on the stored spam list); the ticket and link
  actions go on with the pipeline.
- ``tickets``: what :func:`ticket_plan` decided - an admin ticket action, else a follow-up
  (``[#N]`` of an existing ticket of the box, or a reply to a message that made or updated
  one), else a new ticket for mail to a support address from outside. Automatic mail never
  makes or updates a ticket.
- ``thread``: reports the stored message a reply follows (its links are inherited through
  :attr:`sink.pipeline.context.Context.links`).
"""

from __future__ import annotations

from sink.mail.textnorm import domain_of
from sink.pipeline import threads
from sink.pipeline.admin import Fields, Match, first_match
from sink.pipeline.decision import SpamMarkAction, TicketAction, Verdict
from sink.pipeline.result import PASS, Result, hit

TICKET_ACTIONS = ("create_ticket", "update_ticket")
MAX_DESCRIPTION = 100_000


def has_tickets(box) -> bool:
    return bool(box.support_addresses) or any(r.action in TICKET_ACTIONS for r in box.rules)


def admin_match(ctx) -> Match | None:
    if not ctx.box.rules:
        return None
    msg = ctx.msg
    # the context has folded subject and body already (other rules compare them too)
    return first_match(ctx.box.rules, Fields(ctx.sender, msg.to + msg.cc, msg.subject,
                                             msg.body_text, (("subject", ctx.subject),
                                                             ("body", ctx.body))))


def matched(ctx) -> Match | None:
    """The admin rule that acts, if any."""
    match = ctx.admin_match
    return match if match is not None and match.rule is not None else None


def admin_rule(name: str):
    """The chain rule ``admin:NAME``."""
    def run(ctx) -> Result:
        match = ctx.admin_match
        if match is None:
            return PASS
        if match.rule is None:
            return Result("pass", detail="; ".join(n for n in match.notes
                                                   if n.startswith(f"admin:{name}:")))
        if match.rule.name != name:
            order = [r.name for r in ctx.box.rules]
            if order.index(name) > order.index(match.rule.name):
                return Result("skip", detail=f"admin:{match.rule.name} matched first")
            return PASS
        return _act(ctx, match)
    return run


def _act(ctx, match: Match) -> Result:
    rule = match.rule
    notes = "; ".join(match.notes)
    if rule.action == "do_nothing":
        return hit(Verdict.RULE_IGNORED, rule.trace_name)
    if rule.action == "mark_spam":
        marks = (SpamMarkAction(ctx.box.address, ctx.sender, rule.trace_name),) \
            if ctx.sender else ()
        return Result("hit", Verdict.SPAM, f"{rule.trace_name}: sender marked as spam",
                      spam_marks=marks)
    detail = rule.action + (f" #{match.number}" if match.number else "")
    if rule.action in TICKET_ACTIONS and ctx.automatic:
        detail += f"; automatic mail ({ctx.automatic}): no ticket"
    if rule.action in ("link_from", "link_to") and not ctx.box.owner:
        detail += "; the box has no owner"
    return Result("hit", detail=detail + (f"; {notes}" if notes else ""))


# ------------------------------------------------------------------------------ tickets
def ticket_plan(ctx) -> TicketAction | None:
    """The ticket this message creates or updates, or None."""
    if not has_tickets(ctx.box) or ctx.automatic:
        return None
    match = matched(ctx)
    if match is not None and match.rule.action == "create_ticket":
        return _new(ctx, match.rule.trace_name)
    if match is not None and match.rule.action == "update_ticket":
        existing = ctx.records.ticket(ctx.box.address, match.number) if match.number else None
        return (_update(ctx, existing.number, match.rule.trace_name) if existing
                else _new(ctx, match.rule.trace_name, wanted=match.number))
    number = follow_up(ctx)
    if number is not None:
        return _update(ctx, number, "follow-up")
    to_support = set(ctx.msg.to + ctx.msg.cc) & set(ctx.box.support_addresses)
    if to_support and ctx.sender and not ctx.is_ours(ctx.sender):
        return _new(ctx, "support-address")
    return None


def follow_up(ctx) -> str | None:
    """``[#N]`` of an existing ticket of the box, else the ticket of the message replied to."""
    for number in threads.bracket_numbers(ctx.msg.subject):
        ticket = ctx.records.ticket(ctx.box.address, number)
        if ticket is not None:
            return ticket.number
    thread = ctx.thread
    return thread.ticket if thread is not None else None


def _sender_links(ctx) -> tuple[str | None, str | None]:
    contacts = ctx.directory.contacts.get(ctx.sender, ())
    if contacts:
        return contacts[0].email, contacts[0].company
    companies = ctx.directory.companies_by_address.get(ctx.sender, ())
    if not companies and domain_of(ctx.sender) not in ctx.free_mail:
        companies = ctx.directory.companies_by_domain.get(domain_of(ctx.sender), ())
    return None, companies[0].name if companies else None


def _new(ctx, rule: str, wanted: str | None = None) -> TicketAction:
    contact, company = _sender_links(ctx)
    return TicketAction("created", None, ctx.msg.subject, rule, ctx.box.address,
                        ctx.msg.body_text[:MAX_DESCRIPTION], contact, company,
                        threads.thread_root(ctx.msg.message, ctx.msg.message_id), wanted)


def _update(ctx, number: str, rule: str) -> TicketAction:
    contact, company = _sender_links(ctx)
    return TicketAction("updated", number, ctx.msg.subject, rule, ctx.box.address,
                        "", contact, company)


def tickets(ctx) -> Result:
    plan = ctx.ticket_plan
    if plan is None:
        if ctx.automatic and has_tickets(ctx.box):
            return Result("skip", detail=f"automatic mail ({ctx.automatic}): no ticket")
        return PASS
    what = f"{plan.action} #{plan.number}" if plan.number else plan.action
    return Result("hit", detail=f"{what} ({plan.rule})", tickets=(plan,))


# ------------------------------------------------------------------------------ threads
def thread(ctx) -> Result:
    followed = ctx.thread
    if followed is None:
        return PASS
    kept = [f"{k} {getattr(followed, k)}" for k in ("contract", "order", "task", "ticket")
            if getattr(followed, k)]
    return Result("hit", detail=f"follows #{followed.id} {followed.message_id}"
                  + (f": {', '.join(kept)}" if kept else ""))


# ------------------------------------------------------------------------------ the owner
def owner_wanted(ctx) -> str | None:
    """Why the box's owner should get the activity of mail no user takes part in."""
    match = matched(ctx)
    if match is not None and match.rule.action in ("link_from", "link_to"):
        return match.rule.action
    return "ticket" if ctx.ticket_plan is not None else None


def owner_links(ctx, why: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """link_from: the sender's contacts and companies; link_to: those of To and Cc."""
    if why == "link_from":
        return ctx.linked_for(a for a in (ctx.sender,) if a and not ctx.is_ours(a))
    if why == "link_to":
        return ctx.linked_for(a for a in ctx.msg.to + ctx.msg.cc if not ctx.is_ours(a))
    return ctx.linked
