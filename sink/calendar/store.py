"""The calendar's database side: the per-user lock, the sync state, rows, links and trace.

Everything a pass knows between passes is here, never in a process: several sink instances on
one PostgreSQL take turns per user through an advisory lock (on SQLite, processes of one host
through a file lock), and a pass killed at any point
leaves rows that the next pass finds by Graph id (or by our transactionId) and updates instead
of duplicating.
"""

from __future__ import annotations

import contextlib
import fcntl
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from sink.calendar.events import utc
from sink.db import schema as t
from sink.mail.textnorm import domain_of

LOCK_NAMESPACE = 0x5C41         # first key of pg_try_advisory_lock(int, int): "the calendar"
TRACE_DAYS = 90
TRANSACTION_PREFIX = "crm-sink-"


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@contextlib.contextmanager
def user_lock(engine: Engine, user_id: int):
    """True while this process holds the user's pass; False when another pass has it."""
    if engine.dialect.name != "postgresql":
        with _file_lock(engine, user_id) as mine:
            yield mine
        return
    with engine.connect() as conn:
        got = conn.execute(select(func.pg_try_advisory_lock(LOCK_NAMESPACE, user_id))).scalar()
        conn.commit()                 # session lock: held without an open transaction
        try:
            yield bool(got)
        finally:
            if got:
                conn.execute(select(func.pg_advisory_unlock(LOCK_NAMESPACE, user_id)))
                conn.commit()


