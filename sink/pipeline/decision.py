"""What the pipeline decides, as plain data: a verdict, records to create, a trace.

Nothing here touches a database; the executor (``sink.executor``) turns a Decision into rows,
``check`` prints it as JSON without writing anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
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
    AUTO_REPLY = "AUTO_REPLY"
    LOOP = "LOOP"
    RULE_IGNORED = "RULE_IGNORED"
    TICKET_CREATED = "TICKET_CREATED"
    TICKET_UPDATED = "TICKET_UPDATED"


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
    ticket: str | None = None        # the ticket's number, where known when deciding
    completed: bool = True
    due: bool = False
    original_attached: bool = False
    contacts: tuple[str, ...] = ()   # contact e-mails
    companies: tuple[str, ...] = ()  # company names
    # the message creates a ticket whose number the executor assigns: link to it when stored
    new_ticket: bool = False

    def as_json(self) -> dict:
        data = asdict(self)
        for private in ("subject", "text", "date", "new_ticket"):
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
class BounceAction:
    """One failed address of a delivery report (SPEC 5 step 8): only a hard one flags."""
    email: str
    kind: str                        # "hard" | "soft"
    status: str | None               # the enhanced status code, when the report has one
    reason: str = ""                 # the diagnostic text (stored, not in the JSON)

    def as_json(self) -> dict:
        return {"email": self.email, "kind": self.kind, "status": self.status}


@dataclass(frozen=True)
class TicketAction:
    """A help-desk ticket created or updated (SPEC 4, 5 steps 7a/7b). A created ticket's
    number is assigned when it is stored (``check`` shows null); ``thread`` is the root
    Message-ID of the mail thread, so two messages of one new thread make one ticket."""
    action: str                      # "created" | "updated"
    number: str | None
    title: str
    rule: str                        # "support-address" | "follow-up" | "admin:NAME"
    box: str = ""
    description: str = ""
    contact: str | None = None       # contact e-mail of the sender
    company: str | None = None       # company name of the sender
    thread: str | None = None
    # an update_ticket rule's number that is no ticket yet: the ticket is created with it
    # (SPEC 5: "updated, or created when it does not exist"), unless another box has it
    wanted: str | None = None

    def as_json(self) -> dict:
        return {"action": self.action, "number": self.number, "title": self.title,
                "contact": self.contact, "company": self.company, "rule": self.rule}


@dataclass(frozen=True)
class SpamMarkAction:
    """A sender put on the box's stored spam list (admin action ``mark_spam``)."""
    box: str
    email: str
    rule: str

    def as_json(self) -> dict:
        return {"email": self.email, "rule": self.rule}


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


# The kinds of record a decision can ask for, defined once: a Result and a Decision have a
# field of each name, the executor a writer for each (sink.executor.WRITERS), and the
# check/ingest JSON a list of each (empty, never absent).
RECORD_KINDS = ("activities", "tasks", "contact_flags", "forbidden", "invitations", "bounces",
                "tickets", "spam_marks")
# In the JSON although no rule makes them yet (SPEC section 6: lists are empty, never absent).
JSON_ONLY_KINDS: tuple[str, ...] = ()
# Recorded but not in the check/ingest JSON (SPEC 6 fixes its lists; the trace says it).
NOT_IN_JSON = ("spam_marks",)


@dataclass(frozen=True)
class Decision:
    verdict: str | None
    direction: str | None = None
    activities: tuple[ActivityAction, ...] = ()
    tasks: tuple[TaskAction, ...] = ()
    contact_flags: tuple[FlagAction, ...] = ()
    forbidden: tuple[ForbiddenAction, ...] = ()
    invitations: tuple[InvitationAction, ...] = ()
    bounces: tuple[BounceAction, ...] = ()
    tickets: tuple[TicketAction, ...] = ()
    spam_marks: tuple[SpamMarkAction, ...] = ()
    trace: tuple[TraceEntry, ...] = ()
    dedup_keys: tuple[tuple[str, str], ...] = ()

    def records(self, kind: str) -> tuple:
        return getattr(self, kind)

    def as_json(self) -> dict:
        data = {"verdict": self.verdict, "direction": self.direction}
        for kind in RECORD_KINDS:
            if kind not in NOT_IN_JSON:
                data[kind] = [item.as_json() for item in self.records(kind)]
        for kind in JSON_ONLY_KINDS:
            data[kind] = []
        data["trace"] = [entry.as_json() for entry in self.trace]
        return data


def record_counts(decision: Decision | None) -> dict:
    """How many records of each kind (for the log line of a message)."""
    return {kind: len(decision.records(kind)) if decision else 0 for kind in RECORD_KINDS}


def empty_json() -> dict:
    """The JSON of a message no decision was made for (stored ``failed``): every list empty."""
    return Decision(verdict=None).as_json()
