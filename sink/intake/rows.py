"""The statements every message runs, compiled once and run on the DBAPI cursor
(:mod:`sink.db.fastpath`: the same SQL and type processing as Connection.execute, a fraction of
its per-call cost), and the message row as a database accepts it."""

from __future__ import annotations

import os
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from sqlalchemy import bindparam, func, insert, literal_column, null, select, union_all, update
from sqlalchemy.engine import Connection

from sink.db import schema as t
from sink.db import fastpath
from sink.db.fastpath import Fast
from sink.mail.parse import storable

SEEN_KEY = Fast(select(t.dedup_keys.c.message_id).where(
    t.dedup_keys.c.box == bindparam("box"), t.dedup_keys.c.kind == bindparam("kind"),
    t.dedup_keys.c.digest == bindparam("digest")))
# A message's two keys in one round trip: two primary-key lookups, not one WHERE with an OR.
# PostgreSQL planned the OR (once, for the connection's life, on a nearly empty table) as a
# scan of the box's every key with the OR as a filter: 0.5 ms per message at 2,000 messages.
SEEN_KEYS = Fast(union_all(*(select(t.dedup_keys.c.message_id).where(
    t.dedup_keys.c.box == bindparam("box"), t.dedup_keys.c.kind == bindparam(f"kind{i}"),
    t.dedup_keys.c.digest == bindparam(f"digest{i}")) for i in (1, 2))))
STORED = Fast(select(t.messages.c.id, t.messages.c.status, t.messages.c.verdict).where(
    t.messages.c.box == bindparam("box"), t.messages.c.sha256 == bindparam("sha256")))
INSERT_MESSAGE = Fast(insert(t.messages), (
    "uuid", "received_at", "channel", "box", "mail_from", "rcpt_to", "sender", "to_addrs",
    "cc_addrs", "date_header", "subject", "message_id", "size", "sha256", "status", "trace",
    "parent_id", "verdict", "direction", "processed_at", "error", "dkim"))
INSERT_RAW = Fast(insert(t.raw_messages), ("message_id", "content"))
# SQLite: a big message's bytes are written into a zeroblob in chunks (insert_raw)
INSERT_RAW_SPACE = Fast(insert(t.raw_messages).values(
    message_id=bindparam("message_id"), content=func.zeroblob(bindparam("size"))))
STREAM_RAW_FROM = 1024 * 1024
_RAW_CHUNK = 1024 * 1024


def insert_raw(conn: Connection, message_id: int, raw: bytes) -> None:
    """The message's raw bytes. A message over STREAM_RAW_FROM goes in a megabyte at a time: on
    SQLite through the incremental blob API (bound as one value, pysqlite copies it and SQLite
    builds the whole record in memory), on PostgreSQL through COPY (bound as one value, libpq
    copies it into its output buffer, which grows by doubling) - either way a 40 MB message cost
    80 MB more in the storage worker while it was written. Smaller ones are one value
    (PostgreSQL: deferred to the batch's flush)."""
    if len(raw) <= STREAM_RAW_FROM or conn.dialect.name not in ("sqlite", "postgresql"):
        INSERT_RAW.defer(conn, {"message_id": message_id, "content": raw})
        return
    if conn.dialect.name == "postgresql":
        _copy_raw(conn, message_id, raw)
        return
    INSERT_RAW_SPACE.execute(conn, {"message_id": message_id, "size": len(raw)})
    dbapi = conn.connection.dbapi_connection
    try:
        with dbapi.blobopen("raw_messages", "content", message_id) as blob:
            view = memoryview(raw)
            for start in range(0, len(raw), _RAW_CHUNK):
                blob.write(view[start:start + _RAW_CHUNK])
    except conn.dialect.loaded_dbapi.Error as error:   # disk full, I/O: classified as ever
        fastpath.raise_dbapi(conn, "blob write raw_messages.content", (), error)


