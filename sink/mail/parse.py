"""Turn stored raw bytes into the facts the rules read — defensively.

The raw bytes are already stored when this runs; nothing here may lose a message. Python's
``email`` package does the parsing (compat32 structure, which never raises on access, with
:func:`email.header.decode_header` and :func:`email.utils.getaddresses` for headers). Every
field is read under its own guard and hostile input is bounded: at most ``MAX_PARTS`` MIME parts
are visited, headers longer than ``MAX_HEADER`` are cut, and at most ``MAX_TEXT`` characters of
body reach the rules, so one message cannot stall the others.

The parser's own cost is bounded before it starts (:mod:`sink.mail.window`: lines, boundary
lines and multipart containers), attachment bodies no rule reads are left out of the parse
(:mod:`sink.mail.opaque`), and HTML becomes text in bounded time (:mod:`sink.mail.html`).
What the rules read is read cheaply where that answers the same: the header fields from one
pass over the header list, and the answers of pure functions of a header's text (its address
list, decoded subject, charset parameter) remembered for short texts.
"""

from __future__ import annotations

import email
import email.parser
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.message import Message
from email.policy import Compat32
from email.utils import getaddresses, parsedate_to_datetime
from functools import lru_cache

from sink.mail.html import html_to_text, tree_safe_html
from sink.mail.mime import message_from_bytes
from sink.mail.opaque import without_opaque_bodies
from sink.mail.textnorm import fold_address
from sink.mail.window import MAX_PARTS, parse_window

MAX_DEPTH = 50
MAX_HEADER = 64 * 1024
MAX_ADDRESSES = 5000
MAX_TEXT = 512 * 1024

_FOLD = re.compile(r"\r?\n(?=[ \t])")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SPECIALS = set('<>()[],;:\\"')


class _LenientPolicy(Compat32):
    """compat32 that hands back 8-bit header bytes as UTF-8 text (SMTPUTF8, RFC 6532)."""

    def header_fetch_parse(self, name, value):
        if not value.isascii() and any("\udc80" <= ch <= "\udcff" for ch in value):
            value = value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
        value = value[:MAX_HEADER]
        if "\n" in value:                  # the regex costs ~1.2 us even where it finds none
            value = _FOLD.sub("", value)
        return storable(value.strip())


_POLICY = _LenientPolicy()


@dataclass(frozen=True)
class ParsedMessage:
    sender: str | None            # From address, folded; None when there is none
    sender_valid: bool
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()     # known only for own copies or a journal envelope
    subject: str = ""
    date_header: str = ""
    date: datetime | None = None
    message_id: str | None = None
    body_text: str = ""
    html: str | None = None
    content_type: str = "text/plain"
    defects: tuple[str, ...] = ()
    # SPEC 2.3: the DKIM result for the box it is decided for, and whether that authenticates
    # the From (set by sink.intake per box; the pure rules read ``authenticated``)
    dkim: str = "none"
    authenticated: bool = False
    # seed 004: the ``#NUMBER`` of the wrapper that carried this message (``> @CREATOR
    # #NUMBER subject``): it links the message to that task or ticket (SPEC 2.3)
    carrier_link: str | None = None
    message: Message | None = field(default=None, compare=False, repr=False)

    @property
    def recipients(self) -> tuple[str, ...]:
        """To + Cc + Bcc, first occurrence order, no repeats."""
        return tuple(dict.fromkeys(self.to + self.cc + self.bcc))


def storable(text: str) -> str:
    """``text`` as every database stores it: NUL (which PostgreSQL refuses in text) and lone
    surrogates (8-bit bytes that were not UTF-8) become U+FFFD. Text taken from a message must
    never make its storage fail: that would defer the message for ever."""
    # the regex reads a character at a time (~27 us per 11 KB of body text); these ask C:
    # ASCII text can only hold a NUL, and UTF-8 encoding fails on any surrogate
    if not text:
        return text
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return _UNSTORABLE.sub("\ufffd", text)
    return _UNSTORABLE.sub("\ufffd", text) if "\x00" in text else text


def is_valid_address(address: str | None) -> bool:
    """A usable mailbox: one @, a non-empty local part, a dotted domain, no specials or space."""
    if not address or address.count("@") != 1 or len(address) > 320:
        return False
    local, domain = address.split("@")
    if not local or not domain or "." not in domain.strip("."):
        return False
    if domain.startswith(".") or domain.endswith(".") or ".." in domain:
        return False
    return not any(ch.isspace() or ch in _SPECIALS for ch in address)


def decode_text_header(value: str | None) -> str:
    """RFC 2047 decoding with a fallback to the raw text for broken encodings or charsets."""
    if not value:
        return ""
    if "=?" not in value:
        # decode_header finds no encoded word without '=?' and gives [(value, None)], of
        # which make_header's one chunk prints as the value itself
        return storable(value)
    if len(value) <= 512:
        return _decode_encoded_cached(value)
    return _decode_encoded(value)


