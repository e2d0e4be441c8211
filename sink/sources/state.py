"""What a source remembers in the database, and the lease that lets one instance work it.

Keep mode (``after = "keep"``): IMAP (folder, UIDVALIDITY, UID) and POP3 UIDLs taken, written
after the message's commit. A crash between the two costs one more fetch, recognised as already
stored by the box's sha256: never a second record.

The lease: instances sharing one PostgreSQL may carry the same ``[[sources]]``; a session-level
advisory lock on a connection held while the source is worked makes one of them work it. When
that instance dies its session ends, the lock goes with it, and the next instance to try (at
most one interval later) takes over. SQLite is a single instance anyway: the lease is always
held.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

from sqlalchemy import and_, delete, insert, select, text
from sqlalchemy.engine import Engine

from sink.db import schema as t
from sink.log import get_logger

log = get_logger("sink.sources")
CHUNK = 500     # rows per statement: bounded parameter lists on both dialects


# ------------------------------------------------------------------------ pure bookkeeping

def uids_to_fetch(server: Iterable[int], seen: set[int]) -> list[int]:
    """The UIDs (or UIDLs) still to take, in the server's ascending order, each once."""
    return sorted(set(server) - seen)


def batches(items: Sequence[tuple[object, int]], max_bytes: int, max_count: int) -> list[list]:
    """``(id, size)`` items in order, cut into batches of at most ``max_count`` items and
    ``max_bytes`` bytes (an item larger than ``max_bytes`` alone): a bound on what one batch
    makes us hold in memory."""
    out: list[list] = []
    current: list = []
    size = 0
    for ident, length in items:
        if current and (len(current) >= max_count or size + length > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(ident)
        size += length
    if current:
        out.append(current)
    return out


def _chunks(items: list, n: int = CHUNK):
    for i in range(0, len(items), n):
        yield items[i:i + n]


# ---------------------------------------------------------------------------------- IMAP

def imap_seen(engine: Engine, key: str, folder: str, uidvalidity: int) -> set[int]:
    """The UIDs taken from ``folder`` under this UIDVALIDITY; rows of an older UIDVALIDITY
    are dropped (those UIDs now name other messages, or none)."""
    c = t.source_imap_uids.c
    with engine.begin() as conn:
        stale = conn.execute(delete(t.source_imap_uids).where(and_(
            c.source_key == key, c.folder == folder, c.uidvalidity != uidvalidity))).rowcount
        if stale:
            log.warning("source.uidvalidity_changed", source_key=key, folder=folder,
                        forgotten=stale)
        return set(conn.execute(select(c.uid).where(and_(
            c.source_key == key, c.folder == folder, c.uidvalidity == uidvalidity))).scalars())


def imap_remember(engine: Engine, key: str, folder: str, uidvalidity: int,
                  uids: Iterable[int]) -> None:
    rows = [{"source_key": key, "folder": folder, "uidvalidity": uidvalidity, "uid": u}
            for u in sorted(set(uids))]
    with engine.begin() as conn:
        for chunk in _chunks(rows):
            conn.execute(insert(t.source_imap_uids), chunk)


def imap_forget(engine: Engine, key: str, folder: str, uidvalidity: int,
                uids: Iterable[int]) -> None:
    """Drop rows of UIDs no longer in the folder (keeps the table as large as the mailbox)."""
    c = t.source_imap_uids.c
    with engine.begin() as conn:
        for chunk in _chunks(sorted(set(uids))):
            conn.execute(delete(t.source_imap_uids).where(and_(
                c.source_key == key, c.folder == folder, c.uidvalidity == uidvalidity,
                c.uid.in_(chunk))))


# ---------------------------------------------------------------------------------- POP3

def pop3_seen(engine: Engine, key: str) -> set[str]:
    c = t.source_pop3_uidls.c
    with engine.connect() as conn:
        return set(conn.execute(select(c.uidl).where(c.source_key == key)).scalars())


def pop3_remember(engine: Engine, key: str, uidls: Iterable[str]) -> None:
    rows = [{"source_key": key, "uidl": u} for u in sorted(set(uidls))]
    with engine.begin() as conn:
        for chunk in _chunks(rows):
            conn.execute(insert(t.source_pop3_uidls), chunk)


def pop3_forget(engine: Engine, key: str, uidls: Iterable[str]) -> None:
    c = t.source_pop3_uidls.c
    with engine.begin() as conn:
        for chunk in _chunks(sorted(set(uidls))):
            conn.execute(delete(t.source_pop3_uidls).where(and_(
                c.source_key == key, c.uidl.in_(chunk))))


# --------------------------------------------------------------------------------- lease

def lock_id(key: str) -> int:
    """A signed 64-bit advisory lock number for the source key."""
    return int.from_bytes(hashlib.sha256(b"sink-source\0" + key.encode()).digest()[:8],
                          "big", signed=True)


class Lease:
    """Held while this instance works the source (blocking calls: run them in a thread)."""

    def __init__(self, engine: Engine | None, key: str):
        self.engine = engine
        self.key = key
        self.conn = None
        self.postgres = engine is not None and engine.dialect.name == "postgresql"

    def acquire(self) -> bool:
        """True when held (checked alive each time: a lost connection is a lost lease)."""
        if not self.postgres:
            return True
        if self.conn is not None:
            try:
                # a session-level lock lasts as long as the session: alive means held
                self.conn.execute(text("SELECT 1"))
                return True
            except Exception:
                pass
            self.release()
        try:
            self.conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            got = self.conn.execute(text("SELECT pg_try_advisory_lock(:id)"),
                                    {"id": lock_id(self.key)}).scalar()
        except Exception as exc:
            self.release()
            raise ConnectionError(f"lease: database unavailable: {type(exc).__name__}") from None
        if not got:
            self.release()
        return bool(got)

    def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.invalidate()   # not back to the pool: the session ends, its lock with it
            except Exception:
                pass
