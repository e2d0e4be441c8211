"""The one place where a Decision becomes rows, inside the message's transaction.

:func:`apply` runs one writer per record kind (:data:`WRITERS`, keyed like
:data:`sink.pipeline.decision.RECORD_KINDS`); :class:`sink.intake.Intake` takes it as its
``executor``."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from sink.db import schema as t
from sink.db.fastpath import Fast
from sink.db.records import ENTITY_TABLES
from sink.directory import Directory
from sink.pipeline.decision import (RECORD_KINDS, ActivityAction, BounceAction, Decision,
                                    FlagAction, ForbiddenAction, InvitationAction,
                                    SpamMarkAction, TaskAction, TicketAction)
from sink.mail.textnorm import fold
from sink.pipeline.records import FLAGS

ORIGINAL_FILENAME = "Original.eml"
# The inserts nearly every message makes, on the DBAPI cursor (sink.db.fastpath); the links,
# which nothing reads back in the transaction, deferred to the batch's flush on PostgreSQL.
_INSERT_ACTIVITY = Fast(insert(t.activities), (
    "message_id", "direction", "responsible_id", "type_id", "type_name", "scope", "subject",
    "text", "date", "contract_id", "order_id", "task_id", "ticket_id", "completed", "due",
    "original_filename"))
_INSERT_ACTIVITY_CONTACTS = Fast(insert(t.activity_contacts), ("activity_id", "contact_id"),
                                 many=True)
_INSERT_ACTIVITY_COMPANIES = Fast(insert(t.activity_companies), ("activity_id", "company_id"),
                                  many=True)
INVITATION_COLUMNS = ("method", "status", "sequence", "dtstamp", "revision", "summary",
                      "location", "dtstart", "dtstart_tzid", "dtend", "dtend_tzid", "rrule",
                      "organizer")


def apply(conn: Connection, message_id: int, decision: Decision,
          directory: Directory) -> Decision:
    """Write every record ``decision`` asks for; return the decision as stored (a task made
    from a "New task:" subject carries the number it got). ``decision`` itself is not changed."""
    stored = {kind: WRITERS[kind](conn, message_id, decision.records(kind), directory)
              for kind in WRITE_ORDER}
    changed = {kind: items for kind, items in stored.items()
               if items != decision.records(kind)}
    return replace(decision, **changed) if changed else decision    # (most: as decided)


def _store_activities(conn: Connection, message_id: int, actions: tuple[ActivityAction, ...],
                      directory: Directory) -> tuple[ActivityAction, ...]:
    """Every activity of a message, in one INSERT where the database takes one
    (:meth:`Fast.insert_rows`: PostgreSQL, one round trip instead of one each - a 4 KB message
    makes 1.4 on the bench load, issue 16). What each reads first (its ticket, its task) reads
    no activity, so reading them all before the insert reads what reading each before its own
    insert did."""
    made = [_activity_row(conn, message_id, a, directory) for a in actions]
    ids = _INSERT_ACTIVITY.insert_rows(conn, [row for _, row in made])
    for activity_id, (action, _) in zip(ids, made, strict=True):
        _link_activity(conn, activity_id, action, directory)
    return tuple(action for action, _ in made)


def _activity_row(conn: Connection, message_id: int, action: ActivityAction,
                  directory: Directory) -> tuple[ActivityAction, dict]:
    """The activity's row, and the action as stored (with the ticket number it links to)."""
    user = directory.user(action.responsible)
    ticket_id, number = _ticket_of(conn, message_id, action)
    if number != action.ticket:
        action = replace(action, ticket=number)
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
        "task_id": _task_id(conn, directory, action.task),
        "ticket_id": ticket_id,
        "completed": action.completed,
        "due": action.due,
        "original_filename": ORIGINAL_FILENAME if action.original_attached else None,
    }
    return action, row


def _link_activity(conn: Connection, activity_id: int, action: ActivityAction,
                   directory: Directory) -> None:
    """The activity's contacts and companies (deferred to the batch's flush)."""
    contact_ids = {c.id for email in action.contacts for c in directory.contacts.get(email, ())}
    if contact_ids:
        _INSERT_ACTIVITY_CONTACTS.defer_many(conn, [
            {"activity_id": activity_id, "contact_id": cid} for cid in sorted(contact_ids)])
    company_ids = _company_ids(directory, action.companies)
    if company_ids:
        _INSERT_ACTIVITY_COMPANIES.defer_many(conn, [
            {"activity_id": activity_id, "company_id": cid} for cid in sorted(company_ids)])


