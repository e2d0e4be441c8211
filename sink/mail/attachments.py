"""What a message carries (SPEC 3): its attachment and inline parts, read from the raw bytes.

Pure: bytes in, a listing out; nothing here raises for content. The rules' parse
(:mod:`sink.mail.parse`) leaves opaque base64 bodies out, so this module parses the raw bytes
itself, with the same email package and policy, and bounded the same way:

- **Structure.** Python's MIME parser gives the tree; a part is named by its IMAP part number
  (RFC 3501: "2", "2.1"; the body of a single-part message is "1"), and a file carried by a TNEF
  part by the TNEF part's number, a slash and its place in the TNEF ("2/1").
- **Cost.** The parser is handed the message with every big base64 leaf body replaced by a token
  line (a random nonce per call and the body's index: base64 text never contains a nonce we have
  not put there). A part whose payload is exactly its token is decoded straight from the raw
  bytes, by the very function ``Message.get_payload(decode=True)`` uses for base64
  (``email._encoded_words.decode_b``), so the bytes are the email package's bytes. When a token
  shows up anywhere else the guess about a part's extent was wrong: the raw bytes are parsed
  whole instead. A message that carries another message (``message/*``) is parsed whole, because
  a nested message is written back from the parse. At most ``MAX_PARTS`` parts, ``MAX_DEPTH``
  levels and the parse window of :func:`sink.mail.window.parse_window` are read.
- **Names** are data: decoded from RFC 2231 (``filename*=``) and RFC 2047 (``=?utf-8?B?...``),
  8-bit UTF-8 as text, cut at ``MAX_NAME`` characters, stored and printed, never used as a path.
- **What is an attachment**: every leaf but the body (a ``text/plain`` or ``text/html`` part
  without a file name that is not ``Content-Disposition: attachment``); multipart containers are
  structure, not records. A nested message (``message/rfc822``) is one attachment with its
  subject; its own parts are its content. A readable TNEF is replaced by the files it carries;
  an unreadable one is one attachment with a defect.
"""

from __future__ import annotations

import binascii
import email
import email.parser
import hashlib
import mimetypes
import quopri
import re
import secrets
from dataclasses import dataclass
from email._encoded_words import decode_b   # what get_payload(decode=True) uses for base64
from email.message import Message

import pybase64

from sink.mail import tnef
from sink.mail.flatten import flatten
from sink.mail.mime import headers_of
from sink.mail.opaque import (_BASE64_CTE, _CONTENT_TYPE, _MESSAGE_TYPE, _body_start,
                              _header_start, _nocase, _only_base64)
from sink.mail.parse import _POLICY, decode_text_header, storable
from sink.mail.window import parse_window

MAX_PARTS = 10_000
MAX_DEPTH = 50
MAX_MULTIPARTS = 200          # multipart containers: the email package recurses per level
MAX_NAME = 255
MAX_FIELD = 500               # content type, content-id, nested subject
MIN_ELIDE = 4096              # smaller base64 bodies cost the parser less than finding them
MAX_PATH = 400               # characters of a part number: 50 levels, 10,000 parts
MAX_HEAD = 256 * 1024         # bytes of an attached message read for its subject
_CRLF_POLICY = _POLICY.clone(linesep="\r\n")
_PATH = re.compile(r"[0-9]{1,6}(?:\.[0-9]{1,6}){0,60}(?:/[0-9]{1,6})?")
_TNEF_HINT = (re.compile(_nocase("ms-tnef")), re.compile(_nocase("winmail.dat")))
_SURROGATES = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class Attachment:
    part: str                    # "2", "2.1"; a file inside a TNEF part: "2/1"
    name: str
    content_type: str
    size: int                    # of the decoded content
    sha256: str                  # of the decoded content
    content_id: str | None = None
    inline: bool = False
    nested_subject: str | None = None
    defect: str | None = None

    def as_json(self) -> dict:
        return {"name": self.name, "type": self.content_type, "size": self.size}


@dataclass(frozen=True)
class Listing:
    attachments: tuple[Attachment, ...] = ()
    defects: tuple[str, ...] = ()


def _text(value: str, limit: int) -> str:
    """Header text as data: 8-bit UTF-8 decoded, RFC 2047 words decoded, no NUL, cut."""
    if _SURROGATES.search(value):
        value = value.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    if "=?" in value:
        value = decode_text_header(value)
    return storable(value.strip())[:limit]


