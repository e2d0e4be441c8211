"""The terminal filters of the chain (SPEC section 5, steps 1 and 3-7): each ends the chain with
its verdict when it applies, and passes otherwise."""

from __future__ import annotations

from sink.mail.textnorm import domain_of, fold
from sink.pipeline.context import Context
from sink.pipeline.decision import Verdict
from sink.pipeline.result import PASS, Result, hit


def duplicate(ctx: Context) -> Result:
    if ctx.seen(ctx.dedup_keys):
        return hit(Verdict.DUPLICATE, "date, sender, recipients and subject, or Message-ID, seen")
    return PASS


def spam(ctx: Context) -> Result:
    # A delivery report comes from MAILER-DAEMON without a domain, <> or no From at all, and
    # may go back to the sender it came from: that is never spam (SPEC 5 step 3).
    if ctx.delivery_report is not None:
        if ctx.sender and ctx.sender in ctx.box.spam_senders:
            return hit(Verdict.SPAM, "sender on the box's spam list")
        return PASS
    if not ctx.msg.sender_valid:
        return hit(Verdict.SPAM, f"sender {ctx.sender or '(none)'} is not a valid address")
    if ctx.recipients == (ctx.sender,):
        return hit(Verdict.SPAM, "the only recipient is the sender")
    if ctx.sender in ctx.box.spam_senders:
        return hit(Verdict.SPAM, "sender on the box's spam list")
    if ctx.sender and ctx.records.spam_listed(ctx.box.address, ctx.sender):
        return hit(Verdict.SPAM, "sender on the box's stored spam list")
    return PASS


def system_sender(ctx: Context) -> Result:
    if ctx.sender in ctx.box.system_senders:
        return hit(Verdict.SYSTEM_SENDER, ctx.sender)
    return PASS


def inform_other_users(ctx: Context) -> Result:
    subject_matches = (
        ctx.subject.startswith(ctx.folded_list("inform_subject_prefixes"))
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
