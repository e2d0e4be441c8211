"""The rules' read-only view of current records (:class:`sink.pipeline.records.Records`),
answered with SELECTs inside the message's own transaction."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Mapping

from sqlalchemy import bindparam, func, literal_column, select
from sqlalchemy.engine import Connection

from sink.db import schema as t
from sink.db.fastpath import Fast
from sink.pipeline.records import (DEFAULT_FLAGS, FLAGS, TaskState, ThreadState,
                                   TicketState)

ENTITY_TABLES = {"contact": t.contacts, "company": t.companies}


class DbRecords:
    """``spam_known``: answers of :meth:`spam_listed` already read in this transaction (by
    (box, email)), with nothing written since that could change them."""

    def __init__(self, conn: Connection,
                 spam_known: Mapping[tuple[str, str], bool] | None = None) -> None:
        self.conn = conn
        self.spam_known = spam_known

    def task(self, number: str) -> TaskState | None:
        row = self.conn.execute(select(t.tasks.c.number, t.tasks.c.subject, t.tasks.c.status)
                                .where(t.tasks.c.number == number)).first()
        return TaskState(row.number, row.subject, row.status) if row else None

    def task_number(self, folded: str) -> str | None:
        return self.conn.execute(select(t.tasks.c.number).where(
            func.lower(t.tasks.c.number) == folded).limit(1)).scalar()

    def flags(self, entity: str, entity_id: int) -> Mapping[str, bool]:
        row = _FLAGS[entity].first(self.conn, {"entity_id": entity_id})
        return dict(zip(FLAGS, map(bool, row))) if row else dict(DEFAULT_FLAGS)

    def forbidden(self, email: str, kind: str) -> bool:
        return _FORBIDDEN.first(self.conn, {"email": email, "kind": kind}) is not None

    def invitation(self, user_id: int, uid: str) -> str | None:
        row = _INVITATION_REVISION.first(self.conn, {"user_id": user_id, "uid": uid})
        return row[0] if row else None

    def response(self, user_id: int, uid: str, attendee: str) -> str | None:
        row = _RESPONSE_REVISION.first(self.conn, {"user_id": user_id, "uid": uid,
                                                   "attendee": attendee})
        return row[0] if row else None

    # -- help desk ----------------------------------------------------------------------------
    def ticket(self, box: str, number: str) -> TicketState | None:
        if not number.isdigit() or len(number) > 9:
            return None
        k = t.tickets.c
        row = self.conn.execute(select(k.number, k.box, k.title).where(
            k.box == box, k.number == int(number))).first()
        return TicketState(str(row.number), row.box, row.title) if row else None

    def thread(self, box: str, message_ids: tuple[str, ...]) -> ThreadState | None:
        """The newest processed message of the box with the first of ``message_ids`` (most
        wanted first) that is stored; one indexed lookup each, on the cursor (every reply
        asks: a Core statement built per call cost more than the rest of its rules)."""
        for message_id in message_ids:
            row = _THREAD_MESSAGE.first(self.conn, {"message_id": message_id, "box": box})
            if row is not None:
                return self._links(row[0], message_id)
        return None

    def _links(self, row_id: int, message_id: str) -> ThreadState:
        a = t.activities.c
        act = self.conn.execute(
            select(t.contracts.c.number.label("contract"), t.orders.c.number.label("order"),
                   t.tasks.c.number.label("task"), t.tickets.c.number.label("ticket"))
            .select_from(t.activities)
            .outerjoin(t.contracts, t.contracts.c.id == a.contract_id)
            .outerjoin(t.orders, t.orders.c.id == a.order_id)
            .outerjoin(t.tasks, t.tasks.c.id == a.task_id)
            .outerjoin(t.tickets, t.tickets.c.id == a.ticket_id)
            .where(a.message_id == row_id).order_by(a.id).limit(1)).first()
        ticket = self.conn.execute(
            select(t.tickets.c.number).join(t.ticket_messages,
                                            t.ticket_messages.c.ticket_id == t.tickets.c.id)
            .where(t.ticket_messages.c.message_id == row_id)
            .order_by(t.ticket_messages.c.id).limit(1)).scalar()
        if ticket is None and act is not None:
            ticket = act.ticket
        return ThreadState(row_id, message_id, act.contract if act else None,
                           act.order if act else None, act.task if act else None,
                           None if ticket is None else str(ticket))

    def spam_listed(self, box: str, email: str) -> bool:
        known = self.spam_known.get((box, email)) if self.spam_known else None
        if known is not None:
            return known
        return _SPAM_LISTED.first(self.conn, {"box": box, "email": email}) is not None

    def recent_from(self, box: str, sender: str, seconds: int) -> int:
        m = t.messages.c
        since = datetime.now(timezone.utc) - timedelta(seconds=seconds)
        return self.conn.execute(select(func.count()).select_from(t.messages).where(
            m.box == box, m.sender == sender, m.received_at >= since,
            func.coalesce(m.verdict, "") != "DUPLICATE")).scalar_one()


# Asked for everyone a bounce or an opt-out names (flags, forbidden addresses): compiled once.
_FLAGS = {entity: Fast(select(*(table.c[f] for f in FLAGS))
                       .where(table.c.id == bindparam("entity_id")))
          for entity, table in ENTITY_TABLES.items()}
_FORBIDDEN = Fast(select(t.forbidden_addresses.c.id).where(
    t.forbidden_addresses.c.email == bindparam("email"),
    t.forbidden_addresses.c.type == bindparam("kind")).limit(1))
# Asked for every message with an invitation (by each of its users): compiled once.
_INVITATION_REVISION = Fast(select(t.invitations.c.revision).where(
    t.invitations.c.user_id == bindparam("user_id"), t.invitations.c.uid == bindparam("uid")))
_RESPONSE_REVISION = Fast(
    select(t.invitation_responses.c.revision)
    .join(t.invitations, t.invitations.c.id == t.invitation_responses.c.invitation_id)
    .where(t.invitations.c.user_id == bindparam("user_id"),
           t.invitations.c.uid == bindparam("uid"),
           t.invitation_responses.c.attendee == bindparam("attendee")))
# Asked for every message (spam list) or every reply (threads): compiled once, run on the
# DBAPI cursor (sink.db.fastpath).
_SPAM_LISTED = Fast(select(t.spam_list.c.email).where(
    t.spam_list.c.box == bindparam("box"), t.spam_list.c.email == bindparam("email")))
# ``status || ''`` is the same test, one SQLite's planner cannot answer from the (status, id)
# index: with a plain ``status =`` it chose that index for the ORDER BY and walked it backwards
# over every processed message of the database looking for the Message-ID - 4.9 ms per reply
# at 20,000 messages, growing with the database; by the Message-ID index 1.8 us.
_THREAD_MESSAGE = Fast(select(t.messages.c.id).where(
    t.messages.c.message_id == bindparam("message_id"), t.messages.c.box == bindparam("box"),
    t.messages.c.status.concat(literal_column("''")) == "processed")
    .order_by(t.messages.c.id.desc()).limit(1))
