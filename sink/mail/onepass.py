"""One MIME parse for both the rules and the attachment listing (issue 16).

:func:`sink.mail.parse.parse_message` parses the message with its opaque attachment bodies left
out (:mod:`sink.mail.opaque`); :func:`sink.mail.attachments.list_attachments` used to parse it a
second time, with big base64 bodies replaced by tokens, to hash those bodies - at 100 KB that
second parse cost more than the first. :func:`parse_and_list` parses once: each opaque body
becomes a token line (a random nonce per call and the body's index), the listing decodes a
token's body straight from the raw bytes, and then each token part's payload is set back to
the empty text it has in the rules' own parse. So both results are those of the two separate
parses, by construction, and wherever the construction could differ the two separate parses
run instead:

- a parse bound (:mod:`sink.mail.window`) would cut the tokened message, or the listing's
  bounds would cut the raw bytes (then the two parses read different windows);
- a token is not exactly the whole payload of one base64 leaf (the guess about a part's extent
  was wrong), or the parser raises;
- what the rules' parse leaves out cannot be found (the message is read whole: then the tokened
  message is the raw message, and one parse still serves both).

``tests/test_parse_differential.py`` compares the results with the two separate parses over
the benchmark corpora and the real-world mail under ``tests/data``.
"""

from __future__ import annotations

import secrets
from email.message import Message

from sink.mail import attachments, window
from sink.mail.attachments import (Listing, Tree, body_only, elides_the_same,
                                   list_attachments, tree_listing)
from sink.mail.mime import message_from_bytes
from sink.mail.opaque import opaque_scan
from sink.mail.parse import _POLICY, ParsedMessage, message_facts, parse_message
from sink.mail.window import parse_window, reads_whole


# The listing's parse bounds are the rules' or looser (what _one_parse's shortcut relies on).
_LISTING_LOOSER = (2 * attachments.MAX_PARTS + 2 >= window.MAX_BOUNDARIES
                   and attachments.MAX_MULTIPARTS >= window.MAX_MULTIPARTS)


def parse_and_list(raw: bytes, *, bcc: tuple[str, ...] = ()) -> tuple[ParsedMessage, Listing]:
    """``(parse_message(raw, bcc=bcc), list_attachments(raw))`` from one parse where that is
    exact (see the module docstring); never raises for content."""
    shared = _one_parse(raw)
    if shared is None:
        return parse_message(raw, bcc=bcc), list_attachments(raw)
    msg, tree = shared
    # A message with an opaque body (a tree) has a part that is not text: never body_only,
    # whose lower-cased copy of the message would cost as much as a scan of it again.
    if tree is None and body_only(raw):
        listing = Listing((), ())           # what list_attachments answers without a parse
    else:
        tree = tree or Tree(raw, (msg, {}))
        listing = _listing_leaving_defects(tree)
    if tree is not None:
        for part in _token_parts(tree).values():
            part.set_payload("")            # the rules' parse has these bodies left out
    return message_facts(raw, msg, [], bcc=bcc), listing


def _listing_leaving_defects(tree: Tree) -> Listing:
    """The listing of ``tree``, with every part's ``defects`` as they were: decoding a payload
    records what was wrong with it there (bad base64 padding, ...), which the rules' own parse
    never had happen to it."""
    before = [(part, list(part.defects)) for part in tree.msg.walk()]
    try:
        return tree_listing(tree)
    finally:
        for part, defects in before:
            part.defects[:] = defects


def _one_parse(raw: bytes) -> tuple[Message, Tree | None] | None:
    """The parse of ``raw`` with its opaque bodies as tokens, and the listing's tree of it
    when there are tokens; None when one parse cannot serve both results exactly."""
    scan = opaque_scan(raw)
    cuts = scan.cuts
    # Without cuts both read the same bytes, and the listing's bounds are the looser ones.
    # With cuts that the listing leaves out too, it parses what the rules parse but for the
    # tokens' names: within the rules' window (checked below) it is within its own. Else the
    # listing's parse must be known to read the whole of its bytes (those of raw at most).
    if cuts and not (_LISTING_LOOSER and elides_the_same(raw, scan)) and not reads_whole(
            raw, boundaries=2 * attachments.MAX_PARTS + 2,
            multiparts=attachments.MAX_MULTIPARTS, bodies=cuts):
        return None                         # the listing reads a window: parse it its own way
    tokened, extents = _with_tokens(raw, cuts)
    if parse_window(tokened)[1]:
        return None                         # the rules read a window, with its defect
    try:
        msg = message_from_bytes(tokened, _POLICY)
    except Exception:                       # parse_message records this as a defect
        return None
    if not extents:
        return msg, None
    tree = Tree(raw, (msg, extents))
    if not _tokens_sound(tree):
        return None
    return msg, tree


def _with_tokens(raw: bytes, cuts: list[tuple[int, int]]
                 ) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """``raw`` with each cut replaced by a token line (ended like the line it replaced)."""
    if not cuts:
        return raw, {}
    nonce = secrets.token_hex(12)
    extents: dict[str, tuple[int, int]] = {}
    pieces, pos = [], 0
    for start, end in cuts:
        token = f"sink{nonce}x{len(extents)}"
        extents[token] = (start, end)
        ending = b"\r\n" if raw[end - 2:end] == b"\r\n" else b"\n"
        pieces += [raw[pos:start], token.encode() + ending]
        pos = end
    pieces.append(raw[pos:])
    return b"".join(pieces), extents


def _token_parts(tree: Tree) -> dict[str, Message]:
    """The leaves of ``tree`` whose whole payload is one of its tokens, by token (the first
    leaf of each)."""
    found: dict[str, Message] = {}
    for _, part in tree.leaves:
        payload = part.get_payload()
        if isinstance(payload, str) and payload.strip() in tree.extents:
            found.setdefault(payload.strip(), part)
    return found


def _tokens_sound(tree: Tree) -> bool:
    """Whether every token is the whole payload of a base64 leaf of its own: then the parse
    has the structure of the parse without tokens, and nothing else holds a token."""
    parts = _token_parts(tree)
    if len(parts) != len(tree.extents):   # one is elsewhere: a preamble, a header, ...
        return False
    return all(str(part.get("Content-Transfer-Encoding", "")).lower() == "base64"
               for part in parts.values())
