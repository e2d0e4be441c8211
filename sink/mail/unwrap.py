"""Messages that carry other messages (SPEC 2.3): each carried message is processed on its own.

- Exchange envelope journal reports (``X-MS-Journal-Report``): the original is attached as
  ``message/rfc822``; the report's body lists the real envelope (``Sender:``, ``To:``, ``Cc:``,
  ``Bcc:``, ``Recipient:`` lines) which then replaces the original's sender and recipients, so
  Bcc recipients count too.
- Wrapper messages (seed 004): a subject starting with ``"> "``; every attached e-mail is
  processed instead of the wrapper.
- PEC certified mail (seed 002): the original is the attached ``postacert.eml``.

Pure: bytes in, inner messages out. The outer message's bytes are stored as received; an inner
message's bytes are the attachment's bytes (an ``.eml`` attachment exactly; a ``message/rfc822``
part as the email package writes it back, CRLF line ends).
"""

from __future__ import annotations

import dataclasses
import email.parser
import re
from dataclasses import dataclass
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses

from sink.mail.flatten import flatten
from sink.mail.parse import (MAX_PARTS, ParsedMessage, is_valid_address, parse_message,
                            part_text, walk_parts)
from sink.mail.textnorm import fold_address

JOURNAL, WRAPPER, PEC = "journal", "wrapper", "pec"
MAX_INNER = 100
_CRLF_POLICY = compat32.clone(linesep="\r\n")


@dataclass(frozen=True)
class Inner:
    raw: bytes
    parsed: ParsedMessage


@dataclass(frozen=True)
class Unwrapped:
    kind: str
    inner: tuple[Inner, ...]


def _message_bytes(part: Message) -> bytes | None:
    """The bytes of an attached e-mail: message/rfc822 or a *.eml / application/octet-stream."""
    if part.get_content_type() == "message/rfc822":
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if not isinstance(inner, Message):
            return None
        try:
            return flatten(inner, _CRLF_POLICY)
        except Exception:        # a part the generator cannot write back (broken 8-bit, ...)
            return None
    filename = (part.get_filename() or "").lower()
    if filename.endswith(".eml"):
        data = part.get_payload(decode=True)
        return data if isinstance(data, bytes) and data.strip() else None
    return None


def _is_attached_message(part: Message) -> bool:
    return part.get_content_type() == "message/rfc822" or \
        (part.get_filename() or "").lower().endswith(".eml")


def _carried(msg: Message, only_named: str | None = None) -> list[bytes]:
    """Messages attached to ``msg`` itself (not those nested inside them), in order."""
    found: list[bytes] = []
    queue, visited = [msg], 0
    while queue and visited < MAX_PARTS and len(found) < MAX_INNER:
        node = queue.pop(0)
        visited += 1
        payload = node.get_payload() if node.is_multipart() else []
        for part in payload if isinstance(payload, list) else []:
            if _is_attached_message(part):
                if only_named is None or (part.get_filename() or "").lower() == only_named:
                    data = _message_bytes(part)
                    if data:
                        found.append(data)
            elif part.is_multipart():
                queue.append(part)
    return found[:MAX_INNER]


def _first_address(value: str) -> str | None:
    # "To: user@x.cz, Expanded: list@x.cz" / "Forwarded: ..." - the recipient is the first one.
    head = value.split(",")[0]
    pairs = getaddresses([head])
    address = fold_address(pairs[0][1]) if pairs else ""
    return address or None


def _journal_envelope(msg: Message) -> dict[str, list[str]]:
    """The envelope lines of the report's text part (they have header syntax: parse them so)."""
    for part, _ in walk_parts(msg):
        if part.get_content_type() == "text/plain" and not part.get_filename():
            text = part_text(part)          # any charset, even an unknown one
            fields = email.parser.HeaderParser(policy=compat32).parsestr(
                text.replace("\r\n", "\n").strip() + "\n\n")
            envelope = {}
            for name in ("Sender", "To", "Cc", "Bcc", "Recipient"):
                addresses = [a for a in (_first_address(v) for v in fields.get_all(name) or [])
                             if a]
                envelope[name.lower()] = addresses
            return envelope
    return {}


def _with_envelope(parsed: ParsedMessage, envelope: dict[str, list[str]]) -> ParsedMessage:
    sender = (envelope.get("sender") or [parsed.sender])[0]
    to = tuple(dict.fromkeys(envelope.get("to", []) + envelope.get("recipient", [])))
    changes = {"sender": sender, "sender_valid": is_valid_address(sender)}
    if to or envelope.get("cc") or envelope.get("bcc"):
        changes.update(to=to or parsed.to, cc=tuple(envelope.get("cc", [])) or parsed.cc,
                       bcc=tuple(dict.fromkeys(envelope.get("bcc", []))))
    return dataclasses.replace(parsed, **changes)


def kind_of(parsed: ParsedMessage) -> str | None:
    msg = parsed.message
    if msg is None:
        return None
    if msg.get("X-MS-Journal-Report") is not None:
        return JOURNAL
    if parsed.subject.startswith("> "):
        return WRAPPER
    if str(msg.get("X-Trasporto", "")).strip().lower() == "posta-certificata":
        return PEC
    return None


def unwrap(parsed: ParsedMessage) -> Unwrapped | None:
    """The messages carried by ``parsed``, or None when it is an ordinary message - or a
    carrier too broken to unwrap, which is then stored and processed as an ordinary message
    (never raises: content must not keep a message from being stored)."""
    try:
        return _unwrap(parsed)
    except Exception:
        return None


def _unwrap(parsed: ParsedMessage) -> Unwrapped | None:
    kind = kind_of(parsed)
    if kind is None:
        return None
    msg = parsed.message
    raws = _carried(msg, only_named="postacert.eml" if kind == PEC else None)
    if kind in (JOURNAL, PEC):
        raws = raws[:1]          # one original per report / certified envelope
    if kind == JOURNAL:
        envelope = _journal_envelope(msg)
        inner = tuple(Inner(r, _with_envelope(parse_message(r), envelope)) for r in raws)
    elif kind == WRAPPER and (number := wrapper_number(parsed.subject)):
        inner = tuple(Inner(r, dataclasses.replace(parse_message(r), carrier_link=number))
                      for r in raws)
    else:
        inner = tuple(Inner(r, parse_message(r)) for r in raws)
    return Unwrapped(kind, inner) if inner else None


# seed 004: "> @<email creator name> [#<activity creator name or activity#>] <subject>"
_WRAPPER_NUMBER = re.compile(r">\s+(?:@\S+\s+)?#([A-Za-z0-9][A-Za-z0-9_./-]{0,98})")


def wrapper_number(subject: str) -> str | None:
    """The ``#NUMBER`` a wrapper's subject names for every message it carries, or None."""
    found = _WRAPPER_NUMBER.match(subject[:2000])
    number = found.group(1).rstrip(".,;:/-") if found else ""
    return number or None