def _id(table: dict, number: str | None) -> int | None:
    if number is None:
        return None
    record = table.get(fold(number))
    return record.id if record else None


def _task_id(conn: Connection, directory: Directory, number: str | None) -> int | None:
    """An imported task from the directory, or one a message made (not in the snapshot)."""
    if number is None:
        return None
    record = directory.tasks.get(fold(number))
    if record is not None:
        return record.id
    return conn.execute(select(t.tasks.c.id).where(t.tasks.c.number == number)).scalar()


def _company_ids(directory: Directory, names) -> set[int]:
    return {directory.companies[name].id for name in names if name in directory.companies}


# --------------------------------------------------------------------------- side-effect records
# Every write is safe when several sessions or sink instances race: keyed rows are upserted
# (ON CONFLICT, which PostgreSQL and SQLite both speak), never read-then-inserted.

def _upsert(conn: Connection, table):
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def _new_task_number(conn: Connection, message_id: int) -> str:
    """"MAIL-<message id>": unique among mail-made tasks; suffixed if an import took it."""
    base = number = f"MAIL-{message_id}"
    suffix = 1
    while conn.execute(select(t.tasks.c.id).where(t.tasks.c.number == number)).first():
        suffix += 1
        number = f"{base}-{suffix}"
    return number


def _store_task(conn: Connection, message_id: int, task: TaskAction,
                directory: Directory) -> TaskAction:
    """Create or update the task (keyed by number); returns the action with its number."""
    approver = directory.user(task.approver) if task.approver else None
    values = {"subject": task.subject, "status": task.status, "origin": task.origin,
              "contract_number": task.contract, "approver_id": approver.id if approver else None}
    if task.number is None:
        task = replace(task, number=_new_task_number(conn, message_id))
        conn.execute(insert(t.tasks).values(number=task.number, **values))
    else:
        stmt = _upsert(conn, t.tasks).values(number=task.number, **values)
        conn.execute(stmt.on_conflict_do_update(index_elements=[t.tasks.c.number], set_={
            "subject": stmt.excluded.subject, "status": stmt.excluded.status,
            "contract_number": stmt.excluded.contract_number}))
    task_id = conn.execute(select(t.tasks.c.id).where(t.tasks.c.number == task.number)
                           ).scalar_one()
    solver_ids = sorted({u.id for u in map(directory.user, task.solvers) if u is not None})
    for user_id in solver_ids:
        conn.execute(_upsert(conn, t.task_solvers).values(task_id=task_id, user_id=user_id)
                     .on_conflict_do_nothing())
    conn.execute(insert(t.task_changes).values(message_id=message_id, task_id=task_id,
                                               action=task.action, subject=task.subject,
                                               status=task.status))
    return task


def _store_flags(conn: Connection, message_id: int, change: FlagAction,
                 directory: Directory) -> FlagAction:
    flags = dict(change.changes)
    _set_flags(change.entity, tuple(flags)).execute(conn, {**flags, "pk": change.entity_id})
    _INSERT_FLAG_CHANGE.execute(conn, {"message_id": message_id, "entity": change.entity,
                                       "entity_id": change.entity_id, "email": change.email,
                                       "changes": flags})
    return change


_INSERT_FLAG_CHANGE = Fast(insert(t.flag_changes),
                           ("message_id", "entity", "entity_id", "email", "changes"))
_SET_FLAGS: dict[tuple[str, tuple[str, ...]], Fast] = {}


def _set_flags(entity: str, columns: tuple[str, ...]) -> Fast:
    """The UPDATE of these flag columns of one entity, compiled once (the few combinations of
    a few flags: built per call, a bounce's flag change cost ~0.3 ms)."""
    found = _SET_FLAGS.get((entity, columns))
    if found is None:
        if not set(columns) <= set(FLAGS):      # (and so the memory stays a few statements)
            raise ValueError(f"not a flag: {sorted(set(columns) - set(FLAGS))}")
        table = ENTITY_TABLES[entity]
        found = _SET_FLAGS[entity, columns] = Fast(
            update(table).where(table.c.id == bindparam("pk")), columns)
    return found


def _store_forbidden(conn: Connection, message_id: int, forbidden: ForbiddenAction,
                     directory: Directory) -> ForbiddenAction:
    conn.execute(_upsert(conn, t.forbidden_addresses).values(
        email=forbidden.email, type=forbidden.type, message_id=message_id
    ).on_conflict_do_nothing(index_elements=["email", "type"]))
    return forbidden