def _elide(raw: bytes) -> tuple[bytes, dict[str, tuple[int, int]], str]:
    """``raw`` with big base64 leaf bodies replaced by token lines, the raw extent of each
    token's body, and the nonce every token holds."""
    nonce = secrets.token_hex(12)
    if len(raw) < MIN_ELIDE or _MESSAGE_TYPE.search(raw):
        return raw, {}, nonce
    extents: dict[str, tuple[int, int]] = {}
    pieces, pos = [], 0
    for match in _BASE64_CTE.finditer(raw):
        if match.start() < pos:
            continue
        body = _body_start(raw, match.end() - 1)
        if body is None:
            continue
        head = max(_header_start(raw, match.start()), pos)
        boundary = raw.rfind(b"\n--", head, match.start())
        head = boundary if boundary >= 0 else head   # the part's headers follow its boundary
        kind = _CONTENT_TYPE.search(raw, head, body)
        if kind is not None and kind.group(1).lower().startswith((b"multipart/", b"message/")):
            continue
        end = raw.find(b"\n--", body)
        end = len(raw) if end < 0 else end + 1
        if end - body < MIN_ELIDE or not _only_base64(raw, body, end):
            continue
        token = f"sink{nonce}x{len(extents)}"
        extents[token] = (body, end)
        pieces += [raw[pos:body], token.encode() + b"\r\n"]
        pos = end
    if not extents:
        return raw, {}, nonce
    pieces.append(raw[pos:])
    return b"".join(pieces), extents, nonce


def elides_the_same(raw: bytes, scan) -> bool:
    """Whether :func:`_elide` leaves out of ``raw`` exactly the bodies of ``scan`` (an
    :func:`sink.mail.opaque.opaque_scan` of it), so that its parse reads what the one-pass
    parse reads (:mod:`sink.mail.onepass`): it meets the same base64 parts, in the same order,
    when the scan cut every one it met (then both begin each part's headers at the same
    place), and leaves each out unless its own reading of the type says multipart or
    message. The scan's cuts already meet _elide's other conditions (MIN_BODY > MIN_ELIDE,
    the same body extent, base64 only, no ``message/`` type anywhere)."""
    if not scan.every_one:
        return False
    for (body, _), head in zip(scan.cuts, scan.heads):
        kind = _CONTENT_TYPE.search(raw, head, body)
        if kind is not None and kind.group(1).lower().startswith((b"multipart/", b"message/")):
            return False
    return True


