"""Read-side queries for operators: ``sink messages`` and ``sink show``."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from sink.db import schema as t


def list_messages(conn: Connection, *, status=None, verdict=None, limit=50) -> list[dict]:
    counts = (select(t.activities.c.message_id, func.count().label("n"))
              .group_by(t.activities.c.message_id).subquery())
    m = t.messages.c
    query = (select(m.id, m.received_at, m.channel, m.box, m.message_id, m.sender, m.subject,
                    m.status, m.verdict, func.coalesce(counts.c.n, 0).label("activities"))
             .outerjoin(counts, counts.c.message_id == m.id)
             .order_by(m.id.desc()).limit(limit))
    if status:
        query = query.where(m.status == status)
    if verdict:
        query = query.where(m.verdict == verdict)
    rows = [dict(row._mapping) for row in conn.execute(query)]
    for row in rows:
        row["received_at"] = as_utc(row["received_at"])
    return rows


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def raw_bytes(conn: Connection, message_id: int) -> bytes | None:
    return conn.execute(select(t.raw_messages.c.content).where(
        t.raw_messages.c.message_id == message_id)).scalar()


def message_detail(conn: Connection, message_id: int) -> dict | None:
    row = conn.execute(select(t.messages).where(t.messages.c.id == message_id)).first()
    if row is None:
        return None
    detail = dict(row._mapping)
    for key in ("received_at", "processed_at"):
        detail[key] = as_utc(detail[key])
    a, u = t.activities.c, t.users.c
    acts = []
    query = (select(t.activities, u.email.label("responsible"))
             .join(t.users, u.id == a.responsible_id)
             .where(a.message_id == message_id).order_by(a.id))
    for act in conn.execute(query):
        act = dict(act._mapping)
        act["contract"] = _number(conn, t.contracts, act.pop("contract_id"))
        act["order"] = _number(conn, t.orders, act.pop("order_id"))
        act["task"] = _number(conn, t.tasks, act.pop("task_id"))
        ticket = _number(conn, t.tickets, act.pop("ticket_id"))
        act["ticket"] = None if ticket is None else str(ticket)
        act["contacts"] = list(conn.execute(
            select(t.contacts.c.email).join(t.activity_contacts,
                                            t.activity_contacts.c.contact_id == t.contacts.c.id)
            .where(t.activity_contacts.c.activity_id == act["id"]).order_by(t.contacts.c.email)
        ).scalars())
        act["companies"] = list(conn.execute(
            select(t.companies.c.name).join(t.activity_companies,
                                            t.activity_companies.c.company_id == t.companies.c.id)
            .where(t.activity_companies.c.activity_id == act["id"]).order_by(t.companies.c.name)
        ).scalars())
        acts.append(act)
    detail["activities"] = acts
    detail["carried"] = list(conn.execute(select(t.messages.c.id).where(
        t.messages.c.parent_id == message_id).order_by(t.messages.c.id)).scalars())
    detail.update(side_effect_records(conn, message_id))
    return detail


def side_effect_records(conn: Connection, message_id: int) -> dict[str, list[dict]]:
    """Tasks, flag changes, forbidden addresses, invitations, answers and bounces this message
    wrote (an invitation or task a later message changed shows here with its current values)."""
    tc, tk, u = t.task_changes.c, t.tasks.c, t.users.c
    tasks = []
    for row in conn.execute(select(tc.action, tc.subject, tc.status, tk.id, tk.number,
                                   tk.origin, tk.contract_number, u.email.label("approver"))
                            .join(t.tasks, tk.id == tc.task_id)
                            .outerjoin(t.users, u.id == tk.approver_id)
                            .where(tc.message_id == message_id).order_by(tc.id)):
        task = dict(row._mapping)
        task["solvers"] = list(conn.execute(
            select(u.email).join(t.task_solvers, t.task_solvers.c.user_id == u.id)
            .where(t.task_solvers.c.task_id == task.pop("id")).order_by(u.email)).scalars())
        tasks.append(task)
    fc, fa = t.flag_changes.c, t.forbidden_addresses.c
    flags = [dict(r._mapping) for r in conn.execute(
        select(fc.entity, fc.email, fc.changes).where(fc.message_id == message_id)
        .order_by(fc.id))]
    forbidden = [dict(r._mapping) for r in conn.execute(
        select(fa.email, fa.type).where(fa.message_id == message_id).order_by(fa.id))]
    i, r = t.invitations.c, t.invitation_responses.c
    invitations = [dict(row._mapping) for row in conn.execute(
        select(u.email.label("user"), i.uid, i.method, i.status, i.sequence, i.summary,
               i.location, i.dtstart, i.dtstart_tzid, i.dtend, i.dtend_tzid, i.rrule,
               i.organizer).join(t.users, u.id == i.user_id)
        .where(i.message_id == message_id).order_by(i.id))]
    responses = [dict(row._mapping) for row in conn.execute(
        select(u.email.label("user"), i.uid, r.attendee, r.partstat)
        .join(t.invitations, i.id == r.invitation_id).join(t.users, u.id == i.user_id)
        .where(r.message_id == message_id).order_by(i.id, r.attendee))]
    b = t.bounces.c
    bounces = [dict(row._mapping) for row in conn.execute(
        select(b.email, b.kind, b.status, b.diagnostic).where(b.message_id == message_id)
        .order_by(b.id))]
    return {"tasks": tasks, "contact_flags": flags, "forbidden": forbidden,
            "invitations": invitations, "responses": responses, "bounces": bounces,
            "tickets": message_tickets(conn, message_id)}


def message_tickets(conn: Connection, message_id: int) -> list[dict]:
    """The tickets this message created or updated, with their current values."""
    k, tm = t.tickets.c, t.ticket_messages.c
    rows = conn.execute(select(tm.action, tm.rule, k.number, k.title, k.status, k.contact_email,
                               k.company_name).join(t.tickets, k.id == tm.ticket_id)
                        .where(tm.message_id == message_id).order_by(tm.id))
    return [{"action": r.action, "number": str(r.number), "title": r.title, "status": r.status,
             "contact": r.contact_email, "company": r.company_name, "rule": r.rule}
            for r in rows]


def _number(conn: Connection, table, record_id):
    if record_id is None:
        return None
    return conn.execute(select(table.c.number).where(table.c.id == record_id)).scalar()


def export_raw(conn: Connection, *, since=None, until=None, status=None):
    """Yield (YYYY-MM-DD, uuid, raw bytes) one message at a time, oldest first."""
    m = t.messages.c
    query = select(m.id, m.uuid, m.received_at).order_by(m.id)
    if since is not None:
        query = query.where(m.received_at >= datetime.combine(since, datetime.min.time(),
                                                              timezone.utc))
    if until is not None:
        query = query.where(m.received_at < datetime.combine(until, datetime.min.time(),
                                                             timezone.utc))
    if status:
        query = query.where(m.status == status)
    for row in conn.execute(query).all():
        raw = raw_bytes(conn, row.id)
        if raw is not None:
            yield as_utc(row.received_at).strftime("%Y-%m-%d"), row.uuid, raw
