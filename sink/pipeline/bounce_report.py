"""Reading a delivery report (SPEC 5 steps 3 and 8): is this message one, and which addresses
failed, with the status code and the diagnostic text each was refused with.

Two kinds of report:

- RFC 3464 (``multipart/report; report-type=delivery-status``, and the odd forms: the
  delivery-status part under another multipart, or flattened into text): every per-recipient
  block gives ``Final-Recipient`` (or ``Original-Recipient``), ``Action``, ``Status`` and
  ``Diagnostic-Code``. A block without ``Action`` failed unless its status is 2.x.x / 4.x.x;
- plain text (Postfix, sendmail, Exim, qmail, Exchange, Gmail, Yahoo, OpenSMTPD, Domino, ...):
  recognised by its subject (:data:`sink.pipeline.bounce_text.SUBJECTS`) or by a system sender
  together with a bounce phrase. The addresses are found by Mailman's ``flufl.bounce`` and by
  our own reading of the notice (before the returned original starts); which one is used per
  dialect was measured on the corpus (docs/BOUNCES.md): both, united, because each finds
  addresses the other misses and neither takes addresses of the returned original.

Nothing here decides hard or soft (:mod:`sink.pipeline.bounce_kind`), nor whose address may be
flagged (:mod:`sink.pipeline.bounces`). Every byte is hostile: nothing raises, sizes are bounded.
"""

from __future__ import annotations

import email
import logging
import re
from dataclasses import dataclass, replace
from functools import cached_property
from email.message import Message
from email.utils import collapse_rfc2231_value

import flufl.bounce

from sink.mail.parse import ParsedMessage, is_valid_address, part_text
from sink.mail.textnorm import fold, fold_address
from sink.pipeline import bounce_text
from sink.pipeline.parts import OwnParts, read_own_parts

STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
REPORT_TYPES = ("delivery-status", "global-delivery-status")
MAX_RECIPIENTS = 1000
MAX_DIAGNOSTIC = 1000           # characters of diagnostic text kept per address
MAX_SCAN = 200_000              # characters of notice text read for addresses
SYSTEM_LOCAL_PARTS = frozenset({"mailer-daemon", "postmaster", "mailerdaemon", "mail-daemon",
                                "post_master"})
_RELAYED = re.compile(r"^\s*smtp;\s*\d\.\d{1,3}\.\d{1,3} - [A-Za-z ]+ (\d{3}[- ].*)$", re.I)
_SUBJECT_REASON = re.compile(r"^\s*returned mail\s*:\s*(?!see transcript)(.+)$", re.I)
# Message-IDs and queue ids in a notice look like addresses: hex, digits, dots and dashes only.
_ID_LIKE = re.compile(r"^[0-9a-f.\-]{20,}@")
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+=?^_`{}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_ENTRY = re.compile(r"^[ \t>*-]*(?:[245]\d\d[ -]\s*)?(?:(?:to|recipient|address|an?)\s*:\s*)?"
                    r"[<\"']?"
                    r"([A-Za-z0-9.!#$%&'*+=?^_`{}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)",
                    re.IGNORECASE | re.MULTILINE)
# flufl.bounce logs every detector it runs at INFO; that is noise in our logs.
logging.getLogger("flufl.bounce").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Failure:
    email: str
    action: str                  # failed | delayed | delivered | relayed | expanded
    status: str | None           # the enhanced status code, when the report gives one
    diagnostic: str              # the text the address was refused with ('' when none)


@dataclass(frozen=True)
class Report:
    source: str                  # "delivery report" | "<dialect> bounce"
    recipients: tuple[Failure, ...]
    notice: str = ""             # the human-readable text (its reason when no entry says)

    def context(self, failure: Failure) -> str:
        """What the notice says about ``failure``: its entry; the notice as a whole only when
        the report is about this one address (else it would lend it another's reason)."""
        if len(self.failed) > 1:
            return self._entries.get(failure.email, "")
        return clip(" ".join(self.notice[: 8 * MAX_DIAGNOSTIC].split()), 4 * MAX_DIAGNOSTIC)

    @cached_property
    def failed(self) -> tuple[Failure, ...]:
        return tuple(f for f in self.recipients if f.action == "failed")

    @cached_property
    def _entries(self) -> dict[str, str]:      # once per report, however many recipients
        return diagnostics(self.notice, tuple(f.email for f in self.failed))


