"""SPEC 5 step 8, bounces (seed 000 ch. 13, issue 12): addresses a message could not be
delivered to, hard or soft.

The report is read once (:attr:`Context.delivery_report`, :mod:`sink.pipeline.bounce_report`):
an RFC 3464 report's failed recipients, or a plain-text bounce's addresses. Each failed address
is classified (:mod:`sink.pipeline.bounce_kind`) and recorded as a bounce; only a hard one says
the address is dead: contacts and companies with it get ``non_functional``, none: forbidden
``broken``. A soft bounce flags nothing. Delay warnings and successful reports change nothing.

Addresses of the box, internal ones, users', the sender's and the reporting system's own are
never taken. The activity made from a bounce is not completed.
"""

from __future__ import annotations

from email.message import Message

from sink.pipeline.bounce_kind import HARD, SOFT, classify
from sink.pipeline.bounce_report import (MAX_RECIPIENTS, SYSTEM_LOCAL_PARTS, Failure, Report,
                                         body_addresses, clip, refine, rfc3464)
from sink.pipeline.bounce_text import FORMS
from sink.pipeline.context import Context
from sink.pipeline.decision import BounceAction
from sink.pipeline.result import PASS, Result
from sink.pipeline.side_effects import BROKEN, describe, forbid, set_flags

SEED_FORMS = ("undeliverable-mail bounce", "undelivered-mail bounce")
__all__ = ("bounce", "body_addresses", "delivery_report", "FORMS", "MAX_RECIPIENTS")


def delivery_report(msg: Message | None) -> tuple[tuple[str, str], ...] | None:
    """(action, final recipient) for each recipient of an RFC 3464 report; None when ``msg``
    is not one."""
    report = rfc3464(msg)
    return None if report is None else tuple((f.action, f.email) for f in report.recipients)


def _eligible(ctx: Context, address: str) -> bool:
    """Not the reporter, not ours, and not whom the report is addressed to: a bounce goes back
    to the original's sender, whose address its notice repeats ("A message sent by <x>")."""
    return (address != ctx.sender and not ctx.is_ours(address)
            and address not in ctx.recipients
            and address.partition("@")[0] not in SYSTEM_LOCAL_PARTS)


def _classified(report: Report, failure: Failure, default: str):
    """(kind, status, diagnostic) of one failed address: by its own diagnostic, else by what
    the report's notice says about it (its entry, or the notice when it names one address)."""
    kind, _ = classify(failure.status, failure.diagnostic, None)
    if kind is not None:
        return kind, failure.status, failure.diagnostic
    context = report.context(failure)
    status = refine(failure.status, context)
    kind, _ = classify(status, context, None)
    if kind is None:
        kind, _ = classify(status, failure.diagnostic or context, default)
    return kind, status, clip((failure.diagnostic + " " + context).strip())


def bounces_of(ctx: Context) -> tuple[BounceAction, ...]:
    """One bounce per failed outside address of the message's delivery report."""
    report = ctx.delivery_report
    found: dict[str, BounceAction] = {}
    # The seed's two forms say nothing but "failed": that counts as hard (SPEC 5 step 8).
    default = HARD if report and report.source in SEED_FORMS else SOFT
    for failure in report.failed if report else ():
        if failure.email not in found and _eligible(ctx, failure.email):
            kind, status, diagnostic = _classified(report, failure, default)
            found[failure.email] = BounceAction(failure.email, kind, status, diagnostic)
    return tuple(found.values())


def bounce(ctx: Context) -> Result:
    report = ctx.delivery_report
    if report is None:
        return PASS
    if not report.failed:
        actions = ", ".join(sorted({f.action for f in report.recipients})) or "no recipients"
        return Result("pass", detail=f"{report.source} without failures ({actions})")
    bounces = bounces_of(ctx)
    hard = [b.email for b in bounces if b.kind == HARD]
    flags, unknown = set_flags(ctx, hard, {"non_functional": True})
    forbidden = forbid(ctx, unknown, BROKEN)
    soft = len(bounces) - len(hard)
    what = describe(flags, forbidden, "already recorded" if hard else "no hard bounce")
    detail = f"{report.source}: {what}" + (f"; {soft} soft" if soft else "")
    return Result("hit", detail=detail, contact_flags=flags, forbidden=forbidden,
                  bounces=bounces, completed=False)

