"""``sink replay``: run the rules again on a stored ``failed`` message once the rule that raised
on it is fixed - in one transaction the same row becomes ``processed`` with its verdict and
trace, and its records are created, once."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Callable, Iterable

from sqlalchemy import select

from sink.config import BoxConfig
from sink.db import schema as t
from sink.errors import TransientStorageError
from sink.intake.core import Intake, log
from sink.intake.model import Delivery, Envelope
from sink.intake.races import retry_races, transient
from sink.mail.parse import ParsedMessage, parse_message
from sink.mail.unwrap import unwrap


class ReplayError(Exception):
    """A message ``sink replay`` refuses: unknown, not failed, or its box not configured."""


_REPLAY_ROW = select(t.messages.c.id, t.messages.c.box, t.messages.c.status,
                     t.messages.c.parent_id, t.messages.c.sha256, t.messages.c.channel,
                     t.messages.c.mail_from, t.messages.c.rcpt_to, t.messages.c.dkim)


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


def load_stored(intake: Intake, query, message_id: int, check: Callable[..., BoxConfig],
                boxes: dict[str, BoxConfig]):
    """A stored message to decide again (replay, reprocess): ``(row, box, raw, parsed)``, with
    ``query``'s row checked by ``check(row, message_id, boxes)`` (ReplayError) and the message
    parsed as the pipeline saw it: a journal report's envelope again, and the authentication
    found at receipt (no DNS again, and the same verdict)."""
    with intake.engine.connect() as conn:
        row = conn.execute(query.where(t.messages.c.id == message_id)).first()
        box = check(row, message_id, boxes)
        raw = conn.execute(select(t.raw_messages.c.content).where(
            t.raw_messages.c.message_id == message_id)).scalar()
        parent = None if row.parent_id is None else conn.execute(
            select(t.raw_messages.c.content).where(
                t.raw_messages.c.message_id == row.parent_id)).scalar()
    # parse outside the transaction, like every delivery: the bytes never change
    parsed = _parsed_for_replay(bytes(raw), row.sha256,
                                None if parent is None else bytes(parent))
    parsed = dataclasses.replace(parsed, dkim=row.dkim or "none",
                                 authenticated=row.dkim == "pass")
    return row, box, raw, parsed


def candidates(intake: Intake, ids: Iterable[int] | None,
               boxes: Iterable[BoxConfig]) -> list[int]:
    """The messages to replay, checked before any is: ``ids`` (each known, failed and of a
    configured box, else ReplayError), or with None every failed message, oldest first."""
    by_address = {b.address: b for b in boxes}
    with intake.engine.connect() as conn:
        if ids is None:
            return list(conn.execute(select(t.messages.c.id).where(
                t.messages.c.status == "failed").order_by(t.messages.c.id)).scalars())
        ids = list(dict.fromkeys(ids))
        rows = {r.id: r for r in conn.execute(_REPLAY_ROW.where(t.messages.c.id.in_(ids)))}
    for message_id in ids:
        _replayable(rows.get(message_id), message_id, by_address)
    return ids


def replay(intake: Intake, message_id: int, boxes: Iterable[BoxConfig]) -> Delivery:
    """Replay one failed message. Its row is locked for the transaction (FOR UPDATE on
    PostgreSQL; SQLite's BEGIN IMMEDIATE serialises anyway), so of two replays at the same time
    one processes it and the other finds it processed.

    Raises :class:`ReplayError` for a message that is unknown, not ``failed`` or whose box is
    not configured; TransientStorageError when the database is unavailable."""
    by_address = {b.address: b for b in boxes}
    started = time.perf_counter()
    row, box, raw, parsed = load_stored(intake, _REPLAY_ROW, message_id, _replayable,
                                        by_address)

    def attempt() -> Delivery:
        with intake.engine.begin() as conn:
            locked = conn.execute(_REPLAY_ROW.where(t.messages.c.id == message_id)
                                  .with_for_update()).first()
            _replayable(locked, message_id, by_address)   # a concurrent replay won?
            return intake.decide_stored(conn, message_id, parsed, box)
    try:
        delivery = retry_races(attempt)
    except (ReplayError, TransientStorageError):
        raise
    except Exception as error:
        raise transient(error) from error
    log.info("message.replayed", id=message_id, box=box.address, status=delivery.status,
             verdict=delivery.verdict)
    envelope = Envelope(row.channel, row.mail_from, tuple(row.rcpt_to or ()))
    intake.log_one(delivery, envelope, parsed, len(raw), started)
    return delivery