class Tree:
    """The MIME tree of ``raw`` (see the module docstring) and its leaves by part number."""

    def __init__(self, raw: bytes, parsed: tuple[Message, dict[str, tuple[int, int]]] | None
                 = None):
        """``parsed``: a parse of ``raw`` already made, with the raw extents of the base64
        bodies its tokens stand for (:mod:`sink.mail.onepass`; the caller has checked the
        tokens and that no bound cut the parse), instead of parsing here."""
        self.raw = raw
        self.defects: list[str] = []
        if parsed is not None:
            self.msg, self._extents = parsed
            self.leaves = self._walk()
            return
        lean, self._extents, nonce = _elide(raw)
        self.msg = self._parse(lean)
        self.leaves = self._walk()
        if self._extents and not self._tokens_sound(nonce):
            self.defects.clear()
            self._extents = {}
            self.msg = self._parse(raw)
            self.leaves = self._walk()

    def _parse(self, data: bytes) -> Message:
        cut, reason = parse_window(data, boundaries=2 * MAX_PARTS + 2, multiparts=MAX_MULTIPARTS)
        if reason:
            self.defects.append(f"parse: only the first {cut} bytes read ({reason})")
        window = data[:cut] if cut < len(data) else data
        try:
            return email.message_from_bytes(window, policy=_POLICY)
        except Exception as exc:
            self.defects.append(f"parse: {type(exc).__name__}; headers only")
            return email.parser.BytesParser(policy=_POLICY).parsebytes(window, headersonly=True)

    def _walk(self) -> list[tuple[str, Message]]:
        out: list[tuple[str, Message]] = []
        self._visit(self.msg, "", 0, out)
        return out

    def _visit(self, node: Message, path: str, depth: int, out: list) -> None:
        if len(out) >= MAX_PARTS:
            if f"parts: only the first {MAX_PARTS} read" not in self.defects:
                self.defects.append(f"parts: only the first {MAX_PARTS} read")
            return
        payload = node.get_payload()
        if node.get_content_maintype() != "multipart" or not isinstance(payload, list):
            out.append((path or "1", node))
            return
        if depth >= MAX_DEPTH:
            self.defects.append(f"parts: nested deeper than {MAX_DEPTH} levels not read")
            return
        for number, child in enumerate(payload, 1):
            self._visit(child, f"{path}.{number}" if path else str(number), depth + 1, out)

    def _tokens_sound(self, nonce: str) -> bool:
        """Whether every token stands alone as the base64 payload it replaced."""
        for _, part in self.leaves:
            payload = part.get_payload()
            if isinstance(payload, str) and nonce in payload:
                if payload.strip() not in self._extents or str(
                        part.get("Content-Transfer-Encoding", "")).lower() != "base64":
                    return False
        return True

    @property
    def extents(self) -> dict[str, tuple[int, int]]:
        """Each token of the parse and the raw extent of the base64 body it stands for."""
        return self._extents

    def part(self, path: str) -> Message | None:
        for number, part in self.leaves:
            if number == path:
                return part
        return None

    def digest(self, part: Message) -> tuple[int, str] | None:
        """Size and sha256 of a leaf's decoded content, without holding it whole, for a big
        base64 body the parse left out; None when it must be decoded whole (:meth:`content`)."""
        payload = part.get_payload()
        if not self._extents or not isinstance(payload, str):
            return None
        extent = self._extents.get(payload.strip())
        return base64_digest(self.raw, *extent) if extent is not None else None

    def content(self, part: Message) -> bytes:
        """The decoded bytes of a leaf: transfer encoding undone; a nested message as the email
        package writes it back (CRLF line ends, like a carried message's stored bytes)."""
        if part.get_content_maintype() == "message":
            return _nested_bytes(part)
        payload = part.get_payload()
        if self._extents and isinstance(payload, str):
            extent = self._extents.get(payload.strip())
            if extent is not None:
                start, end = extent
                return decode_b(self.raw[start:end].translate(None, b"\r\n"))[0]
        data = part.get_payload(decode=True)
        return data if isinstance(data, bytes) else b""


def base64_digest(raw: bytes, start: int, end: int, chunk: int = 1 << 20
                  ) -> tuple[int, str] | None:
    """``(size, sha256)`` of the base64 body ``raw[start:end]`` decoded, a chunk at a time:
    decoding a 30 MB attachment whole held its text, the text without line ends and the
    decoded bytes at once (twice the message's size). The same bytes as ``decode_b`` of the
    whole (what ``get_payload(decode=True)`` does) wherever that decodes it strictly - base64
    characters and line ends only (the parse checked), padding only at the very end; anything
    else is None and decoded whole, with decode_b's own leniency."""
    pad = raw.find(b"=", start, end)
    if pad >= 0 and raw[pad:end].translate(None, b"\r\n") not in (b"=", b"=="):
        return None
    if end - start <= chunk:
        # One piece: pybase64 drops the line ends itself (21 us per 85 KB, against 48 for
        # taking them out first). It raises where the loop below would carry a remainder.
        try:
            data = pybase64.b64decode(raw[start:end])
        except ValueError:
            pass
        else:
            return len(data), hashlib.sha256(data).hexdigest()
    digest, size, carry = hashlib.sha256(), 0, b""
    for pos in range(start, end, chunk):
        text = carry + raw[pos:min(pos + chunk, end)].translate(None, b"\r\n")
        whole = len(text) - len(text) % 4
        data = _decode_base64(text[:whole])
        digest.update(data)
        size += len(data)
        carry = text[whole:]
    if carry:
        if pad >= 0 or len(carry) == 1:     # decode_b's fallbacks decide these: whole
            return None
        data = decode_b(carry)[0]           # 2 or 3 characters: decode_b pads them
        digest.update(data)
        size += len(data)
    return size, digest.hexdigest()