def find_status(text: str) -> str | None:
    """The first enhanced status code (RFC 3463) in ``text``; qmail writes it as ``#5.1.1``."""
    match = _STATUS.search(text or "")
    return ".".join(match.groups()) if match else None


def refine(status: str | None, diagnostic: str) -> str | None:
    """A generic status (none, x.0.0, or x.y.0 like Amazon SES's 5.1.0 "Unknown address
    error") gives way to a more specific code in the remote server's reply."""
    if status is not None and not status.endswith(".0"):
        return status
    for match in _STATUS.finditer(diagnostic or ""):
        code = ".".join(match.groups())
        if code != status and not code.endswith(".0.0"):
            return code
    return status


def read_report(msg: ParsedMessage, parts: OwnParts | None = None) -> Report | None:
    """The delivery report ``msg`` is, or None. Never raises. ``parts``: its own parts when
    already read (:attr:`sink.pipeline.context.Context.own_parts`)."""
    try:
        parts = parts if parts is not None else read_own_parts(msg.message)
        report = rfc3464(msg.message, parts)
        if report is None or not report.recipients:
            # no report, or one whose blocks we cannot read: its text may still say
            return plain_report(msg, report is not None, parts) or report
        if any(f.action == "failed" for f in report.recipients):
            report = replace(report, notice=message_notice(msg, parts))
        return report
    except Exception:        # hostile structure: a message we cannot read is no report
        return None


# ----------------------------------------------------------------------------- RFC 3464

def _param(part: Message, name: str) -> str:
    try:
        value = part.get_param(name)
    except Exception:
        return ""
    return "" if value is None else str(collapse_rfc2231_value(value)).strip().lower()


def _status_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status part (per message, then per recipient)."""
    payload = part.get_payload()
    if isinstance(payload, list) and part.get_content_type() in STATUS_TYPES:
        return [block for block in payload if isinstance(block, Message)]
    text = "\n\n".join(b.as_string() for b in payload if isinstance(b, Message)) \
        if isinstance(payload, list) else part_text(part)
    return [email.message_from_string(block.strip() + "\n")
            for block in re.split(r"\r?\n[ \t]*\r?\n", text)[: 2 * MAX_RECIPIENTS]
            if block.strip()]


def _split_merged(blocks: list[Message]) -> list[Message]:
    """AOL and others run recipient blocks together without the blank line: one block with
    several Final-Recipient fields is cut before each of them."""
    out = []
    for block in blocks:
        if len(block.get_all("Final-Recipient") or ()) < 2:
            out.append(block)
            continue
        pieces = re.split(r"(?im)^(?=final-recipient\s*:)", block.as_string())
        out.extend(email.message_from_string(p.strip() + "\n")
                   for p in pieces[: MAX_RECIPIENTS + 1] if p.strip())
        if len(out) > MAX_RECIPIENTS:
            break
    return out


def _recipient(value: str) -> str | None:
    """The address of ``Final-Recipient: rfc822; jan@acme.cz`` (address type optional)."""
    address = fold_address(value.split(";", 1)[-1])
    return address if is_valid_address(address) else None


def _action(block: Message, status: str | None) -> str:
    action = str(block.get("Action") or "").strip().lower().split(" ", 1)[0]
    if action:
        return action
    # Some MTAs leave Action out: a 2.x.x status is a success, 4.x.x a delay.
    return {"2": "delivered", "4": "delayed"}.get((status or "5")[0], "failed")


def _failure(block: Message) -> Failure | None:
    recipient = _recipient(str(block.get("Final-Recipient") or
                               block.get("Original-Recipient") or ""))
    if recipient is None:
        return None
    diagnostic = clip(" ".join(str(block.get("Diagnostic-Code") or "").split()))
    relayed = _RELAYED.search(diagnostic)    # Amazon SES: its own generic words, then the reply
    if relayed:
        diagnostic = relayed.group(1)
    status = refine(find_status(str(block.get("Status") or "")), diagnostic)
    return Failure(recipient, _action(block, status), status, diagnostic)


def is_rfc3464(msg: Message | None, parts: OwnParts | None = None) -> bool:
    parts = parts if parts is not None else read_own_parts(msg)
    return any(_param(part, "report-type") in REPORT_TYPES
               for part in parts.of_types(("multipart/report",)))


def rfc3464(msg: Message | None, parts: OwnParts | None = None) -> Report | None:
    """The RFC 3464 report ``msg`` is, or None. Its delivery-status parts are those of a
    multipart/report of report-type delivery-status, and one wherever a broken MTA put it."""
    found: list[Failure] = []
    parts = parts if parts is not None else read_own_parts(msg)
    if not parts.has_any((*STATUS_TYPES, "multipart/report")):
        return None          # most mail: known from the part types, no part read
    status_parts = list(parts.of_types(STATUS_TYPES))
    if not status_parts and not is_rfc3464(msg, parts):
        return None
    for part in status_parts:
        for block in _split_merged(_status_blocks(part)[: MAX_RECIPIENTS + 1]):
            failure = _failure(block)
            if failure is not None and len(found) < MAX_RECIPIENTS:
                found.append(failure)
    return Report("delivery report", tuple(found))


# ----------------------------------------------------------------------------- plain text

def _flufl_addresses(message: Message | None) -> tuple[str, ...]:
    """Mailman's detectors (permanent and temporary failures: the kind is ours to decide)."""
    if message is None:
        return ()
    try:
        temporary, permanent = flufl.bounce.all_failures(message)
    except Exception:        # a detector choking on hostile input is no address
        return ()
    found = []
    for raw in (*sorted(permanent), *sorted(temporary)):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        address = fold_address(text.strip("<>."))
        if _plausible(address):
            found.append(address)
    return tuple(found)


