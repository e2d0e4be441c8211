"""The message's own MIME parts with their content types, read in one pass per message.

The bounce rule (delivery-status parts, ``multipart/report``), the invitations rule (calendar
parts) and the reading of a report's notice (its text parts) all ask "which parts of which
types does this message have". Each used to walk the tree itself and ask every part for its
content type (a scan of its headers); most mail has neither a report nor a calendar part, so
those walks found nothing. :class:`OwnParts` walks once, as :func:`sink.mail.parse.own_parts`
does, and answers the "is there one at all" question from a set.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from typing import Iterable, Iterator

from sink.mail.parse import ATTACHED_MESSAGE_TYPES, walk_parts


@dataclass(frozen=True)
class OwnParts:
    """(part, content type) of each own part, in :func:`~sink.mail.parse.own_parts` order."""
    parts: tuple[tuple[Message, str], ...]
    types: frozenset[str]

    def has_any(self, types: Iterable[str]) -> bool:
        return not self.types.isdisjoint(types)

    def of_types(self, types: Iterable[str]) -> Iterator[Message]:
        wanted = frozenset(types)
        return (part for part, kind in self.parts if kind in wanted)

    def __iter__(self) -> Iterator[Message]:
        return (part for part, _ in self.parts)


def read_own_parts(msg: Message | None) -> OwnParts:
    """The parts :func:`~sink.mail.parse.own_parts` yields, each asked its type once."""
    if msg is None:
        return OwnParts((), frozenset())
    found: list[tuple[Message, str]] = []
    inside: set[int] = set()
    for part, _ in walk_parts(msg):
        enclosed = id(part) in inside
        kind = None if enclosed else part.get_content_type()
        if enclosed or kind in ATTACHED_MESSAGE_TYPES:
            # an attached message's parts are its content, not this message's
            payload = part.get_payload() if part.is_multipart() else None
            if isinstance(payload, list):
                inside.update(id(p) for p in payload)
        if kind is not None:
            found.append((part, kind))
    return OwnParts(tuple(found), frozenset(kind for _, kind in found))
