"""What the pipeline decides, as plain data: a verdict, records to create, a trace.

Nothing here touches a database; the executor (``sink.executor``) turns a Decision into rows,
``check`` prints it as JSON without writing anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime


class Verdict:
    PROCESSED = "PROCESSED"
    NOT_PROCESSED = "NOT_PROCESSED"
    DUPLICATE = "DUPLICATE"
    TASK_CREATED = "TASK_CREATED"
    TASK_UPDATED = "TASK_UPDATED"
    INVALID_TASK = "INVALID_TASK"
    SPAM = "SPAM"
    SYSTEM_SENDER = "SYSTEM_SENDER"
    INFORM_OTHER_USERS = "INFORM_OTHER_USERS"
    IGNORED_SUBJECT = "IGNORED_SUBJECT"
    EXCEPTION_ADDRESS = "EXCEPTION_ADDRESS"
    EXCEPTION_DOMAIN = "EXCEPTION_DOMAIN"


@dataclass(frozen=True)
class ActivityAction:
    responsible: str                 # user e-mail
    direction: str                   # "incoming" | "outgoing"
    type: str                        # activity type name as the directory spells it
    scope: str                       # "role:NAME" | "level:N" | "none"
    subject: str
    text: str
    date: datetime | None
    contract: str | None = None
    order: str | None = None
    task: str | None = None
    ticket: str | None = None
    completed: bool = True
    due: bool = False
    original_attached: bool = False
    contacts: tuple[str, ...] = ()   # contact e-mails
    companies: tuple[str, ...] = ()  # company names

    def as_json(self) -> dict:
        data = asdict(self)
        for private in ("subject", "text", "date", "ticket"):
            data.pop(private)
        data["contacts"] = list(self.contacts)
        data["companies"] = list(self.companies)
        return data


@dataclass(frozen=True)
class TaskAction:
    """A task created or updated: by a troubleshooting mail (keyed by its problem ID) or by a
    "New task:" subject (its number is assigned when it is stored, so ``check`` shows null)."""
    action: str                      # "created" | "updated"
    number: str | None
    subject: str
    status: str | None = None
    solvers: tuple[str, ...] = ()    # user e-mails
    approver: str | None = None      # user e-mail
    origin: str = "troubleshooting"  # | "new-task"
    contract: str | None = None      # the problem's contract number (troubleshooting)

    def as_json(self) -> dict:
        return {"action": self.action, "number": self.number, "subject": self.subject,
                "status": self.status, "solvers": list(self.solvers), "approver": self.approver}


@dataclass(frozen=True)
class FlagAction:
    """Flags changed on one contact or company (only the flags whose value changes)."""
    entity: str                      # "contact" | "company"
    entity_id: int
    email: str                       # the address it was found by
    changes: tuple[tuple[str, bool], ...]

    def as_json(self) -> dict:
        return {"email": self.email, **dict(self.changes)}


@dataclass(frozen=True)
class ForbiddenAction:
    email: str
    type: str                        # "do-not-send" | "broken"

    def as_json(self) -> dict:
        return {"email": self.email, "type": self.type}


@dataclass(frozen=True)
class InvitationAction:
    """One user's invitation, keyed by (user, UID). ``revision`` orders versions: a write never
    replaces a larger one. A REPLY carries the attendees' answers for the organiser's copy."""
    user: str                        # user e-mail
    uid: str
    method: str                      # "REQUEST" | "CANCEL" | "REPLY"
    status: str                      # CONFIRMED, TENTATIVE, CANCELLED
    sequence: int
    revision: str
    dtstamp: str | None = None
    summary: str = ""
    location: str = ""
    dtstart: str | None = None       # ISO 8601 with offset when known
    dtstart_tzid: str | None = None
    dtend: str | None = None
    dtend_tzid: str | None = None
    rrule: str | None = None
    organizer: str | None = None
    responses: tuple[tuple[str, str], ...] = ()   # REPLY: (attendee, PARTSTAT)

    def as_json(self) -> dict:
        return {"user": self.user, "uid": self.uid, "method": self.method}


@dataclass(frozen=True)
class TraceEntry:
    rule: str
    outcome: str                     # "pass" | "hit" | "skip"
    detail: str = ""

    def as_json(self) -> dict:
        data = {"rule": self.rule, "outcome": self.outcome}
        if self.detail:
            data["detail"] = self.detail
        return data


@dataclass
class Decision:
    verdict: str
    direction: str | None = None
    activities: list[ActivityAction] = field(default_factory=list)
    tasks: list[TaskAction] = field(default_factory=list)
    contact_flags: list[FlagAction] = field(default_factory=list)
    forbidden: list[ForbiddenAction] = field(default_factory=list)
    invitations: list[InvitationAction] = field(default_factory=list)
    tickets: list = field(default_factory=list)
    trace: list[TraceEntry] = field(default_factory=list)
    dedup_keys: tuple[tuple[str, str], ...] = ()

    def as_json(self) -> dict:
        def plain(items):
            return [i.as_json() if hasattr(i, "as_json") else dict(i) for i in items]
        return {
            "verdict": self.verdict,
            "direction": self.direction,
            "activities": plain(self.activities),
            "tasks": plain(self.tasks),
            "contact_flags": plain(self.contact_flags),
            "forbidden": plain(self.forbidden),
            "invitations": plain(self.invitations),
            "tickets": plain(self.tickets),
            "trace": plain(self.trace),
        }


def empty_json() -> dict:
    """The JSON of a message no decision was made for (stored ``failed``): every list empty."""
    return Decision(verdict=None).as_json()
