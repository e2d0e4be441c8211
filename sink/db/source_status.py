"""What each source (an IMAP/POP3 poller, the eml directory) last managed, in
``source_status``: ``sink status`` lists it and ``/metrics`` exports
``sink_source_last_success_timestamp_seconds{source}`` from it (the alert "source silent for
3 intervals" reads that). A source calls :func:`record_success` after each good pass and
:func:`record_error` when a pass fails (the error text must hold no secret: say what failed,
not with which password)."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from sink.db import schema as t
from sink.mail.parse import storable

_ERROR_LENGTH = 1000


def record_success(conn: Connection, name: str, when: datetime | None = None) -> None:
    _upsert(conn, name, last_success=when or datetime.now(timezone.utc))


def record_error(conn: Connection, name: str, error: str, when: datetime | None = None) -> None:
    _upsert(conn, name, last_error=storable(error)[:_ERROR_LENGTH],
            last_error_at=when or datetime.now(timezone.utc))


def _upsert(conn: Connection, name: str, **values) -> None:
    # update-then-insert works on SQLite and PostgreSQL alike; one source has one writer (the
    # instance polling it), so the insert does not race with itself
    changed = conn.execute(update(t.source_status).where(
        t.source_status.c.name == name).values(**values)).rowcount
    if not changed:
        conn.execute(t.source_status.insert().values(name=name, **values))


def sources(conn: Connection) -> list[dict]:
    return [dict(r._mapping) for r in conn.execute(
        select(t.source_status).order_by(t.source_status.c.name))]
