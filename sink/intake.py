"""Store-then-decide for one message: raw bytes, message row, rule outcome and records in one
transaction per box. Every ingress (LMTP/SMTP, pollers, eml directory, ``sink ingest``) ends here.
The server stores many messages in one transaction instead, each delivery in its own savepoint
(:mod:`sink.storage.batching`, group commit) with the same :meth:`Intake.store`.

Guarantees, in the order they are established:
- the same bytes for the same box are stored once (unique ``(box, sha256)``): an MTA that lost
  our 250 and resends gets 250 again without a second row;
- a message whose dedup key was already processed is stored as DUPLICATE and creates nothing
  (the keys are unique rows, so two instances racing on PostgreSQL cannot both process it);
- a rule that raises leaves the message stored as ``failed`` with the error, never lost;
- a storage failure raises :class:`~sink.errors.TransientStorageError`: nothing was committed,
  the caller answers 4xx and the MTA retries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from sqlalchemy import exc as sa_exc
from sqlalchemy import and_, bindparam, insert, or_, select, update
from sqlalchemy.engine import Connection, Engine

from sink.config import BoxConfig
from sink.db import schema as t
from sink.db import fastpath
from sink.db.attachments import store_attachments
from sink.db.directory_store import directory_version, load_directory
from sink.db.fastpath import Fast
from sink.db.records import DbRecords
from sink.directory import Directory
from sink.errors import TransientStorageError, classify
from sink.executor import apply, record_counts
from sink.log import get_logger
from sink.mail.parse import ParsedMessage, parse_message, storable
from sink.pipeline import evaluate
from sink.pipeline.decision import Decision
from sink.mail.unwrap import Unwrapped, unwrap

log = get_logger("sink.intake")
UNWRAPPED = "UNWRAPPED"     # verdict of a journal report, wrapper or PEC envelope
RACE_RETRIES = 3


@dataclass(frozen=True)
class Envelope:
    channel: str                      # lmtp, smtp, pop3, imap, emldir, cli
    mail_from: str | None = None
    rcpt_tos: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()         # recipients known from a journal envelope or own copy


@dataclass(frozen=True)
class Delivery:
    box: str
    message_id: int
    status: str                       # processed | failed
    verdict: str | None
    decision: Decision | None
    already_stored: bool = False
    error: str | None = None
    carried: tuple["Delivery", ...] = ()   # a journal report / wrapper / PEC: its messages
    sender: str | None = None              # for the log: a carried message's own sender

    def processed_messages(self) -> tuple["Delivery", ...]:
        """What counts as processed mail: the carried messages of a wrapper, else itself."""
        return self.carried or (self,)


@dataclass(frozen=True)
class Prepared:
    """A received message made ready for storage, once, whatever the number of boxes: its
    digest and parse (CPU work, done before any transaction so that it never holds SQLite's
    write lock)."""
    raw: bytes
    envelope: Envelope
    sha256: str
    parsed: ParsedMessage
    carried: Unwrapped | None
    started: float                    # perf_counter() at receipt, for the log's duration_ms


class DirectoryCache:
    """The directory snapshot, reloaded when its version row changes (every import bumps it)."""

    def __init__(self) -> None:
        self._snapshot: Directory | None = None
        self._lock = threading.Lock()
        self._pinned = threading.local()

    @property
    def current(self) -> Directory | None:
        """The snapshot loaded last (None before the first ``get``)."""
        return self._snapshot

    def get(self, conn: Connection) -> Directory:
        pinned = getattr(self._pinned, "snapshot", None)
        if pinned is not None:
            return pinned
        version = directory_version(conn)
        snapshot = self._snapshot
        if snapshot is not None and snapshot.version == version:
            return snapshot
        with self._lock:
            if self._snapshot is None or self._snapshot.version != version:
                self._snapshot = load_directory(conn)
            return self._snapshot

    @contextmanager
    def pinned(self, conn: Connection):
        """Within the block, this thread's ``get`` answers one snapshot without asking the
        version row again: a batch of messages reads the directory version once."""
        self._pinned.snapshot = None
        self._pinned.snapshot = self.get(conn)
        try:
            yield self._pinned.snapshot
        finally:
            self._pinned.snapshot = None


# The statements every message runs, compiled once and run on the DBAPI cursor
# (sink.db.fastpath: the same SQL and type processing as Connection.execute, a fraction of
# its per-call cost).
_SEEN_KEY = Fast(select(t.dedup_keys.c.message_id).where(
    t.dedup_keys.c.box == bindparam("box"), t.dedup_keys.c.kind == bindparam("kind"),
    t.dedup_keys.c.digest == bindparam("digest")))
_SEEN_KEYS = Fast(select(t.dedup_keys.c.message_id).where(   # a message's two keys at once
    t.dedup_keys.c.box == bindparam("box"),
    or_(and_(t.dedup_keys.c.kind == bindparam("kind1"),
             t.dedup_keys.c.digest == bindparam("digest1")),
        and_(t.dedup_keys.c.kind == bindparam("kind2"),
             t.dedup_keys.c.digest == bindparam("digest2")))))
_STORED = Fast(select(t.messages.c.id, t.messages.c.status, t.messages.c.verdict).where(
    t.messages.c.box == bindparam("box"), t.messages.c.sha256 == bindparam("sha256")))
_INSERT_MESSAGE = Fast(insert(t.messages), (
    "uuid", "received_at", "channel", "box", "mail_from", "rcpt_to", "sender", "to_addrs",
    "cc_addrs", "date_header", "subject", "message_id", "size", "sha256", "status", "trace",
    "parent_id", "verdict", "direction", "processed_at"))
_INSERT_RAW = Fast(insert(t.raw_messages), ("message_id", "content"))
_INSERT_DEDUP_KEYS = Fast(insert(t.dedup_keys), ("box", "kind", "digest", "message_id"),
                          many=True)
_UPDATE_PROCESSED = Fast(update(t.messages).where(t.messages.c.id == bindparam("message_pk")),
                         ("status", "verdict", "direction", "trace", "processed_at"))
_RECORDS_SAVEPOINT = "sink_records"


def _seen_in(conn: Connection, box: str) -> Callable[[Iterable[tuple[str, str]]], bool]:
    def seen(keys: Iterable[tuple[str, str]]) -> bool:
        keys = list(keys)
        while len(keys) >= 2:
            (kind1, digest1), (kind2, digest2) = keys[:2]
            if _SEEN_KEYS.first(conn, {"box": box, "kind1": kind1, "digest1": digest1,
                                       "kind2": kind2, "digest2": digest2}):
                return True
            keys = keys[2:]
        return bool(keys) and _SEEN_KEY.first(
            conn, {"box": box, "kind": keys[0][0], "digest": keys[0][1]}) is not None
    return seen


def _storable_row(table, values: dict) -> dict:
    """The summary of a message as the database accepts it, whatever the message held: no NUL
    or lone surrogate in any text (an envelope address in Latin-1 arrives as surrogates), and no
    string longer than its column (PostgreSQL refuses a 400-character From address). The raw
    bytes, stored beside it, stay exact; a summary that could not be stored would defer the
    message for ever."""
    row = {}
    for key, value in values.items():
        if isinstance(value, str):
            value = storable(value)
            length = getattr(table.c[key].type, "length", None)
            if length and len(value) > length:
                value = value[:length]
        elif isinstance(value, list):
            value = [storable(v) if isinstance(v, str) else v for v in value]
        row[key] = value
    return row


class ReplayError(Exception):
    """A message ``sink replay`` refuses: unknown, not failed, or its box not configured."""


_REPLAY_ROW = select(t.messages.c.id, t.messages.c.box, t.messages.c.status,
                     t.messages.c.parent_id, t.messages.c.sha256, t.messages.c.channel,
                     t.messages.c.mail_from, t.messages.c.rcpt_to)


def _replayable(row, message_id: int, boxes: dict[str, BoxConfig]) -> BoxConfig:
    if row is None:
        raise ReplayError(f"message {message_id}: not found")
    if row.status != "failed":
        raise ReplayError(f"message {message_id}: status is {row.status}; only failed messages "
                          f"are replayed")
    box = boxes.get(row.box)
    if box is None:
        raise ReplayError(f"message {message_id}: its box {row.box} is not in the configuration")
    return box


def _parsed_for_replay(raw: bytes, sha256: str, parent: bytes | None) -> ParsedMessage:
    """The message as the pipeline saw it: a message carried by a journal report gets the
    report's envelope again (its sender and recipients), found by unwrapping the parent."""
    if parent is not None:
        carried = unwrap(parse_message(parent))
        for inner in carried.inner if carried else ():
            if hashlib.sha256(inner.raw).hexdigest() == sha256:
                return inner.parsed
    return parse_message(raw)


