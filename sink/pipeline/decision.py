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
    tasks: list = field(default_factory=list)
    contact_flags: list = field(default_factory=list)
    forbidden: list = field(default_factory=list)
    invitations: list = field(default_factory=list)
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