# COPY's binary format (PostgreSQL's documentation, "COPY", "Binary Format"): the signature,
# no flags, no header extension; one tuple of two fields, each its length then its bytes.
_COPY_RAW = "COPY raw_messages (message_id, content) FROM STDIN (FORMAT BINARY)"
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)


def _copy_raw(conn: Connection, message_id: int, raw: bytes) -> None:
    """One raw_messages row through COPY, its bytes sent a megabyte at a time, now (in the
    message's savepoint: rolled back with it) rather than at the flush."""
    fastpath.send_queued(conn)          # its SAVEPOINT first (COPY is no pipeline's)
    cursor = conn.connection.dbapi_connection.cursor()
    try:
        with cursor.copy(_COPY_RAW) as copy:
            copy.write(_COPY_HEADER + struct.pack("!hii", 2, 4, message_id)
                       + struct.pack("!i", len(raw)))
            view = memoryview(raw)
            for start in range(0, len(raw), _RAW_CHUNK):
                copy.write(view[start:start + _RAW_CHUNK])
            copy.write(_COPY_TRAILER)
    except conn.dialect.loaded_dbapi.Error as error:   # disk full, I/O: classified as ever
        fastpath.raise_dbapi(conn, _COPY_RAW, (), error)
    finally:
        cursor.close()