def _decode_base64(text: bytes) -> bytes:
    """``binascii.a2b_base64(text)``, by pybase64's SIMD decoder where the text is strict
    base64 (what base64_digest hands it almost always: 40 times faster, 150 -> 4 us for a
    65 KB attachment); anything else by binascii, with its own leniency."""
    try:
        return pybase64.b64decode(text, validate=True)
    except ValueError:                      # binascii.Error: not strict base64
        return binascii.a2b_base64(text)


def _nested_bytes(part: Message) -> bytes:
    """A ``message/*`` part's content. The email package parses it as a message whatever its
    transfer encoding; a client that base64-encodes an attached message (the email package
    itself does for bytes) gets its encoding undone on the text as written back."""
    data = _written_body(part)
    cte = str(part.get("Content-Transfer-Encoding", "")).lower()
    if cte == "base64":
        return decode_b(b"".join(data.split()))[0]
    if cte == "quoted-printable":
        return quopri.decodestring(data)
    return data


def _nested_subject(part: Message, data: bytes) -> str | None:
    if part.get_content_type() not in ("message/rfc822", "message/global"):
        return None
    try:
        head = headers_of(data[:MAX_HEAD], _POLICY)
        return _text(str(head.get("Subject") or ""), MAX_FIELD)
    except Exception:
        return ""


def _written_body(part: Message) -> bytes:
    payload = part.get_payload()
    try:
        if part.get_content_type() in ("message/rfc822", "message/global") and \
                isinstance(payload, list) and payload:
            return flatten(payload[0], _CRLF_POLICY)
        return flatten(part, _CRLF_POLICY).partition(b"\r\n\r\n")[2]
    except Exception:               # a part the generator cannot write back
        return b""


def _filename(part: Message) -> str:
    try:
        return _text(part.get_filename() or "", MAX_NAME)
    except Exception:               # a parameter the email package cannot take apart
        return ""


def _is_body(part: Message, name: str, disposition: str | None) -> bool:
    return (part.get_content_type() in ("text/plain", "text/html") and not name
            and disposition != "attachment")


def _fallback_name(path: str, content_type: str, subject: str | None) -> str:
    if subject:
        return f"{subject[:MAX_NAME - 4]}.eml"
    if content_type.startswith("message/"):
        return f"part-{path}.eml"
    return f"part-{path}{mimetypes.guess_extension(content_type) or '.bin'}"


def _records(tree: Tree, path: str, part: Message) -> list[Attachment]:
    name = _filename(part)
    disposition = part.get_content_disposition()
    if _is_body(part, name, disposition):
        return []
    ctype = _text(part.get_content_type(), MAX_FIELD)
    content_id = _text(str(part.get("Content-ID") or ""), MAX_FIELD).strip("<>") or None
    inline = disposition != "attachment" and (disposition == "inline" or bool(content_id))
    streamed = None if tnef.is_tnef(ctype, name) or part.get_content_maintype() == "message" \
        else tree.digest(part)
    if streamed is not None:                # a big base64 file: its size and digest suffice
        size, sha256 = streamed
        return [Attachment(part=path, name=name or _fallback_name(path, ctype, None),
                           content_type=ctype, size=size, sha256=sha256,
                           content_id=content_id, inline=inline, nested_subject=None,
                           defect=None)]
    data = tree.content(part)
    nested = _nested_subject(part, data)
    defect = None
    if tnef.is_tnef(ctype, name):
        content = tnef.unpack(data)
        if content is not None and (content.files or content.text.strip()):
            return [_tnef_file(path, number, f) for number, f in enumerate(content.files, 1)]
        defect = "tnef: unreadable; kept whole"
    return [Attachment(
        part=path, name=name or _fallback_name(path, ctype, nested), content_type=ctype,
        size=len(data), sha256=hashlib.sha256(data).hexdigest(), content_id=content_id,
        inline=inline, nested_subject=nested, defect=defect)]


def _tnef_file(path: str, number: int, carried: tnef.TnefFile) -> Attachment:
    name = storable(carried.name)[:MAX_NAME]
    ctype = (mimetypes.guess_type(name, strict=False)[0] if name else None) or \
        "application/octet-stream"
    return Attachment(part=f"{path}/{number}", name=name or f"part-{path}-{number}.bin",
                      content_type=ctype, size=len(carried.data),
                      sha256=hashlib.sha256(carried.data).hexdigest())