def _invitation_upserts(dialect_insert):
    """The two upserts of an invitation for one dialect (each speaks its own ON CONFLICT)."""
    i, r = dialect_insert(t.invitations), dialect_insert(t.invitation_responses)
    newer = i.on_conflict_do_update(
        index_elements=["user_id", "uid"],
        set_={c: i.excluded[c] for c in (*INVITATION_COLUMNS, "message_id")},
        where=t.invitations.c.revision <= i.excluded.revision)
    answer = r.on_conflict_do_update(
        index_elements=["invitation_id", "attendee"],
        set_={c: r.excluded[c] for c in ("partstat", "revision", "message_id")},
        where=t.invitation_responses.c.revision <= r.excluded.revision)
    return newer, i.on_conflict_do_nothing(index_elements=["user_id", "uid"]), answer


_INVITATION_KEYS = ("user_id", "uid", "message_id", *INVITATION_COLUMNS)
_RESPONSE_KEYS = ("invitation_id", "attendee", "partstat", "revision", "message_id")
# Compiled once per dialect, run on the cursor (built per call they cost ~0.6 ms a message)
_INVITATION_WRITES = {
    name: (Fast(newer, _INVITATION_KEYS), Fast(first, _INVITATION_KEYS),
           Fast(answer, _RESPONSE_KEYS))
    for name, (newer, first, answer) in (("postgresql", _invitation_upserts(postgresql.insert)),
                                         ("sqlite", _invitation_upserts(sqlite.insert)))}
_INVITATION_ID = Fast(select(t.invitations.c.id).where(
    t.invitations.c.user_id == bindparam("user_id"), t.invitations.c.uid == bindparam("uid")))


def _store_invitation(conn: Connection, message_id: int, invitation: InvitationAction,
                      directory: Directory) -> InvitationAction:
    """REQUEST/CANCEL replace the stored version only when theirs is not older (the WHERE of
    the upsert, so a race cannot lose the newest); REPLY records answers the same way."""
    user = directory.user(invitation.user)
    if user is None:
        return invitation
    newer, first, answer = _INVITATION_WRITES[conn.dialect.name]
    row = {c: getattr(invitation, c) for c in INVITATION_COLUMNS}
    row.update(user_id=user.id, uid=invitation.uid, message_id=message_id)
    if invitation.method != "REPLY":
        newer.execute(conn, row)
        return invitation
    # The organiser's invitation, made from the reply when none is stored yet; revision ""
    # lets any real REQUEST or CANCEL replace what a reply could tell.
    first.execute(conn, {**row, "revision": ""})
    invitation_id = _INVITATION_ID.first(conn, {"user_id": user.id, "uid": invitation.uid})[0]
    for attendee, partstat in invitation.responses:
        answer.execute(conn, {"invitation_id": invitation_id, "attendee": attendee,
                              "partstat": partstat, "revision": invitation.revision,
                              "message_id": message_id})
    return invitation


def _store_bounce(conn: Connection, message_id: int, bounce: BounceAction,
                  directory: Directory) -> BounceAction:
    """Every failed address, hard or soft, one row per report: repeats are the point."""
    _INSERT_BOUNCE.execute(conn, {
        "message_id": message_id, "email": bounce.email, "kind": bounce.kind,
        "status": bounce.status, "diagnostic": bounce.reason,
        "created": datetime.now(timezone.utc)})
    return bounce


_INSERT_BOUNCE = Fast(insert(t.bounces),
                      ("message_id", "email", "kind", "status", "diagnostic", "created"))


# ------------------------------------------------------------------------------- help desk
def _ticket_of(conn: Connection, message_id: int, action: ActivityAction
               ) -> tuple[int | None, str | None]:
    """The ticket an activity links to: the one this message made or updated (written before
    the activities, :data:`WRITE_ORDER`), else an existing one by number."""
    k, tm = t.tickets.c, t.ticket_messages.c
    if action.new_ticket:
        row = conn.execute(select(k.id, k.number).join(t.ticket_messages, tm.ticket_id == k.id)
                           .where(tm.message_id == message_id).order_by(tm.id).limit(1)).first()
    elif action.ticket and action.ticket.isdigit() and len(action.ticket) <= 9:
        row = conn.execute(select(k.id, k.number).where(k.number == int(action.ticket))).first()
    else:
        return None, None
    return (row.id, str(row.number)) if row else (None, None)