def message_uuid(now_ms: int | None = None) -> str:
    """A message's UUID: version 7 (RFC 9562, 5.7): 48 bits of Unix time in milliseconds,
    then 74 random bits. Unique as a random UUID is, and in time order: each new row goes to
    the end of the unique index instead of a random leaf, which wrote one page more per
    message to the WAL (and to the checkpoint) - ~9 % of a 4 KB message's pages on SQLite."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76            # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62            # variant 10 (RFC 9562)
    return str(uuid.UUID(int=value))


# Deferred in a PostgreSQL batch and sent sorted: two workers lock the same keys in one order.
INSERT_DEDUP_KEYS = Fast(insert(t.dedup_keys), ("box", "kind", "digest", "message_id"),
                         many=True, ordered=True)
# A message's outcome: what the rules decided, or that they failed (error).
OUTCOME_COLUMNS = ("status", "verdict", "direction", "trace", "processed_at", "error")
UPDATE_OUTCOME = Fast(update(t.messages).where(t.messages.c.id == bindparam("message_pk")),
                      OUTCOME_COLUMNS)


def seen_in(conn: Connection, box: str, known: Mapping[tuple[str, str], bool] | None = None
            ) -> Callable[[Iterable[tuple[str, str]]], bool]:
    """Whether a dedup key of ``box`` is stored - or deferred by an earlier message of the
    same batch (:func:`sink.db.fastpath.deferring`), which the database does not know yet.
    ``known``: whether each of some keys is stored, read in this transaction with nothing
    written since (:func:`stored_and_asked`); keys it does not hold are asked."""
    def seen(keys: Iterable[tuple[str, str]]) -> bool:
        keys = list(keys)
        if _deferred_key(conn, box, keys):
            return True
        if known and keys and all(key in known for key in keys):
            return any(known[key] for key in keys)
        return stored(keys)

    def stored(keys: list[tuple[str, str]]) -> bool:
        while len(keys) >= 2:
            (kind1, digest1), (kind2, digest2) = keys[:2]
            if SEEN_KEYS.first(conn, {"box": box, "kind1": kind1, "digest1": digest1,
                                       "kind2": kind2, "digest2": digest2}):
                return True
            keys = keys[2:]
        return bool(keys) and SEEN_KEY.first(
            conn, {"box": box, "kind": keys[0][0], "digest": keys[0][1]}) is not None
    return seen


# PostgreSQL: a message's first read asks, in one statement (one round trip instead of three),
# whether its bytes are stored for the box (STORED) and what the rules will ask next about it:
# whether each of its dedup keys is stored (the duplicate filter) and whether its sender is on
# the box's stored spam list (the spam filter). Nothing the message writes comes before the
# rules ask (its dedup keys are written after the decision, its spam mark by the executor), so
# the answers are those the rules' own SELECTs would get a moment later in the transaction;
# a question asked otherwise (other keys, another address) is asked as ever.
@dataclass(frozen=True)
class Asked:
    seen: Mapping[tuple[str, str], bool]            # dedup key -> stored
    spam: Mapping[tuple[str, str], bool]            # (box, email) -> on the stored spam list


_STORED_AND_ASKED: dict[tuple[int, bool], Fast] = {}


def _stored_and_asked(keys: int, spam: bool) -> Fast:
    found = _STORED_AND_ASKED.get((keys, spam))
    if found is None:
        m, d, s = t.messages.c, t.dedup_keys.c, t.spam_list.c
        box = bindparam("box")
        parts = [select(literal_column("0").label("q"), m.id, m.status, m.verdict)
                 .where(m.box == box, m.sha256 == bindparam("sha256"))]
        # one primary-key lookup each (see SEEN_KEYS: no OR)
        parts += [select(literal_column(str(i + 1)), d.message_id, null(), null())
                  .where(d.box == box, d.kind == bindparam(f"kind{i}"),
                         d.digest == bindparam(f"digest{i}")) for i in range(keys)]
        if spam:
            parts.append(select(literal_column("-1"), null(), null(), null())
                         .select_from(t.spam_list)
                         .where(s.box == box, s.email == bindparam("email")))
        found = _STORED_AND_ASKED[keys, spam] = Fast(union_all(*parts))
    return found


def stored_and_asked(conn: Connection, box: str, sha256: str, keys: Iterable[tuple[str, str]],
                     sender: str | None) -> tuple[tuple | None, Asked]:
    """The STORED row (id, status, verdict) of ``sha256`` for ``box`` or None, and the
    answers of :class:`Asked` for ``keys`` and ``sender``, in one statement."""
    keys = tuple(keys)
    params = {"box": box, "sha256": sha256}
    for i, (kind, digest) in enumerate(keys):
        params[f"kind{i}"], params[f"digest{i}"] = kind, digest
    if sender:
        params["email"] = sender
    statement = _stored_and_asked(len(keys), bool(sender))
    stored, seen_at, listed = None, set(), False
    for q, value, status, verdict in statement.all(conn, params):
        if q == 0:
            stored = (value, status, verdict)
        elif q > 0:
            seen_at.add(q - 1)
        else:
            listed = True
    return stored, Asked({key: i in seen_at for i, key in enumerate(keys)},
                         {(box, sender): listed} if sender else {})


def _deferred_key(conn: Connection, box: str, keys: list[tuple[str, str]]) -> bool:
    wanted = set(keys)
    return any(row["box"] == box and (row["kind"], row["digest"]) in wanted
               for row in fastpath.pending(conn, INSERT_DEDUP_KEYS))


def storable_row(table, values: dict) -> dict:
    """The summary of a message as the database accepts it, whatever the message held: no NUL
    or lone surrogate in any text (an envelope address in Latin-1 arrives as surrogates), and no
    string longer than its column (PostgreSQL refuses a 400-character From address). The raw
    bytes, stored beside it, stay exact; a summary that could not be stored would defer the
    message for ever."""
    lengths = _lengths(table)
    row = {}
    for key, value in values.items():
        if isinstance(value, str):
            value = storable(value)
            length = lengths[key]
            if length and len(value) > length:
                value = value[:length]
        elif isinstance(value, list):
            value = [storable(v) if isinstance(v, str) else v for v in value]
        row[key] = value
    return row


_LENGTHS: dict[str, dict[str, int | None]] = {}


def _lengths(table) -> dict[str, int | None]:
    """Each column's string length limit (None: unlimited), looked up once per table: finding
    a column by key costs more than cutting the value (every message, every text column)."""
    found = _LENGTHS.get(table.name)
    if found is None:
        found = _LENGTHS[table.name] = {c.key: getattr(c.type, "length", None)
                                        for c in table.columns}
    return found