# Searched in the lower-cased bytes, each pattern starting with a literal byte: re then skips
# ahead in C (a case-insensitive or ^-anchored pattern tries every position: 0.5 s for 15 MB).
_CONTENT_TYPE_VALUE = re.compile(rb"\ncontent-type:[ \t]*(?:\r?\n[ \t]+)?([^;\s]+)")
_NAMED = (b"content-disposition", b"name=", b"name*=", b"content-id", b"ms-tnef", b"winmail")
# What a message that has nothing but its body is made of: one text, or text and HTML as
# alternatives (each at most once).
MAX_BODY_ONLY = 1024 * 1024
_BODY_ONLY = {b"text/plain": 1, b"text/html": 1, b"multipart/alternative": 1}


def body_only(raw: bytes) -> bool:
    """Whether ``raw`` certainly has no part but its body (one text/plain and/or text/html,
    alone or as alternatives; nothing named, disposed or with a content-id): then there is
    nothing to list and the message is not parsed a second time - most mail, where the
    listing cost as much as the rules' own parse. Any doubt (a quoted header in a body, say)
    is answered False: the message is listed the long way. So is a message over
    ``MAX_BODY_ONLY`` bytes: its lower-cased copy would cost its whole size again (a 40 MB
    message peaked at twice its size here), and the long way leaves big bodies out."""
    if len(raw) > MAX_BODY_ONLY:
        return False
    low = raw.lower()
    # the content types first: one regex pass, where the six word searches below read the
    # message six times (~270 us per 100 KB, ~11 per 4 KB) - a bounce or a message with an
    # attachment is answered by its types alone
    seen: dict[bytes, int] = {}
    values = _CONTENT_TYPE_VALUE.findall(low)
    if low.startswith(b"content-type:"):
        values.append(_CONTENT_TYPE_VALUE.match(b"\n" + low[:1000]).group(1))
    for kind in values:
        seen[kind] = seen.get(kind, 0) + 1
        if seen[kind] > _BODY_ONLY.get(kind, 0):
            return False
    return not any(word in low for word in _NAMED)


def list_attachments(raw: bytes, *, shortcut: bool = True) -> Listing:
    """Every attachment of ``raw``; a part that cannot be read is a defect, never an error.
    (``shortcut=False``: parse even a message that is :func:`body_only`, for the tests.)"""
    if shortcut and body_only(raw):
        return Listing((), ())
    try:
        tree = Tree(raw)
    except Exception as exc:  # pragma: no cover - the parse above never raises for content
        return Listing((), (f"attachments: {type(exc).__name__}",))
    return tree_listing(tree)


def tree_listing(tree: Tree) -> Listing:
    """The attachment records of the leaves of ``tree`` (see :func:`list_attachments`)."""
    found: list[Attachment] = []
    defects = list(tree.defects)
    for path, part in tree.leaves:
        try:
            found.extend(_records(tree, path, part))
        except Exception as exc:
            defects.append(f"part {path}: {type(exc).__name__}")
    return Listing(tuple(found[:MAX_PARTS]), tuple(defects))


def part_bytes(raw: bytes, path: str) -> bytes | None:
    """Exactly the decoded bytes of part ``path`` of ``raw`` (a leaf, or a file in a TNEF part);
    None when there is no such part."""
    if len(path) > MAX_PATH or not _PATH.fullmatch(path):
        return None
    number, _, inside = path.partition("/")
    tree = Tree(raw)
    part = tree.part(number)
    if part is None:
        return None
    data = tree.content(part)
    if not inside:
        return data
    content = tnef.unpack(data)
    index = int(inside)
    if content is None or not 1 <= index <= len(content.files):
        return None
    return content.files[index - 1].data


def tnef_body_text(raw: bytes) -> str:
    """The body of the first readable TNEF part as text ('' when there is none): the rules'
    text for a message that has no other (Outlook's winmail.dat without a plain part)."""
    if not any(hint.search(raw) for hint in _TNEF_HINT):
        return ""
    tree = Tree(raw)
    for _, part in tree.leaves:
        if tnef.is_tnef(part.get_content_type(), _filename(part)):
            content = tnef.unpack(tree.content(part))
            if content is not None and content.text.strip():
                return storable(content.text)
    return ""