def _next_ticket_number(conn: Connection) -> int:
    """Take the next ticket number; the counter row stays locked until the transaction ends."""
    c = t.counters.c
    value = conn.execute(select(c.value).where(c.name == "tickets").with_for_update()).scalar()
    if value is None:                       # a database made without the migration's row
        conn.execute(_upsert(conn, t.counters).values(name="tickets", value=0)
                     .on_conflict_do_nothing())
        value = conn.execute(select(c.value).where(c.name == "tickets").with_for_update()
                             ).scalar_one()
    number = value + 1
    while _ticket_number_taken(conn, number):  # one an update_ticket rule created with its own
        number += 1
    conn.execute(update(t.counters).where(c.name == "tickets").values(value=number))
    return number


def _ticket_number_taken(conn: Connection, number: int) -> bool:
    return conn.execute(select(t.tickets.c.id).where(t.tickets.c.number == number)
                        ).first() is not None


def _ticket_number(text: str | None) -> int | None:
    """A ticket number an update_ticket rule named, or None when it cannot be one."""
    if not text or not text.isdigit() or len(text) > 9 or int(text) == 0:
        return None
    return int(text)


def _lock_ticket_counter(conn: Connection) -> None:
    conn.execute(select(t.counters.c.value).where(t.counters.c.name == "tickets")
                 .with_for_update())


def _store_ticket(conn: Connection, message_id: int, action: TicketAction,
                  directory: Directory) -> TicketAction:
    """Create a ticket with the next number, or record an update. Creation first locks the
    counter row, so of two messages of one new thread (two instances at once) the second sees
    the first's ticket - found by the thread key - and updates it instead."""
    k = t.tickets.c
    existing = None
    if action.action == "updated" and action.number and action.number.isdigit():
        existing = conn.execute(select(k.id, k.number).where(
            k.box == action.box, k.number == int(action.number))).first()
    wanted = _ticket_number(action.wanted)
    if existing is None:
        _lock_ticket_counter(conn)
        if wanted is not None:
            # created meanwhile (another worker, the message before in this batch)
            existing = conn.execute(select(k.id, k.number).where(
                k.box == action.box, k.number == wanted)).first()
        if existing is None and action.thread:
            existing = conn.execute(select(k.id, k.number).where(
                k.box == action.box, k.thread == action.thread)).first()
    if existing is not None:
        action = replace(action, action="updated", number=str(existing.number))
        ticket_id = existing.id
    else:
        free = wanted is not None and not _ticket_number_taken(conn, wanted)
        number = wanted if free else _next_ticket_number(conn)
        ticket_id = conn.execute(insert(t.tickets).values(
            number=number, box=action.box, title=action.title[:10_000],
            description=action.description, status="open", contact_email=action.contact,
            company_name=action.company, rule=action.rule, thread=action.thread,
            created_at=datetime.now(timezone.utc))).inserted_primary_key[0]
        action = replace(action, action="created", number=str(number))
    conn.execute(insert(t.ticket_messages).values(ticket_id=ticket_id, message_id=message_id,
                                                  action=action.action, rule=action.rule))
    return action


def _store_spam_mark(conn: Connection, message_id: int, mark: SpamMarkAction,
                     directory: Directory) -> SpamMarkAction:
    conn.execute(_upsert(conn, t.spam_list).values(
        box=mark.box, email=mark.email[:320], message_id=message_id,
        added_at=datetime.now(timezone.utc)).on_conflict_do_nothing())
    return mark


def _each(writer):
    """A writer of one record as a writer of a kind's records, one after the other."""
    def write_all(conn: Connection, message_id: int, items: tuple, directory: Directory):
        return tuple(writer(conn, message_id, item, directory) for item in items)
    return write_all


# One writer per record kind (sink.pipeline.decision.RECORD_KINDS): (conn, message id, the
# decision's records of that kind, directory) -> the records as stored.
WRITERS = {
    "activities": _store_activities,
    "tasks": _each(_store_task),
    "contact_flags": _each(_store_flags),
    "forbidden": _each(_store_forbidden),
    "invitations": _each(_store_invitation),
    "bounces": _each(_store_bounce),
    "tickets": _each(_store_ticket),
    "spam_marks": _each(_store_spam_mark),
}
# Tickets first: an activity links to the ticket its message made.
WRITE_ORDER = ("tickets", *(kind for kind in RECORD_KINDS if kind != "tickets"))