class Intake:
    def __init__(self, engine: Engine, *, rules=evaluate, clock=lambda: datetime.now(timezone.utc)):
        self.engine = engine
        self.rules = rules
        self.clock = clock
        self.directory = DirectoryCache()

    # ------------------------------------------------------------------------------ public
    def deliver(self, raw: bytes, envelope: Envelope, boxes: Iterable[BoxConfig]) -> list[Delivery]:
        """Store and process ``raw`` for each box; raise TransientStorageError to defer."""
        prepared = self.prepare(raw, envelope)
        deliveries = []
        for box in boxes:
            for attempt in range(RACE_RETRIES):
                try:
                    with self.engine.begin() as conn:
                        delivery = self.store(conn, prepared, box)
                    break
                except sa_exc.IntegrityError:
                    # Another session or instance committed the same bytes or dedup key first;
                    # run again and we see its row.
                    if attempt == RACE_RETRIES - 1:
                        raise TransientStorageError("kept racing on a unique key") from None
                except Exception as error:
                    transient = classify(error)
                    if transient is None:
                        raise
                    log.warning("message.deferred", box=box.address, channel=envelope.channel,
                                size=len(raw), reason=str(transient), no_space=transient.no_space)
                    raise transient from error
            deliveries.append(delivery)
            self.log_delivery(delivery, prepared)
        return deliveries

    def prepare(self, raw: bytes, envelope: Envelope, started: float | None = None) -> Prepared:
        """Digest and parse ``raw`` (and unwrap what it carries); no database work.
        ``started``: ``time.perf_counter()`` at receipt (CLOCK_MONOTONIC on Linux, so the
        protocol process's reading is valid in a storage worker), else now."""
        if started is None:
            started = time.perf_counter()
        parsed = parse_message(raw, bcc=envelope.bcc)
        return Prepared(raw, envelope, hashlib.sha256(raw).hexdigest(), parsed, unwrap(parsed),
                        started)

    def store(self, conn: Connection, prepared: Prepared, box: BoxConfig) -> Delivery:
        """Store and decide ``prepared`` for ``box`` inside the caller's transaction (the same
        bytes already stored for the box: that row, marked ``already_stored``). Raises
        IntegrityError when another transaction stored the same bytes or dedup key first."""
        existing = _STORED.first(conn, {"box": box.address, "sha256": prepared.sha256})
        if existing is not None:
            stored_id, status, verdict = existing
            return Delivery(box.address, stored_id, status, verdict, None, already_stored=True)
        return self._store(conn, prepared.raw, prepared.sha256, prepared.parsed,
                           prepared.envelope, box, prepared.carried)

    def replay_candidates(self, ids: Iterable[int] | None,
                          boxes: Iterable[BoxConfig]) -> list[int]:
        """The messages to replay, checked before any is: ``ids`` (each known, failed and of
        a configured box, else ReplayError), or with None every failed message, oldest first."""
        by_address = {b.address: b for b in boxes}
        with self.engine.connect() as conn:
            if ids is None:
                return list(conn.execute(select(t.messages.c.id).where(
                    t.messages.c.status == "failed").order_by(t.messages.c.id)).scalars())
            ids = list(dict.fromkeys(ids))
            rows = {r.id: r for r in conn.execute(_REPLAY_ROW.where(t.messages.c.id.in_(ids)))}
        for message_id in ids:
            _replayable(rows.get(message_id), message_id, by_address)
        return ids

    def replay(self, message_id: int, boxes: Iterable[BoxConfig]) -> Delivery:
        """Run the pipeline again on a stored ``failed`` message (once the rule that raised on
        it is fixed): in one transaction the same row becomes ``processed`` with its verdict
        and trace, and its records are created - once. The message row is locked for the
        transaction (FOR UPDATE on PostgreSQL; SQLite's BEGIN IMMEDIATE serialises anyway), so
        of two replays at the same time one processes it and the other finds it processed.

        Raises :class:`ReplayError` for a message that is unknown, not ``failed`` or whose box
        is not configured; TransientStorageError when the database is unavailable."""
        by_address = {b.address: b for b in boxes}
        with self.engine.connect() as conn:
            row = conn.execute(_REPLAY_ROW.where(t.messages.c.id == message_id)).first()
            box = _replayable(row, message_id, by_address)
            raw = conn.execute(select(t.raw_messages.c.content).where(
                t.raw_messages.c.message_id == message_id)).scalar()
            parent = None if row.parent_id is None else conn.execute(
                select(t.raw_messages.c.content).where(
                    t.raw_messages.c.message_id == row.parent_id)).scalar()
        started = time.perf_counter()
        # parse outside the transaction, like every delivery: the bytes never change
        parsed = _parsed_for_replay(bytes(raw), row.sha256,
                                    None if parent is None else bytes(parent))
        envelope = Envelope(row.channel, row.mail_from, tuple(row.rcpt_to or ()))
        for attempt in range(RACE_RETRIES):
            try:
                with self.engine.begin() as conn:
                    locked = conn.execute(_REPLAY_ROW.where(t.messages.c.id == message_id)
                                          .with_for_update()).first()
                    _replayable(locked, message_id, by_address)   # a concurrent replay won?
                    delivery = self._decide(conn, message_id, parsed, box)
                    if delivery.status == "processed":
                        conn.execute(update(t.messages).where(t.messages.c.id == message_id)
                                     .values(error=None))
                break
            except sa_exc.IntegrityError:
                # a copy of the message committed its dedup key meanwhile: again, and the
                # duplicate rule sees it
                if attempt == RACE_RETRIES - 1:
                    raise TransientStorageError("kept racing on a unique key") from None
            except ReplayError:
                raise
            except Exception as error:
                transient = classify(error)
                if transient is None:
                    raise
                raise transient from error
        log.info("message.replayed", id=message_id, box=box.address, status=delivery.status,
                 verdict=delivery.verdict)
        self._log(delivery, envelope, parsed, len(raw), started)
        return delivery

    def log_delivery(self, delivery: Delivery, prepared: Prepared) -> None:
        """The log events of one committed delivery (and of the messages it carried)."""
        for item in (delivery, *delivery.carried):
            self._log(item, prepared.envelope, prepared.parsed, len(prepared.raw),
                      prepared.started)

    def evaluate_only(self, raw: bytes, box: BoxConfig, envelope: Envelope) -> list[Decision]:
        """What ``deliver`` would decide, writing nothing (``sink check``): one decision per
        processed message (a wrapper yields one for each message it carries)."""
        parsed = parse_message(raw, bcc=envelope.bcc)
        carried = unwrap(parsed)
        messages = [i.parsed for i in carried.inner] if carried else [parsed]
        with self.engine.connect() as conn:
            try:
                directory = self.directory.get(conn)
                return [self._evaluate(conn, m, box, directory) for m in messages]
            finally:
                conn.rollback()

    # ------------------------------------------------------------------------------ steps
    def _store(self, conn: Connection, raw: bytes, sha256: str, parsed: ParsedMessage,
               envelope: Envelope, box: BoxConfig, carried: Unwrapped | None = None) -> Delivery:
        if carried is None:
            return self._store_decided(conn, raw, sha256, parsed, envelope, box)
        message_id = self._insert_message(conn, raw, sha256, parsed, envelope, box)
        return self._store_carried(conn, message_id, carried, envelope, box)

    def _store_decided(self, conn: Connection, raw: bytes, sha256: str, parsed: ParsedMessage,
                       envelope: Envelope, box: BoxConfig, parent_id: int | None = None
                       ) -> Delivery:
        """Decide, then write the message row once, with its outcome, and its records (the rules
        need no row of the message: one UPDATE per message fewer than pending-then-processed;
        the transaction makes the order invisible)."""
        directory = self.directory.get(conn)
        try:
            decision = self._evaluate(conn, parsed, box, directory)
        except Exception as error:
            message_id = self._insert_message(conn, raw, sha256, parsed, envelope, box, parent_id)
            return self._mark_failed(conn, message_id, box, "rules", error)
        message_id = self._insert_message(
            conn, raw, sha256, parsed, envelope, box, parent_id, outcome=dict(
                status="processed", verdict=decision.verdict, direction=decision.direction,
                trace=[e.as_json() for e in decision.trace], processed_at=self.clock()))
        return self._apply(conn, message_id, decision, box, directory)

    def _insert_message(self, conn: Connection, raw: bytes, sha256: str, parsed: ParsedMessage,
                        envelope: Envelope, box: BoxConfig, parent_id: int | None = None,
                        outcome: dict | None = None) -> int:
        message_id = _INSERT_MESSAGE.insert(conn, _storable_row(t.messages, dict(
            uuid=str(uuid.uuid4()), received_at=self.clock(), channel=envelope.channel,
            box=box.address, mail_from=envelope.mail_from, rcpt_to=list(envelope.rcpt_tos),
            sender=parsed.sender, to_addrs=list(parsed.to), cc_addrs=list(parsed.cc),
            date_header=parsed.date_header, subject=parsed.subject,
            message_id=parsed.message_id, size=len(raw), sha256=sha256, parent_id=parent_id,
            **(outcome or dict(status="pending", trace=[], verdict=None, direction=None,
                               processed_at=None)),
        )))
        _INSERT_RAW.execute(conn, {"message_id": message_id, "content": raw})
        store_attachments(conn, message_id, raw)
        return message_id

    def _store_carried(self, conn: Connection, outer_id: int, carried: Unwrapped,
                       envelope: Envelope, box: BoxConfig) -> Delivery:
        """The wrapper's own row records what it carried; each carried message is a message of
        its own (child row, own raw bytes, own decision), in the same transaction."""
        children = []
        for inner in carried.inner:
            sha = hashlib.sha256(inner.raw).hexdigest()
            existing = conn.execute(select(t.messages.c.id, t.messages.c.status,
                                           t.messages.c.verdict).where(
                t.messages.c.box == box.address, t.messages.c.sha256 == sha)).first()
            if existing is not None:
                children.append(Delivery(box.address, existing.id, existing.status,
                                         existing.verdict, None, already_stored=True))
                continue
            child = self._store_decided(conn, inner.raw, sha, inner.parsed, envelope, box,
                                        parent_id=outer_id)
            children.append(dataclasses.replace(child, sender=inner.parsed.sender))
        detail = f"{carried.kind}: " + ", ".join(f"#{c.message_id}" for c in children)
        conn.execute(update(t.messages).where(t.messages.c.id == outer_id).values(
            status="processed", verdict=UNWRAPPED, processed_at=self.clock(),
            trace=[{"rule": "unwrap", "outcome": "hit", "detail": detail}]))
        return Delivery(box.address, outer_id, "processed", UNWRAPPED, None,
                        carried=tuple(children))

    def _evaluate(self, conn: Connection, parsed: ParsedMessage, box: BoxConfig,
                  directory: Directory) -> Decision:
        """Run the rules with read-only lookups answered inside this transaction."""
        return self.rules(parsed, box, directory, _seen_in(conn, box.address), DbRecords(conn))

    def _decide(self, conn: Connection, message_id: int, parsed: ParsedMessage,
                box: BoxConfig) -> Delivery:
        """Decide a message already stored (a replay): its row becomes processed, with records."""
        directory = self.directory.get(conn)
        try:
            decision = self._evaluate(conn, parsed, box, directory)
        except Exception as error:
            return self._mark_failed(conn, message_id, box, "rules", error)
        _UPDATE_PROCESSED.execute(conn, {
            "message_pk": message_id, "status": "processed", "verdict": decision.verdict,
            "direction": decision.direction, "trace": [e.as_json() for e in decision.trace],
            "processed_at": self.clock()})
        return self._apply(conn, message_id, decision, box, directory)

    def _apply(self, conn: Connection, message_id: int, decision: Decision, box: BoxConfig,
               directory: Directory) -> Delivery:
        """The decision's records and dedup keys; an executor that fails leaves the message
        ``failed`` without any of them."""
        outer = fastpath.savepoint(conn, _RECORDS_SAVEPOINT)
        try:
            apply(conn, message_id, decision, directory)
            if decision.verdict != "DUPLICATE" and decision.dedup_keys:
                _INSERT_DEDUP_KEYS.execute_many(conn, [
                    {"box": box.address, "kind": kind, "digest": digest,
                     "message_id": message_id} for kind, digest in decision.dedup_keys])
            fastpath.release(conn, _RECORDS_SAVEPOINT)
        except (sa_exc.IntegrityError, sa_exc.OperationalError, sa_exc.InterfaceError):
            raise
        except Exception as error:
            if classify(error) is not None:
                raise
            fastpath.rollback_to(conn, _RECORDS_SAVEPOINT, outer, release=True)
            return self._mark_failed(conn, message_id, box, "executor", error)
        return Delivery(box.address, message_id, "processed", decision.verdict, decision)

    def _mark_failed(self, conn: Connection, message_id: int, box: BoxConfig, stage: str,
                     error: Exception) -> Delivery:
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        where = traceback.extract_tb(error.__traceback__)
        if where:
            frame = where[-1]
            detail += f" (at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name})"
        text = storable(f"{stage}: {detail}"[:4000])
        conn.execute(update(t.messages).where(t.messages.c.id == message_id).values(
            status="failed", error=text, trace=[], verdict=None, direction=None,
            processed_at=self.clock()))
        return Delivery(box.address, message_id, "failed", None, None, error=text)

    def _log(self, delivery: Delivery, envelope: Envelope, parsed: ParsedMessage,
             size: int, started: float) -> None:
        fields = dict(id=delivery.message_id, box=delivery.box, channel=envelope.channel,
                      sender=delivery.sender or parsed.sender, verdict=delivery.verdict,
                      status=delivery.status, size=size,
                      duration_ms=round((time.perf_counter() - started) * 1000, 2))
        if delivery.already_stored:
            log.info("message.already_stored", **fields)
        elif delivery.carried:
            log.info("message.unwrapped", carried=[c.message_id for c in delivery.carried],
                     **fields)
        elif delivery.status == "failed":
            log.error("message.failed", error=delivery.error, **fields)
        else:
            log.info("message.processed", **record_counts(delivery.decision), **fields)
