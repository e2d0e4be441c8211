"""Read-only answers about records the directory snapshot does not hold.

The side-effect rules need a little current state: whether a task with a problem ID exists,
the current flags of a contact or company (to report only what changes), whether an address is
already forbidden, and the revision of an invitation or an answer (so that an older SEQUENCE
never replaces a newer one). They ask a :class:`Records` object, the same way they ask ``seen``:
``sink.db.records.DbRecords`` answers from the message's own transaction, :class:`MemoryRecords`
from dictionaries (unit tests, and the default when nothing is known).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol

FLAGS = ("allow_emails", "allow_bulk_emails", "non_functional")
DEFAULT_FLAGS: Mapping[str, bool] = {"allow_emails": True, "allow_bulk_emails": True,
                                     "non_functional": False}


@dataclass(frozen=True)
class TaskState:
    number: str
    subject: str
    status: str | None


@dataclass(frozen=True)
class TicketState:
    number: str
    box: str
    title: str


@dataclass(frozen=True)
class ThreadState:
    """An earlier stored message of the box that a reply names, and the links it made."""
    id: int                          # its row id
    message_id: str                  # its Message-ID
    contract: str | None = None
    order: str | None = None
    task: str | None = None
    ticket: str | None = None


class Records(Protocol):
    def task(self, number: str) -> TaskState | None:
        """The task with exactly this number, or None."""

    def task_number(self, folded: str) -> str | None:
        """The stored number of the task whose number folds to ``folded`` (references compare
        folded), or None."""

    def flags(self, entity: str, entity_id: int) -> Mapping[str, bool]:
        """Current flags of a contact or company (``entity`` is "contact" or "company")."""

    def forbidden(self, email: str, kind: str) -> bool:
        """Whether ``email`` is already a forbidden address of this type."""

    def invitation(self, user_id: int, uid: str) -> str | None:
        """The stored revision of this user's invitation, or None."""

    def response(self, user_id: int, uid: str, attendee: str) -> str | None:
        """The stored revision of an attendee's answer on this user's invitation, or None."""

    def ticket(self, box: str, number: str) -> TicketState | None:
        """The ticket of ``box`` with this number, or None."""

    def thread(self, box: str, message_ids: tuple[str, ...]) -> ThreadState | None:
        """The first of ``message_ids`` (Message-IDs, most wanted first) that names a message
        of ``box`` already processed, with its links; None when none does."""

    def spam_listed(self, box: str, email: str) -> bool:
        """Whether ``email`` is on the box's stored spam list."""

    def recent_from(self, box: str, sender: str, seconds: int) -> int:
        """How many messages from ``sender`` the box stored in the last ``seconds`` (copies
        of one message, DUPLICATE, not counted)."""


@dataclass
class MemoryRecords:
    """Records held in dictionaries; everything unknown reads as absent or default."""
    tasks: dict[str, TaskState] = field(default_factory=dict)
    entity_flags: dict[tuple[str, int], dict[str, bool]] = field(default_factory=dict)
    forbidden_addresses: set[tuple[str, str]] = field(default_factory=set)
    invitations: dict[tuple[int, str], str] = field(default_factory=dict)
    responses: dict[tuple[int, str, str], str] = field(default_factory=dict)
    tickets: dict[tuple[str, str], TicketState] = field(default_factory=dict)
    threads: dict[tuple[str, str], ThreadState] = field(default_factory=dict)
    spam: set[tuple[str, str]] = field(default_factory=set)
    recent: dict[tuple[str, str], int] = field(default_factory=dict)

    def task(self, number: str) -> TaskState | None:
        return self.tasks.get(number)

    def task_number(self, folded: str) -> str | None:
        return next((n for n in self.tasks if n.lower() == folded), None)

    def flags(self, entity: str, entity_id: int) -> Mapping[str, bool]:
        return {**DEFAULT_FLAGS, **self.entity_flags.get((entity, entity_id), {})}

    def forbidden(self, email: str, kind: str) -> bool:
        return (email, kind) in self.forbidden_addresses

    def invitation(self, user_id: int, uid: str) -> str | None:
        return self.invitations.get((user_id, uid))

    def response(self, user_id: int, uid: str, attendee: str) -> str | None:
        return self.responses.get((user_id, uid, attendee))

    def ticket(self, box: str, number: str) -> TicketState | None:
        return self.tickets.get((box, number))

    def thread(self, box: str, message_ids: tuple[str, ...]) -> ThreadState | None:
        return next((self.threads[(box, m)] for m in message_ids if (box, m) in self.threads),
                    None)

    def spam_listed(self, box: str, email: str) -> bool:
        return (box, email) in self.spam

    def recent_from(self, box: str, sender: str, seconds: int) -> int:
        return self.recent.get((box, sender), 0)
