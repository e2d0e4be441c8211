"""Automatic mail (SPEC 5 step 3a): auto-replies, and the loop guard.

An auto-reply is recognised by RFC 3834's ``Auto-Submitted`` (any value but ``no``), by the
vendor headers listed in ``rules/auto_reply_headers.txt``, or by a subject prefix from
``rules/auto_reply_subject_prefixes.txt`` together with one of Microsoft's headers
(``rules/auto_reply_ms_headers.txt``: Outlook puts those on ordinary mail too, and a person
may well write "Out of office" in a subject). A delivery report is never an auto-reply (its
sender's server wrote it; the bounce rule records it): ``ctx.delivery_report``, the report the
bounce detection read once (RFC 3464 or a plain-text dialect); Gmail's bounces, for one, carry
``Auto-Submitted: auto-replied``. Mail from MAILER-DAEMON or postmaster counts as a delivery
report too, whatever its text.

*Automatic* is wider: an auto-reply, or ``Precedence: bulk/junk/list``. Automatic mail never
creates or updates a ticket (two help desks answering each other would loop for ever).
"""

from __future__ import annotations

from email.message import Message
from functools import lru_cache

from sink.config import BoxConfig
from sink.mail.parse import ParsedMessage
from sink.mail.textnorm import fold
from sink.pipeline.bounce_report import SYSTEM_LOCAL_PARTS
from sink.pipeline.decision import Verdict
from sink.pipeline.result import PASS, Result, hit

LOOP_LIMIT = 20            # messages from one sender to one box ...
LOOP_SECONDS = 600         # ... within this time; the next ones are LOOP
_HEADER_TEXT = 200         # characters of a header value compared


def header_names(msg: Message | None) -> frozenset[str]:
    """The (lower-cased) names of the headers ``msg`` has: one pass, then every lookup of an
    absent header - nearly all of them, on ordinary mail - costs a set probe."""
    if msg is None:
        return frozenset()
    try:
        return frozenset(k.lower() for k in msg.keys())
    except Exception:
        return frozenset()


@lru_cache(maxsize=64)
def _folded(entries: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f for f in (fold(e) for e in entries) if f)


def _header(msg: Message | None, name: str, present: frozenset[str] | None = None
            ) -> str | None:
    if msg is None or (present is not None and name.lower() not in present):
        return None
    try:
        value = msg.get(name)
    except Exception:      # an undecodable header is no evidence either way
        return None
    return None if value is None else " ".join(str(value)[:_HEADER_TEXT].split())


def _listed_header(msg: Message | None, entries: tuple[str, ...],
                   present: frozenset[str]) -> str | None:
    """The first ``Name`` / ``Name: value`` entry the message carries."""
    for entry in entries:
        name, _, wanted = entry.partition(":")
        value = _header(msg, name.strip(), present)
        if value is not None and value.lower().startswith(wanted.strip().lower()):
            return entry
    return None


def is_bounce(ctx) -> bool:
    """A delivery report, or mail from MAILER-DAEMON or postmaster (Exim's and Gmail's
    plain-text bounces say Auto-Submitted: auto-replied)."""
    return (ctx.delivery_report is not None
            or ctx.sender.partition("@")[0] in SYSTEM_LOCAL_PARTS)


def auto_reply_reason(msg: ParsedMessage, box: BoxConfig,
                      present: frozenset[str] | None = None) -> str | None:
    """Why ``msg`` is an auto-reply, or None when it is not one (a bounce: see
    :func:`is_bounce`, which the context asks first). ``present``: its
    :func:`header_names`, when known."""
    present = header_names(msg.message) if present is None else present
    submitted = _header(msg.message, "Auto-Submitted", present)
    if submitted and submitted.split(";")[0].strip().lower() != "no":
        return f"Auto-Submitted: {submitted[:60]}"
    found = _listed_header(msg.message, box.rule_list("auto_reply_headers"), present)
    if found:
        return f"header {found}"
    subject = fold(msg.subject[:_HEADER_TEXT])
    prefixes = _folded(box.rule_list("auto_reply_subject_prefixes"))
    # one C-level test for the common "no prefix", then which prefix it was
    prefix = next((p for p in prefixes if subject.startswith(p)), None) \
        if subject.startswith(prefixes) else None
    if prefix:
        ms_header = _listed_header(msg.message, box.rule_list("auto_reply_ms_headers"),
                                   present)
        if ms_header:
            return f"subject {prefix!r} with {ms_header}"
    return None


def automatic_reason(msg: ParsedMessage, box: BoxConfig,
                     present: frozenset[str] | None = None) -> str | None:
    """Why ``msg`` is automatic mail (no ticket from it), or None."""
    present = header_names(msg.message) if present is None else present
    precedence = (_header(msg.message, "Precedence", present) or "").lower()
    if precedence and precedence in box.rule_list("automatic_precedence"):
        return f"Precedence: {precedence}"
    return None


# ------------------------------------------------------------------------------ the rules
def auto_reply(ctx) -> Result:
    reason = ctx.auto_reply
    if reason is None:
        return PASS
    if ctx.box.record_auto_replies:
        return Result("pass", detail=f"{reason}; recorded (record_auto_replies)")
    return hit(Verdict.AUTO_REPLY, reason)


def loop(ctx) -> Result:
    """More than LOOP_LIMIT messages from one outside sender within LOOP_SECONDS, in a box that
    makes tickets: a help desk answers mail (the CRM acknowledges a ticket), so a loop with an
    outside auto-responder can run through it; a plain bcc box answers nothing, and there a
    storm from one sender is mail to record, not a loop. The box's own people are exempt: a
    bcc sink sees every mail an employee writes, and a busy afternoon is no loop - the loop
    between an auto-responder and ours is broken on the outside side."""
    from sink.pipeline.helpdesk import has_tickets
    if not ctx.sender or not has_tickets(ctx.box) or ctx.is_ours(ctx.sender):
        return PASS
    count = ctx.records.recent_from(ctx.box.address, ctx.sender, LOOP_SECONDS)
    if count >= LOOP_LIMIT:
        return hit(Verdict.LOOP, f"{count} messages from {ctx.sender} in the last "
                                 f"{LOOP_SECONDS // 60} minutes")
    return PASS
