"""The one place where a Decision becomes rows, inside the message's transaction."""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.engine import Connection

from sink.db import schema as t
from sink.directory import Directory
from sink.pipeline.decision import Decision
from sink.textnorm import fold

ORIGINAL_FILENAME = "Original.eml"


def apply(conn: Connection, message_id: int, decision: Decision, directory: Directory) -> dict:
    """Insert every record the decision asks for; return counts by kind (for the log)."""
    for action in decision.activities:
        user = directory.user(action.responsible)
        kind = directory.activity_type(action.type)
        row = {
            "message_id": message_id,
            "direction": action.direction,
            "responsible_id": user.id,
            "type_id": kind.id if kind else None,
            "type_name": action.type,
            "scope": action.scope,
            "subject": action.subject,
            "text": action.text,
            "date": action.date,
            "contract_id": _id(directory.contracts, action.contract),
            "order_id": _id(directory.orders, action.order),
            "task_id": _id(directory.tasks, action.task),
            "completed": action.completed,
            "due": action.due,
            "original_filename": ORIGINAL_FILENAME if action.original_attached else None,
        }
        activity_id = conn.execute(insert(t.activities).values(row)).inserted_primary_key[0]
        contact_ids = {c.id for email in action.contacts for c in directory.contacts.get(email, ())}
        if contact_ids:
            conn.execute(insert(t.activity_contacts), [
                {"activity_id": activity_id, "contact_id": cid} for cid in sorted(contact_ids)])
        company_ids = _company_ids(directory, action.companies)
        if company_ids:
            conn.execute(insert(t.activity_companies), [
                {"activity_id": activity_id, "company_id": cid} for cid in sorted(company_ids)])
    return record_counts(decision)


def record_counts(decision: Decision) -> dict:
    return {kind: len(getattr(decision, kind)) for kind in
            ("activities", "tasks", "contact_flags", "forbidden", "invitations", "tickets")}


def _id(table: dict, number: str | None) -> int | None:
    if number is None:
        return None
    record = table.get(fold(number))
    return record.id if record else None


def _company_ids(directory: Directory, names) -> set[int]:
    return {directory.companies[name].id for name in names if name in directory.companies}
