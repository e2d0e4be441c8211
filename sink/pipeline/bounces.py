"""SPEC 5 step 8, bounces (seed 000 ch. 13): addresses a message could not be delivered to.

Two ways to know them:

- an RFC 3464 delivery report (``multipart/report; report-type=delivery-status``): every
  per-recipient block whose ``Action`` is ``failed`` gives its ``Final-Recipient``. A report that
  is only ``delayed``, ``delivered``, ``relayed`` or ``expanded`` changes nothing;
- without a report, the plain-text forms: the seed's two ("Undeliverable Mail" / "Undelivered
  Mail") and those Exchange / Outlook.com and Gmail send. The addresses are those in the body
  before the returned original starts.

Addresses of the box, internal ones, users' and the reporting system's own are never taken.
Contacts and companies with such an address get ``non_functional``; none: forbidden ``broken``.
The activity made from a bounce is not completed.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value

from sink.mail.parse import is_valid_address, own_parts, part_text
from sink.pipeline.context import Context
from sink.pipeline.result import PASS, Result
from sink.pipeline.side_effects import BROKEN, describe, forbid, set_flags
from sink.mail.textnorm import fold_address

STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
MAX_RECIPIENTS = 1000
SYSTEM_LOCAL_PARTS = frozenset({"mailer-daemon", "postmaster"})


@dataclass(frozen=True)
class BounceForm:
    """A plain-text bounce: the subject contains one of ``subject``, and for every group in
    ``body`` the body contains one of its phrases (all compared folded)."""
    name: str
    subject: tuple[str, ...]
    body: tuple[tuple[str, ...], ...]


FORMS = (
    # Seed 000 ch. 13, as written.
    BounceForm("undeliverable-mail", ("undeliverable mail",),
               (("the following mail failed to be delivered",), ("to:",))),
    # Seed 000 ch. 13, and Postfix's bounce ("... your message could not\nbe delivered to one
    # or more recipients"; folding joins the line break).
    BounceForm("undelivered-mail", ("undelivered mail",),
               (("message could not",), ("be delivered to one or more recipients",))),
    # Exchange and Outlook.com non-delivery reports ("Undeliverable: <subject>").
    BounceForm("exchange", ("undeliverable:",),
               (("delivery has failed to these recipients or groups", "couldn't be delivered",
                 "could not be delivered", "wasn't delivered"),)),
    # Gmail ("Delivery Status Notification (Failure)").
    BounceForm("gmail", ("delivery status notification (failure)",),
               (("wasn't delivered to", "delivery to the following recipient failed permanently",
                 "delivery to the following recipients failed permanently",
                 "message could not be delivered", "couldn't be delivered"),)),
)

# Where a plain-text bounce starts quoting the returned message (or its machine-readable
# report): addresses after it are the original's, not the failed recipients.
_ORIGINAL_STARTS = re.compile(
    r"^\s*(?:-+\s*original message\s*-+|original message headers|"
    r"-+\s*(?:below this line is a copy of the message|this is a copy of the message).*|"
    r"diagnostic information for administrators|reporting-mta\s*:|return-path\s*:|"
    r"received\s*:\s*from|message-id\s*:)",
    re.IGNORECASE | re.MULTILINE)
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


# ----------------------------------------------------------------------------- RFC 3464

def _param(part: Message, name: str) -> str:
    try:
        value = part.get_param(name)
    except Exception:
        return ""
    if value is None:
        return ""
    return str(collapse_rfc2231_value(value)).strip().lower()


def _status_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status part (per message, then per recipient)."""
    payload = part.get_payload()
    if isinstance(payload, list) and part.get_content_type() == "message/delivery-status":
        return [block for block in payload if isinstance(block, Message)]
    if isinstance(payload, list):     # parsed as an enclosed message: headers, then the rest
        text = "\n\n".join(b.as_string() for b in payload if isinstance(b, Message))
    else:
        text = part_text(part)
    return [email.message_from_string(block.strip() + "\n")
            for block in re.split(r"\r?\n[ \t]*\r?\n", text) if block.strip()]


def _recipient(value: str) -> str | None:
    """The address of ``Final-Recipient: rfc822; jan@acme.cz`` (address type optional)."""
    address = fold_address(value.split(";", 1)[-1])
    return address if is_valid_address(address) else None


def delivery_report(msg: Message | None) -> tuple[tuple[str, str], ...] | None:
    """(action, final recipient) for each recipient of an RFC 3464 report; None when ``msg``
    is not one."""
    for part in own_parts(msg):
        if part.get_content_type() != "multipart/report" or \
                _param(part, "report-type") not in ("delivery-status", "global-delivery-status"):
            continue
        found: list[tuple[str, str]] = []
        children = part.get_payload()
        for child in children if isinstance(children, list) else ():
            if not isinstance(child, Message) or child.get_content_type() not in STATUS_TYPES:
                continue
            for block in _status_blocks(child)[: MAX_RECIPIENTS + 1]:
                recipient = _recipient(str(block.get("Final-Recipient") or
                                           block.get("Original-Recipient") or ""))
                action = str(block.get("Action") or "").strip().lower().split(" ", 1)[0]
                if recipient and action:
                    found.append((action, recipient))
        return tuple(found)
    return None


# ----------------------------------------------------------------------------- heuristics

def bounce_form(ctx: Context) -> BounceForm | None:
    for form in FORMS:
        if any(p in ctx.subject for p in form.subject) and all(
                any(p in ctx.body for p in group) for group in form.body):
            return form
    return None


def body_addresses(text: str) -> tuple[str, ...]:
    """Addresses in a bounce's text before the returned original starts."""
    cut = _ORIGINAL_STARTS.search(text)
    head = text[: cut.start()] if cut else text
    found = (fold_address(a.strip(".")) for a in _ADDRESS.findall(head))
    return tuple(dict.fromkeys(a for a in found if is_valid_address(a)))[:MAX_RECIPIENTS]


# ----------------------------------------------------------------------------- the rule

def _eligible(ctx: Context, address: str) -> bool:
    return (address != ctx.sender and not ctx.is_ours(address)
            and address.partition("@")[0] not in SYSTEM_LOCAL_PARTS)


def bounce(ctx: Context) -> Result:
    report = delivery_report(ctx.msg.message)
    if report is not None:
        failed = [address for action, address in report if action == "failed"]
        if not failed:
            actions = ", ".join(sorted({a for a, _ in report})) or "no recipients"
            return Result("pass", detail=f"delivery report without failures ({actions})")
        source = "delivery report"
    else:
        form = bounce_form(ctx)
        if form is None:
            return PASS
        failed = list(body_addresses(ctx.msg.body_text))
        source = f"{form.name} bounce"
    addresses = [a for a in dict.fromkeys(failed) if _eligible(ctx, a)]
    flags, unknown = set_flags(ctx, addresses, {"non_functional": True})
    forbidden = forbid(ctx, unknown, BROKEN)
    detail = f"{source}: " + describe(flags, forbidden,
                                      "already recorded" if addresses else "no outside address")
    return Result("hit", detail=detail, contact_flags=flags, forbidden=forbidden,
                  completed=False)
