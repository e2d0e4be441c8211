"""What a reply says it follows: the Message-IDs of In-Reply-To and References, and
``#NUMBER`` / ``[#NUMBER]`` in its subject (seed 004 follow-ups). Bounded: a hostile References
header of thousands of IDs costs at most :data:`MAX_IDS` lookups."""

from __future__ import annotations

import re
from email.message import Message

MAX_IDS = 20                     # the parent and the nearest ancestors are what matter
MAX_ID_LENGTH = 500              # as stored (messages.message_id)
_ID = re.compile(r"<[^<>\s]{1,998}>")
_HASH = re.compile(r"(?<![\w#])#([A-Za-z0-9][A-Za-z0-9_./-]{0,98})")
_THREAD_HEADERS = frozenset({"in-reply-to", "references"})
_BRACKET_HASH = re.compile(r"\[#([0-9]{1,9})\]")


def _header(msg: Message | None, name: str) -> str:
    if msg is None:
        return ""
    try:
        values = msg.get_all(name) or []
        return " ".join(str(v)[:64 * 1024] for v in values)
    except Exception:
        return ""


def followed_ids(msg: Message | None, names: frozenset[str] | None = None) -> tuple[str, ...]:
    """Message-IDs this message replies to, most wanted first: In-Reply-To, then References
    from the newest (the last) to the oldest. ``names``: its lower-cased header names, when
    known."""
    if msg is None or _THREAD_HEADERS.isdisjoint(
            (k.lower() for k in msg.keys()) if names is None else names):
        return ()                                  # most mail: one pass over the names
    parent = _ID.findall(_header(msg, "In-Reply-To"))
    refs = _ID.findall(_header(msg, "References"))
    ids = [*parent[:2], *reversed(refs[-MAX_IDS:])]
    return tuple(i for i in dict.fromkeys(ids) if len(i) <= MAX_ID_LENGTH)[:MAX_IDS]


def thread_root(msg: Message | None, own: str | None) -> str | None:
    """The thread's first Message-ID (References' first, else In-Reply-To, else the message's
    own): the key of the ticket a thread makes."""
    refs = _ID.findall(_header(msg, "References"))
    parent = _ID.findall(_header(msg, "In-Reply-To"))
    root = refs[0] if refs else parent[0] if parent else (own or "").strip() or None
    return root[:MAX_ID_LENGTH] if root else None


def hash_numbers(subject: str) -> tuple[str, ...]:
    """``#NUMBER`` tokens of a subject, in order (trailing punctuation removed)."""
    found = (m.group(1).rstrip(".,;:/-") for m in _HASH.finditer(subject[:2000]))
    return tuple(dict.fromkeys(n for n in found if n))[:10]


def bracket_numbers(subject: str) -> tuple[str, ...]:
    """``[#NUMBER]`` ticket references of a subject."""
    return tuple(dict.fromkeys(_BRACKET_HASH.findall(subject[:2000])))[:10]
