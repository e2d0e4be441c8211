"""``sink replay --reprocess``: today's rules and directory again on processed messages (after
a rule or directory change) - the explainable-verdict loop: change a rule, ``--dry-run`` to see
what it would change, then apply.

In one transaction per message the records it made are replaced by the new decision's:
- deleted and made again: its activities, its dedup keys, its place in a ticket's history
  and a ticket it created (kept, when another message has updated it since: the new
  decision then updates it), its task changes and a task it created that nothing else refers to;
- kept, because they are facts about the outside world another message or the CRM may rely on
  by now: contact and company flag changes (an opt-out is not undone), forbidden addresses,
  invitations (their writes are newest-wins upserts, so writing them again changes nothing)
  and the stored spam list.
A message is never its own duplicate: its own dedup keys do not count.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Iterable

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.engine import Connection

from sink.config import BoxConfig
from sink.db import schema as t
from sink.db.queries import message_detail
from sink.db.records import DbRecords
from sink.intake import rows
from sink.intake.core import Intake, log
from sink.intake.model import UNWRAPPED
from sink.intake.races import retry_races
from sink.intake.replay import ReplayError, load_stored

_ROW = select(t.messages.c.id, t.messages.c.box, t.messages.c.status, t.messages.c.verdict,
              t.messages.c.parent_id, t.messages.c.sha256, t.messages.c.dkim)


def _check(row, message_id: int, boxes: dict[str, BoxConfig]) -> BoxConfig:
    if row is None:
        raise ReplayError(f"message {message_id}: not found")
    if row.status != "processed":
        raise ReplayError(f"message {message_id}: status is {row.status}; --reprocess takes "
                          f"processed messages (replay without it takes failed ones)")
    if row.verdict == UNWRAPPED:
        raise ReplayError(f"message {message_id}: carries other messages; reprocess those")
    box = boxes.get(row.box)
    if box is None:
        raise ReplayError(f"message {message_id}: its box {row.box} is not in the configuration")
    return box


def candidates(intake: Intake, ids: Iterable[int] | None, since: date | None,
               boxes: Iterable[BoxConfig]) -> list[int]:
    """``ids`` (each checked; with ``since`` only those received on or after it), or with no
    ids every processed message since ``since``, oldest first."""
    by_address = {b.address: b for b in boxes}
    m = t.messages.c
    query = _ROW.order_by(m.id)
    if since is not None:
        query = query.where(m.received_at >= datetime.combine(since, datetime.min.time(),
                                                              timezone.utc))
    with intake.engine.connect() as conn:
        if not ids:
            found = conn.execute(query.where(m.status == "processed",
                                             m.verdict != UNWRAPPED)).all()
            return [r.id for r in found if r.box in by_address]
        ids = list(dict.fromkeys(ids))
        found = {r.id: r for r in conn.execute(query.where(m.id.in_(ids)))}
    for message_id in ids:
        if since is not None and message_id not in found:
            continue
        _check(found.get(message_id), message_id, by_address)
    return [i for i in ids if i in found]


def _seen_except(conn: Connection, box: str, message_id: int):
    d = t.dedup_keys.c

    def seen(keys) -> bool:
        return any(conn.execute(select(d.message_id).where(
            d.box == box, d.kind == kind, d.digest == digest, d.message_id != message_id)
        ).first() for kind, digest in keys)
    return seen


def stored_records(conn: Connection, message_id: int) -> dict:
    """What a message's stored records look like, in the check/ingest JSON's terms."""
    d = message_detail(conn, message_id) or {}
    acts = [{"responsible": a["responsible"], "direction": a["direction"],
             "type": a["type_name"], "scope": a["scope"], "contract": a["contract"],
             "order": a["order"], "task": a["task"], "ticket": a["ticket"],
             "completed": bool(a["completed"]), "due": bool(a["due"]),
             "original_attached": a["original_filename"] is not None,
             "contacts": a["contacts"], "companies": a["companies"]}
            for a in d.get("activities", [])]
    return {"verdict": d.get("verdict"), "activities": acts,
            "tasks": [{k: x[k] for k in ("action", "number", "subject", "status")}
                      for x in d.get("tasks", [])],
            "contact_flags": [{"email": f["email"], **f["changes"]}
                              for f in d.get("contact_flags", [])],
            "forbidden": d.get("forbidden", []),
            "invitations": [{k: i[k] for k in ("user", "uid", "method")}
                            for i in d.get("invitations", [])],
            "tickets": [{k: x[k] for k in ("action", "number", "title", "contact", "company",
                                           "rule")} for x in d.get("tickets", [])]}


def remove_records(conn: Connection, message_id: int) -> None:
    """Delete what the new decision replaces (see the module docstring)."""
    k, tm, a = t.tickets.c, t.ticket_messages.c, t.activities.c
    other = t.ticket_messages.alias("other")
    others = exists().where(other.c.ticket_id == k.id, other.c.message_id != message_id)
    made = [r.id for r in conn.execute(select(k.id).join(t.ticket_messages, tm.ticket_id == k.id)
                                       .where(tm.message_id == message_id,
                                              tm.action == "created", ~others))]
    conn.execute(delete(t.activities).where(a.message_id == message_id))
    conn.execute(delete(t.ticket_messages).where(tm.message_id == message_id))
    if made:
        conn.execute(update(t.activities).where(a.ticket_id.in_(made)).values(ticket_id=None))
        conn.execute(delete(t.tickets).where(k.id.in_(made)))
    tc, tk = t.task_changes.c, t.tasks.c
    tasks = [r.task_id for r in conn.execute(select(tc.task_id).where(
        tc.message_id == message_id, tc.action == "created"))]
    conn.execute(delete(t.task_changes).where(tc.message_id == message_id))
    for task_id in tasks:
        used = conn.execute(select(func.count()).select_from(t.task_changes)
                            .where(tc.task_id == task_id)).scalar_one() or \
            conn.execute(select(a.id).where(a.task_id == task_id).limit(1)).first()
        if not used:
            conn.execute(delete(t.tasks).where(and_(tk.id == task_id, tk.origin.isnot(None))))
    conn.execute(delete(t.dedup_keys).where(t.dedup_keys.c.message_id == message_id))


def reprocess(intake: Intake, message_id: int, boxes: Iterable[BoxConfig],
              dry_run: bool = False) -> dict:
    """Reprocess one message; returns ``{"id", "before", "after"}``. The row is locked for
    the transaction (FOR UPDATE; SQLite serialises writers anyway)."""
    by_address = {b.address: b for b in boxes}
    _, box, _, parsed = load_stored(intake, _ROW, message_id, _check, by_address)

    def attempt() -> dict:
        # a dry run reads in a transaction that is rolled back when the connection closes
        with (intake.engine.connect() if dry_run else intake.engine.begin()) as conn:
            locked = conn.execute(_ROW.where(t.messages.c.id == message_id).with_for_update(
                ) if not dry_run else _ROW.where(t.messages.c.id == message_id)).first()
            _check(locked, message_id, by_address)
            before = stored_records(conn, message_id)
            directory = intake.directory.get(conn)
            decision = intake.rules(parsed, box, directory,
                                    _seen_except(conn, box.address, message_id),
                                    DbRecords(conn))
            if dry_run:
                return {"id": message_id, "before": before, "after": decision.as_json()}
            remove_records(conn, message_id)
            rows.UPDATE_OUTCOME.execute(conn, {"message_pk": message_id,
                                               **intake._processed(decision)})
            delivery = intake._apply(conn, message_id, decision, box, directory)
            after = (delivery.decision.as_json() if delivery.decision is not None
                     else {"verdict": None, "error": delivery.error})
            return {"id": message_id, "before": before, "after": after}
    result = retry_races(attempt)
    log.info("message.reprocessed", id=message_id, box=box.address, dry_run=dry_run,
             before=result["before"]["verdict"], after=result["after"].get("verdict"))
    return result
