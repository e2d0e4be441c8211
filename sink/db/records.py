"""The rules' read-only view of current records (:class:`sink.pipeline.records.Records`),
answered with SELECTs inside the message's own transaction."""

from __future__ import annotations

from typing import Mapping

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from sink.db import schema as t
from sink.pipeline.records import DEFAULT_FLAGS, FLAGS, TaskState

ENTITY_TABLES = {"contact": t.contacts, "company": t.companies}


class DbRecords:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def task(self, number: str) -> TaskState | None:
        row = self.conn.execute(select(t.tasks.c.number, t.tasks.c.subject, t.tasks.c.status)
                                .where(t.tasks.c.number == number)).first()
        return TaskState(row.number, row.subject, row.status) if row else None

    def task_number(self, folded: str) -> str | None:
        return self.conn.execute(select(t.tasks.c.number).where(
            func.lower(t.tasks.c.number) == folded).limit(1)).scalar()

    def flags(self, entity: str, entity_id: int) -> Mapping[str, bool]:
        table = ENTITY_TABLES[entity]
        row = self.conn.execute(select(*(table.c[f] for f in FLAGS))
                                .where(table.c.id == entity_id)).first()
        return {f: bool(row._mapping[f]) for f in FLAGS} if row else dict(DEFAULT_FLAGS)

    def forbidden(self, email: str, kind: str) -> bool:
        f = t.forbidden_addresses.c
        return self.conn.execute(select(f.id).where(f.email == email, f.type == kind)).first() \
            is not None

    def invitation(self, user_id: int, uid: str) -> str | None:
        i = t.invitations.c
        return self.conn.execute(select(i.revision).where(i.user_id == user_id, i.uid == uid)
                                 ).scalar()

    def response(self, user_id: int, uid: str, attendee: str) -> str | None:
        i, r = t.invitations.c, t.invitation_responses.c
        return self.conn.execute(
            select(r.revision).join(t.invitations, i.id == r.invitation_id)
            .where(i.user_id == user_id, i.uid == uid, r.attendee == attendee)).scalar()