def _decode_encoded(value: str) -> str:
    try:
        return storable(str(make_header(decode_header(value))))
    except Exception:  # unknown charset, bad base64, ... keep the raw text
        return storable(value)


# The header classes decode encoded words in Python (~6 us for a short subject), and a thread's
# subject comes back with each reply: remember short ones (a pure function of the text).
_decode_encoded_cached = lru_cache(maxsize=4096)(_decode_encoded)


class _Headers:
    """``msg.get`` and ``msg.get_all`` for the few header names :func:`message_facts` reads,
    from one pass over the header list: each Message.get scans all headers lowering each name
    (~20 of them, 8 reads a message). The values are fetched through the policy as those
    methods fetch them, when asked for, so what is returned or raised is the same."""

    NAMES = ("from", "to", "cc", "date", "message-id", "subject")

    def __init__(self, msg: Message):
        self.msg = msg
        self.raw: dict[str, list[tuple[str, str]]] = {name: [] for name in self.NAMES}
        for key, value in msg.raw_items():
            found = self.raw.get(key.lower())
            if found is not None:
                found.append((key, value))

    def get(self, name: str):
        found = self.raw[name.lower()]
        return self.msg.policy.header_fetch_parse(*found[0]) if found else None

    def get_all(self, name: str):
        fetch = self.msg.policy.header_fetch_parse
        return [fetch(key, value) for key, value in self.raw[name.lower()]] or None


def _addresses(msg: Message | _Headers, name: str, defects: list[str]) -> tuple[str, ...]:
    try:
        values = tuple(str(v) for v in msg.get_all(name) or ())
        found, total = _address_list(values)
    except Exception as exc:
        defects.append(f"{name}: {type(exc).__name__}")
        return ()
    if total > MAX_ADDRESSES:
        defects.append(f"{name}: only the first {MAX_ADDRESSES} addresses read")
    return found