def message_notice(msg: ParsedMessage, parts: OwnParts | None = None) -> str:
    """The notice of a report: its own text/plain parts (WorkMail and Exchange put the
    details in a second one), before the returned original starts."""
    return notice_text("\n\n".join(t for t in _texts(msg, parts) if t) or msg.body_text)


def _texts(msg: ParsedMessage, parts: OwnParts | None = None) -> list[str]:
    """The report's own texts: its text/plain parts, and the body of a multipart whose
    boundary is not where its header says (a broken MTA: the parts stay one text)."""
    texts = []
    for part, kind in (parts if parts is not None else read_own_parts(msg.message)).parts:
        # "text/plain   charset=..." (a missing ';') is still text
        if kind.split()[0] == "text/plain" and not part.get_filename():
            texts.append(part_text(part, MAX_SCAN))
        elif kind.startswith("multipart/") and isinstance(part.get_payload(), str):
            texts.append(part.get_payload()[:MAX_SCAN])
    return texts


def notice_text(text: str) -> str:
    """The notice of a plain-text bounce: the text before the returned original starts."""
    text = text[:MAX_SCAN]
    cut = bounce_text.ORIGINAL_STARTS.search(text)
    return text[: cut.start()] if cut else text


def body_addresses(text: str) -> tuple[str, ...]:
    """Addresses in a bounce's notice, in order, once each."""
    found = (fold_address(a.strip(".")) for a in _ADDRESS.findall(notice_text(text)))
    return tuple(dict.fromkeys(a for a in found if _plausible(a)))[:MAX_RECIPIENTS]


def _plausible(address: str) -> bool:
    return is_valid_address(address) and not _ID_LIKE.match(address) and "/" not in address


def _entry_starts(notice: str, addresses: tuple[str, ...]) -> list[tuple[int, str]]:
    """(offset, address) where a line starts with a failed address (``x@y``, ``<x@y>``,
    ``"x@y"``, ``* x@y``, ``To: x@y``, ``Recipient: <x@y>``): one failed recipient's entry."""
    wanted = set(addresses)
    starts = []
    for match in _ENTRY.finditer(notice):
        address = fold_address(match.group(1).strip("."))
        if address in wanted:
            starts.append((match.start(1), address))
    return starts


