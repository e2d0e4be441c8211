"""Direction and the activities (SPEC section 5, steps 9-11), and how an activity is built:
type, scope and links from the references and the counterparts the context worked out."""

from __future__ import annotations

from sink.pipeline.context import INCOMING, OUTGOING, Context, Links
from sink.pipeline.decision import ActivityAction, Verdict
from sink.pipeline.result import Result, hit

EMAIL_TYPE = "E-mail"

# The outcomes that say the same for every message, built once (a Result costs microseconds).
_BOX_RECIPIENT = Result("hit", direction=OUTGOING, detail="the box is a recipient")
_INTERNAL_SENDER = Result("hit", direction=OUTGOING, detail="internal sender")
_INCOMING = Result("hit", direction=INCOMING)
_SKIP = Result("skip")
_NO_RECIPIENT_USER = Result("pass", direction=OUTGOING, detail="no recipient is a user")


def direction(ctx: Context) -> Result:
    recipients = ctx.recipients
    if ctx.box.address in recipients:
        return _BOX_RECIPIENT
    if ctx.is_internal(ctx.sender) and not (
            len(recipients) == 1 and ctx.is_internal(recipients[0])):
        return _INTERNAL_SENDER
    return _INCOMING


def incoming(ctx: Context) -> Result:
    if ctx.direction != INCOMING:
        return _SKIP
    users = {}
    for address in ctx.recipients:
        user = ctx.user(address)
        if user is not None and address != ctx.box.address:
            users.setdefault(user.id, user)
    if not users:
        return _NO_RECIPIENT_USER
    acts = tuple(_activity(ctx, u, INCOMING) for u in users.values())
    return Result("hit", Verdict.PROCESSED, activities=acts)


def outgoing(ctx: Context) -> Result:
    user = ctx.user(ctx.sender)
    if user is None:
        return _for_owner(ctx)
    return Result("hit", Verdict.PROCESSED, activities=(_activity(ctx, user, OUTGOING),))


def _for_owner(ctx: Context) -> Result:
    """Mail no user takes part in: the box's owner records it when an admin rule (link_from,
    link_to) or a ticket wants it (SPEC 5 step 11); a ticket alone gives TICKET_*."""
    from sink.pipeline import helpdesk
    why = helpdesk.owner_wanted(ctx)
    owner = ctx.user(ctx.box.owner) if why and ctx.box.owner else None
    if owner is not None:
        way = OUTGOING if ctx.is_ours(ctx.sender) else INCOMING
        act = _activity(ctx, owner, way, helpdesk.owner_links(ctx, why))
        return Result("hit", Verdict.PROCESSED, f"for the box owner ({why})",
                      activities=(act,))
    plan = ctx.ticket_plan
    if plan is not None:
        return hit(Verdict.TICKET_CREATED if plan.action == "created"
                   else Verdict.TICKET_UPDATED, "sender is not a user")
    return hit(Verdict.NOT_PROCESSED, "sender is not a user")



def _scope(links: Links, role: str | None) -> str:
    if links.scope == "p-":
        return "none"
    if links.scope:
        return f"level:{links.scope[1]}"
    return f"role:{role}" if role else "none"


def _activity(ctx: Context, user, way: str, linked=None) -> ActivityAction:
    links = ctx.links
    email_type = ctx.directory.activity_type(EMAIL_TYPE)
    kind = (links.type if way == OUTGOING and links.type else
            (email_type.number if email_type else EMAIL_TYPE))
    pending = way == INCOMING and ctx.box.incoming_as_pending
    contacts, companies = ctx.linked if linked is None else linked
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
        ticket=links.ticket,
        new_ticket=links.new_ticket,
        completed=ctx.completed and not pending,
        due=pending,
        original_attached=ctx.sender in ctx.box.save_originals_from,
        contacts=contacts,
        companies=companies,
    )