def _parse_address_list(values: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    """The folded addresses of these header values (the first MAX_ADDRESSES, no repeats) and
    how many there were."""
    pairs = getaddresses(list(values))
    found = []
    for _, addr in pairs[:MAX_ADDRESSES]:
        addr = fold_address(addr)
        if addr:
            found.append(addr)
    return tuple(dict.fromkeys(found)), len(pairs)


# The stdlib's address parser walks the text a character at a time in Python (~30 us for one
# "Name <address>"), and the same From/To/Cc values come back all day: remember short ones.
_parse_address_list_cached = lru_cache(maxsize=8192)(_parse_address_list)


def _address_list(values: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    if sum(len(v) for v in values) <= 512:
        return _parse_address_list_cached(values)
    return _parse_address_list(values)


_CHARSETS: dict[str, str | None] = {}     # Content-Type value -> its charset parameter


def _content_charset(part: Message) -> str | None:
    """``part.get_content_charset()``. That reads the first Content-Type (fetched through the
    policy) and nothing else of the part, and parses its parameters in Python (~7 us): the
    answer for a value seen before is the one it had then."""
    value = part.get("content-type")
    if not isinstance(value, str) or len(value) > 256:
        return part.get_content_charset()
    try:
        return _CHARSETS[value]
    except KeyError:
        charset = part.get_content_charset()
    if len(_CHARSETS) < 4096:               # (a bound: hostile mail sends a new one each)
        _CHARSETS[value] = charset
    return charset


def _decode_payload(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = "utf-8"
    try:
        charset = _content_charset(part) or "utf-8"
        return storable(payload.decode(charset, "replace"))
    except (LookupError, UnicodeError, ValueError):
        return storable(payload.decode("utf-8", "replace"))


def walk_parts(msg: Message):
    """Yield (part, depth) breadth-first, bounded in count and depth."""
    queue = [(msg, 0)]
    seen = 0
    while queue and seen < MAX_PARTS:
        part, depth = queue.pop(0)
        seen += 1
        yield part, depth
        if part.is_multipart() and depth < MAX_DEPTH:
            payload = part.get_payload()
            if isinstance(payload, list):
                queue.extend((p, depth + 1) for p in payload[: MAX_PARTS - seen])


def _is_attachment(part: Message) -> bool:
    disposition = str(part.get("Content-Disposition", "")).split(";")[0].strip().lower()
    return disposition == "attachment"


def _bodies(msg: Message, defects: list[str], root_type: str | None = None
            ) -> tuple[str, str | None]:
    """The text and HTML bodies; ``root_type``: ``msg.get_content_type()`` when the caller
    has it already (the same reads give the same answer)."""
    plain = html = None
    for part, _ in walk_parts(msg):
        if part.is_multipart() or _is_attachment(part):
            continue
        ctype = root_type if part is msg and root_type is not None else part.get_content_type()
        if ctype == "message/rfc822":
            continue
        try:
            if ctype == "text/plain" and plain is None:
                plain = _decode_payload(part)
            elif ctype == "text/html" and html is None:
                html = _decode_payload(part)
        except Exception as exc:
            defects.append(f"body: {type(exc).__name__}")
        if plain is not None and html is not None:
            break
    if html is not None:
        html = html[: MAX_TEXT * 4]
    text = plain if plain is not None else (html_to_text(html) if html else "")
    if html and not tree_safe_html(html):
        # the rules parse HTML into a tree (inside the transaction): give them none at all
        # rather than one that would take minutes
        defects.append("html: too big or too deeply nested for a tree; text by tag stripping")
        html = None
    return text[:MAX_TEXT], html


def _date(value: str, defects: list[str]) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except Exception:
        defects.append("date: unparseable")
        return None
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _rich_body(raw: bytes, defects: list[str]) -> str:
    """The text of a message that has no text part: Outlook's TNEF body (winmail.dat)."""
    from sink.mail.attachments import tnef_body_text   # it builds on this module
    try:
        return tnef_body_text(raw)[:MAX_TEXT]
    except Exception as exc:
        defects.append(f"tnef body: {type(exc).__name__}")
        return ""


def parse_message(raw: bytes, *, bcc: tuple[str, ...] = ()) -> ParsedMessage:
    """Parse ``raw``; never raises for content (a defect list records what was unreadable)."""
    defects: list[str] = []
    # PDF, image, ... bodies: no rule reads them (first, so that they count against no bound
    # and a big attachment costs no copy of the message)
    lean = without_opaque_bodies(raw)
    cut, reason = parse_window(lean)
    if reason:
        defects.append(f"parse: only the first {cut} of {len(lean)} bytes read ({reason})")
    window = lean[:cut] if cut < len(lean) else lean
    try:
        msg = message_from_bytes(window, _POLICY)
    except Exception as exc:
        # whatever defeats the MIME parser, the header block still says who, to whom and what
        defects.append(f"parse: {type(exc).__name__}; headers only")
        try:
            msg = email.parser.BytesParser(policy=_POLICY).parsebytes(window, headersonly=True)
        except Exception as exc2:  # pragma: no cover - compat32 reads any header block
            return ParsedMessage(sender=None, sender_valid=False,
                                 defects=(*defects, f"headers: {exc2!r}"))
    return message_facts(raw, msg, defects, bcc=bcc)


def message_facts(raw: bytes, msg: Message, defects: list[str], *,
                  bcc: tuple[str, ...] = ()) -> ParsedMessage:
    """The facts the rules read from ``msg``, the parse of ``raw`` (``defects``: what the
    parse itself found; this appends what the fields do). Shared by :func:`parse_message`
    and the one-pass parse of :mod:`sink.mail.onepass`, so both read fields the same way."""

    try:
        headers: Message | _Headers = _Headers(msg)
    except Exception:       # not a header list the parser made: read through msg as before
        headers = msg

    def header(name: str) -> str:
        try:
            return str(headers.get(name) or "")
        except Exception:
            defects.append(f"{name}: unreadable")
            return ""

    senders = _addresses(headers, "From", defects)
    sender = senders[0] if senders else None
    root_type = None
    try:
        content_type = root_type = msg.get_content_type()
    except Exception:
        content_type = "text/plain"
    try:
        body, html = _bodies(msg, defects, root_type)
    except Exception as exc:
        defects.append(f"body: {type(exc).__name__}")
        body, html = "", None
    if not body.strip() and html is None:
        body = _rich_body(raw, defects) or body
    date_header = " ".join(header("Date").split())
    message_id = header("Message-ID").strip() or None
    return ParsedMessage(
        sender=sender,
        sender_valid=len(senders) == 1 and is_valid_address(sender),
        to=_addresses(headers, "To", defects),
        cc=_addresses(headers, "Cc", defects),
        bcc=tuple(dict.fromkeys(fold_address(a) for a in bcc)),
        subject=" ".join(decode_text_header(header("Subject")).split()),
        date_header=date_header,
        date=_date(date_header, defects),
        message_id=message_id,
        body_text=body,
        html=html,
        content_type=content_type,
        defects=tuple(defects),
        message=msg,
    )


ATTACHED_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global", "text/rfc822-headers",
                                    "message/rfc822-headers"})


def own_parts(msg: Message | None):
    """The parts of ``msg`` itself, bounded like :func:`walk_parts`, without the parts of a
    message attached to it (a returned or forwarded original is not this message's content)."""
    if msg is None:
        return
    inside: set[int] = set()
    for part, _ in walk_parts(msg):
        enclosed = id(part) in inside
        if enclosed or part.get_content_type() in ATTACHED_MESSAGE_TYPES:
            payload = part.get_payload() if part.is_multipart() else None
            if isinstance(payload, list):
                inside.update(id(p) for p in payload)
        if not enclosed:
            yield part


def part_text(part: Message, limit: int = MAX_TEXT) -> str:
    """A leaf part's decoded text (transfer encoding and charset), at most ``limit`` characters;
    '' when it cannot be read."""
    try:
        return _decode_payload(part)[:limit]
    except Exception:
        return ""
