"""The stored spam list (SPEC 4, seed 002 "Mark as spam"): addresses per box, beside the box's
configured ``spam_senders``; the spam filter reads it through ``DbRecords.spam_listed``."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from sink.db import schema as t


class SpamError(Exception):
    """``spam mark`` of a message that is unknown or has no sender."""


def _insert(conn: Connection):
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(t.spam_list)


def add(conn: Connection, box: str, emails, message_id: int | None = None) -> list[str]:
    """Put ``emails`` on the box's list; returns those that were not on it yet."""
    added = []
    for email in dict.fromkeys(emails):
        # RETURNING says whether a row was inserted (rowcount does not, on every driver)
        result = conn.execute(_insert(conn).values(
            box=box, email=email, message_id=message_id, added_at=datetime.now(timezone.utc)
        ).on_conflict_do_nothing().returning(t.spam_list.c.email))
        if result.first() is not None:
            added.append(email)
    return added


def remove(conn: Connection, box: str, emails) -> list[str]:
    s = t.spam_list.c
    removed = []
    for email in dict.fromkeys(emails):
        if conn.execute(delete(t.spam_list).where(s.box == box, s.email == email)
                        .returning(s.email)).first() is not None:
            removed.append(email)
    return removed


def listed(conn: Connection, box: str | None) -> list[dict]:
    s = t.spam_list.c
    query = select(s.box, s.email, s.message_id, s.added_at).order_by(s.box, s.email)
    if box is not None:
        query = query.where(s.box == box)
    return [dict(r._mapping) for r in conn.execute(query)]


def mark(conn: Connection, message_id: int) -> dict:
    """In the caller's transaction: the message's sender onto its box's list, and the tickets
    it created (with their history) and the activities made from it deleted; a ticket it only
    updated keeps existing, without this message in its history."""
    m, k, tm, a = t.messages.c, t.tickets.c, t.ticket_messages.c, t.activities.c
    row = conn.execute(select(m.box, m.sender, m.trace).where(m.id == message_id)
                       .with_for_update()).first()
    if row is None:
        raise SpamError(f"message {message_id}: not found")
    if not row.sender:
        raise SpamError(f"message {message_id}: has no sender to put on the spam list")
    add(conn, row.box, [row.sender], message_id)
    created = list(conn.execute(select(k.id, k.number).join(t.ticket_messages,
                                                           tm.ticket_id == k.id)
                                .where(tm.message_id == message_id, tm.action == "created")))
    ids = [c.id for c in created]
    if ids:
        # activities.ticket_id has no foreign key: unlink other messages' activities first
        conn.execute(update(t.activities).where(a.ticket_id.in_(ids)).values(ticket_id=None))
        conn.execute(delete(t.tickets).where(k.id.in_(ids)))
    conn.execute(delete(t.ticket_messages).where(tm.message_id == message_id))
    activities = conn.execute(delete(t.activities).where(a.message_id == message_id)).rowcount
    trace = list(row.trace or []) + [{"rule": "spam-mark", "outcome": "hit",
                                      "detail": f"sender {row.sender} marked as spam"}]
    conn.execute(update(t.messages).where(m.id == message_id).values(verdict="SPAM",
                                                                     trace=trace))
    return {"id": message_id, "box": row.box, "email": row.sender,
            "tickets_deleted": [str(c.number) for c in created],
            "activities_deleted": activities}