@contextlib.contextmanager
def _file_lock(engine: Engine, user_id: int):
    """SQLite: an flock on a file beside the database, one per user - shared by `serve` and
    `sink calendar sync` on the same host, released by the kernel when a process dies."""
    database = engine.url.database
    if not database or database == ":memory:":
        yield True
        return
    folder = Path(f"{database}.calendar-locks")
    folder.mkdir(exist_ok=True)
    with open(folder / str(int(user_id)), "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def users(conn: Connection, only: str | None = None) -> list[dict]:
    """Users with their addresses (e-mail first, then aliases), optionally just one."""
    rows = conn.execute(select(t.users.c.id, t.users.c.email).order_by(t.users.c.id)).all()
    aliases: dict[int, list[str]] = {}
    for a in conn.execute(select(t.user_aliases.c.user_id, t.user_aliases.c.address)
                          .order_by(t.user_aliases.c.address)):
        aliases.setdefault(a.user_id, []).append(a.address)
    out = [{"id": r.id, "email": r.email, "addresses": [r.email, *aliases.get(r.id, [])]}
           for r in rows]
    if only is not None:
        wanted = only.strip().lower()
        out = [u for u in out if wanted in (a.lower() for a in u["addresses"])]
    return out


def state(conn: Connection, user_id: int):
    s = t.calendar_sync_state
    row = conn.execute(select(s).where(s.c.user_id == user_id)).first()
    if row is None:
        conn.execute(insert(s).values(user_id=user_id))
        row = conn.execute(select(s).where(s.c.user_id == user_id)).first()
    return row


def save_state(conn: Connection, user_id: int, **values) -> None:
    state(conn, user_id)
    s = t.calendar_sync_state
    conn.execute(update(s).where(s.c.user_id == user_id).values(**values))


def trace(conn: Connection, user_id: int, action: str, detail: str = "", *,
          activity_id: int | None = None, graph_id: str | None = None) -> None:
    conn.execute(insert(t.calendar_trace).values(at=now(), user_id=user_id, action=action,
                                                 detail=detail[:2000], activity_id=activity_id,
                                                 graph_id=graph_id))


def prune_trace(conn: Connection, user_id: int) -> None:
    c = t.calendar_trace.c
    conn.execute(delete(t.calendar_trace).where(
        c.user_id == user_id, c.at < now() - timedelta(days=TRACE_DAYS)))


def find_row(conn: Connection, user_id: int, fields: dict, transaction_id: str | None):
    """The row this Graph event is: by Graph id, else the CRM row we created it from."""
    a = t.calendar_activities.c
    row = conn.execute(select(t.calendar_activities).where(
        a.user_id == user_id, a.graph_id == fields["graph_id"])).first()
    if row is None and isinstance(transaction_id, str) \
            and transaction_id.startswith(TRANSACTION_PREFIX):
        number = transaction_id[len(TRANSACTION_PREFIX):]
        if number.isdigit() and len(number) < 12:
            row = conn.execute(select(t.calendar_activities).where(
                a.user_id == user_id, a.id == int(number), a.graph_id.is_(None))).first()
    return row


def by_graph_id(conn: Connection, user_id: int, graph_id: str):
    a = t.calendar_activities.c
    return conn.execute(select(t.calendar_activities).where(
        a.user_id == user_id, a.graph_id == graph_id)).first()


def occurrence_starts(conn: Connection, user_id: int, master_id: str) -> list[datetime]:
    """When the occurrences of the series ``master_id`` that are rows fell (UTC)."""
    a = t.calendar_activities.c
    starts = conn.execute(select(func.coalesce(a.original_start, a.start)).where(
        a.user_id == user_id, a.series_master_id == master_id)).scalars()
    return [utc(s) for s in starts if s is not None]


def invitation_for(conn: Connection, user_id: int, ical_uid: str | None) -> int | None:
    if not ical_uid:
        return None
    i = t.invitations.c
    return conn.execute(select(i.id).where(i.user_id == user_id, i.uid == ical_uid)).scalar()


def link_invitations(conn: Connection, user_id: int) -> int:
    """Rows whose invitation the sink recorded from mail after the event was synchronised
    get linked now (the mail and the calendar reach the sink in either order)."""
    a, i = t.calendar_activities.c, t.invitations.c
    match = select(i.id).where(i.user_id == user_id, i.uid == a.ical_uid) \
        .limit(1).scalar_subquery()
    return conn.execute(update(t.calendar_activities).where(
        a.user_id == user_id, a.invitation_id.is_(None), a.ical_uid.is_not(None),
        match.is_not(None)).values(invitation_id=match)).rowcount


def activity_type(conn: Connection, name: str) -> int | None:
    return conn.execute(select(t.activity_types.c.id)
                        .where(t.activity_types.c.name == name)).scalar()


def link_parties(conn: Connection, activity_id: int, addresses: set[str]) -> None:
    """Contacts and companies of the organizer and attendees, found as mail finds them: a
    contact by address (and its company), a company by an address or a domain of its own."""
    ac, aco = t.calendar_activity_contacts, t.calendar_activity_companies
    conn.execute(delete(ac).where(ac.c.activity_id == activity_id))
    conn.execute(delete(aco).where(aco.c.activity_id == activity_id))
    if not addresses:
        return
    contacts = conn.execute(select(t.contacts.c.id, t.contacts.c.company_id)
                            .where(t.contacts.c.email.in_(sorted(addresses)))).all()
    companies = {c.company_id for c in contacts if c.company_id is not None}
    companies |= set(conn.execute(select(t.company_emails.c.company_id).where(
        t.company_emails.c.address.in_(sorted(addresses)))).scalars())
    domains = sorted({domain_of(a) for a in addresses} - {""})
    companies |= set(conn.execute(select(t.company_domains.c.company_id).where(
        t.company_domains.c.domain.in_(domains))).scalars())
    for contact in sorted({c.id for c in contacts}):
        conn.execute(insert(ac).values(activity_id=activity_id, contact_id=contact))
    for company in sorted(companies):
        conn.execute(insert(aco).values(activity_id=activity_id, company_id=company))


def calendar_rows(conn: Connection, user_id: int) -> list:
    """The user's rows that belong in the calendar and have a start time (or are deleted)."""
    a = t.calendar_activities.c
    return conn.execute(select(t.calendar_activities).where(
        a.user_id == user_id, a.outlook.is_(True),
        or_(a.start.is_not(None), a.crm_deleted.is_(True))).order_by(a.id)).all()