def diagnostics(notice: str, addresses: tuple[str, ...]) -> dict[str, str]:
    """The text about each address in a notice: its entry, from the line it starts to the next
    entry of another address. An address without an entry of its own gets none. Linear in the
    notice: a hostile one may list thousands of entries."""
    starts = _entry_starts(notice, addresses)
    ends = [len(notice)] * len(starts)
    # from the back: an entry ends where the next entry of another address starts
    for i in range(len(starts) - 2, -1, -1):
        following_offset, following_address = starts[i + 1]
        ends[i] = following_offset if following_address != starts[i][1] else ends[i + 1]
    found: dict[str, str] = {}
    for (offset, address), end in zip(starts, ends):
        if address not in found:
            chunk = notice[offset: min(end, offset + 4 * MAX_DIAGNOSTIC)]
            found[address] = clip(" ".join(chunk.split()))
    return found


def clip(text: str, limit: int = MAX_DIAGNOSTIC) -> str:
    """``text`` cut to ``limit`` characters at a word's end (a cut word is no reason)."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0]


def plain_report(msg: ParsedMessage, reported: bool = False,
                 parts: OwnParts | None = None) -> Report | None:
    """A plain-text bounce (``reported``: the message is an RFC 3464 report whose blocks could
    not be read, so its notice is read as a bounce whatever its words)."""
    subject, system = fold(msg.subject), _system_sender(msg)
    if not reported and not system and not any(p in subject for p in bounce_text.SUBJECTS):
        return None          # the common case, decided without reading the body
    dialect = bounce_text.dialect(subject, fold(msg.body_text[:MAX_SCAN]), system)
    if dialect is None and reported:
        dialect = "unreadable report"
    if dialect is None:
        return None
    if dialect == "delay":
        return Report("delay warning", ())
    notice = message_notice(msg, parts)
    # sendmail puts the reason into the subject: "Returned mail: User unknown"
    reason = _SUBJECT_REASON.match(msg.subject or "")
    if reason:
        notice = f"{notice}\n{reason.group(1).strip()}"
    embedded = _embedded_failures(msg, parts)
    if embedded:
        return Report(f"{dialect} bounce", embedded, notice)
    ours = body_addresses(notice)
    addresses = tuple(dict.fromkeys(_flufl_addresses(msg.message) + ours))[:MAX_RECIPIENTS]
    entries = diagnostics(notice, addresses)
    if entries:      # a notice listing its failed recipients: an address outside the list
        addresses = tuple(a for a in addresses if a in entries)   # is the sender's, a contact
    failures = []
    for address in addresses:
        text = entries.get(address, "")
        failures.append(Failure(address, "failed", refine(None, text), text))
    return Report(f"{dialect} bounce", tuple(failures), notice)


def _embedded_failures(msg: ParsedMessage, parts: OwnParts | None = None
                       ) -> tuple[Failure, ...]:
    """Recipient blocks of a delivery report flattened into the text (a relay, WorkMail's
    "Technical report:"): read as RFC 3464 blocks are."""
    found = []
    for text in _texts(msg, parts) or [msg.body_text]:
        if "final-recipient" not in text.lower():
            continue
        for block in re.split(r"\r?\n[ \t]*\r?\n", text)[: 2 * MAX_RECIPIENTS]:
            if re.search(r"(?im)^final-recipient\s*:", block):
                start = re.search(r"(?im)^(?:final|original)-recipient\s*:|^action\s*:", block)
                parsed = email.message_from_string(block[start.start():].strip() + "\n")
                found.extend(f for f in map(_failure, _split_merged([parsed]))
                             if f and f.action == "failed")
                if len(found) >= MAX_RECIPIENTS:
                    return tuple(found[:MAX_RECIPIENTS])
    return tuple(found)


def _system_sender(msg: ParsedMessage) -> bool:
    """The sender bounces come from: none, ``<>``, MAILER-DAEMON (with or without a domain),
    postmaster."""
    header = ""
    if msg.message is not None:
        header = str(msg.message.get("From") or "").strip().lower()
    if not msg.sender or not header or header in ("<>", '""'):
        return True
    return msg.sender.partition("@")[0] in SYSTEM_LOCAL_PARTS
