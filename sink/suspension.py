"""Suspend and resume (SPEC section 7, seed 003): the state lives in the database, so every
instance sharing it obeys, and a restart keeps it.

- ``sink suspend``: listeners answer ``451 4.3.2`` at MAIL and RCPT (the MTA keeps the mail),
  sources stop connecting; ``sink suspend --store``: every message is stored ``pending`` and
  nothing is decided; ``sink resume`` decides the pending messages, then lifts the suspension.
- :class:`Suspension` is the running instance's view: a component that reads the state row
  every :data:`POLL_INTERVAL` seconds (a change takes effect within a second). Other parts ask
  it: ``suspension.active`` (refuse / do not connect) and ``suspension.store`` (store as
  pending: ``Envelope(hold=True)``). A source checks ``app.suspension.active and not
  app.suspension.store`` before connecting, and submits with ``hold=app.suspension.store``.
- :func:`resume`: each pending message is decided in its own transaction that first locks the
  state row (``FOR UPDATE``; SQLite's BEGIN IMMEDIATE serialises anyway) and then takes the
  lowest pending id: in arrival order, one instance at a time, exactly once - a second
  ``resume`` at the same moment waits for the lock and then finds the message decided, and a
  resume killed half-way leaves the rest ``pending`` and the suspension in force, so running
  it again finishes the job. The suspension is lifted in the transaction that finds no pending
  message left, so mail arriving during the resume is still kept for it.
- Stragglers: an instance may store a message as pending up to one poll after the state
  changed; each instance that sees ``--store`` lifted therefore decides what is left a moment
  later (:meth:`Suspension._after_store_lifted`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable

from sqlalchemy import create_engine, func, select, update
from sqlalchemy.engine import Connection, Engine

from sink.config import BoxConfig
from sink.db import schema as t
from sink.db.queries import as_utc
from sink.log import get_logger

log = get_logger("sink.suspension")
POLL_INTERVAL = 0.5
STRAGGLER_DELAY = 2.0       # > a poll and a batch commit: a late pending row is committed by then


@dataclass(frozen=True)
class State:
    suspended: bool = False
    store: bool = False
    reason: str | None = None
    since: datetime | None = None


_STATE = select(t.operation_state.c.suspended, t.operation_state.c.store,
                t.operation_state.c.reason, t.operation_state.c.since).where(
    t.operation_state.c.id == 1)


def read_state(conn: Connection) -> State:
    row = conn.execute(_STATE).first()
    return State() if row is None else State(bool(row.suspended), bool(row.store), row.reason,
                                             as_utc(row.since))


def suspend(engine: Engine, *, store: bool, reason: str | None) -> State:
    with engine.begin() as conn:
        conn.execute(update(t.operation_state).where(t.operation_state.c.id == 1).values(
            suspended=True, store=store, reason=reason, since=datetime.now(timezone.utc)))
        state = read_state(conn)
    log.info("operations.suspended", store=store, reason=reason)
    return state


@dataclass
class Resumed:
    decided: int = 0
    failed: int = 0
    skipped: list[int] = None       # pending messages whose box is not configured
    lifted: bool = False


def resume(engine: Engine, boxes: Iterable[BoxConfig], *, lift: bool = True,
           progress: Callable[[int], None] | None = None,
           on_failed: Callable | None = None) -> Resumed:
    """Decide every pending message in arrival order; with ``lift``, end the suspension in the
    transaction that finds none left (without: stop early when the state is suspended with
    ``--store`` again, the straggler case). A message the rules fail on is logged
    (``message.failed``, its error) and handed to ``on_failed`` (``sink serve``: the error
    mail, SPEC 7)."""
    from sink.intake import Intake
    intake = Intake(engine)
    by_address = {b.address: b for b in boxes}
    done = Resumed(skipped=[])
    while True:
        with engine.begin() as conn:
            state = _lock_state(conn)
            if not lift and state.suspended:
                return done
            message = _next_pending(conn, done.skipped)
            if message is None:
                if lift:
                    _lift(conn)
                    done.lifted = True
                break
            box = by_address.get(message.box)
            if box is None:
                done.skipped.append(message.id)
                log.warning("resume.skipped", id=message.id, box=message.box,
                            reason="box not configured")
                continue
            delivery = _decide(conn, intake, message, box)
        done.decided += 1
        done.failed += delivery.status == "failed"
        log.info("message.resumed", id=message.id, box=box.address, status=delivery.status,
                 verdict=delivery.verdict)
        if delivery.status == "failed":
            log.error("message.failed", id=message.id, box=box.address, error=delivery.error,
                      during="resume")
            if on_failed is not None:
                on_failed(delivery)
        if progress is not None:
            progress(1)
    if done.lifted:
        log.info("operations.resumed", decided=done.decided, failed=done.failed)
    return done


def _lock_state(conn: Connection) -> State:
    row = conn.execute(_STATE.with_for_update()).first()
    return State() if row is None else State(bool(row.suspended), bool(row.store), row.reason,
                                             as_utc(row.since))


def _next_pending(conn: Connection, skipped: list[int]):
    query = select(t.messages.c.id, t.messages.c.box, t.messages.c.channel,
                   t.messages.c.mail_from, t.messages.c.rcpt_to, t.messages.c.dkim).where(
        t.messages.c.status == "pending", t.messages.c.parent_id.is_(None))
    if skipped:
        query = query.where(t.messages.c.id.not_in(skipped))
    return conn.execute(query.order_by(t.messages.c.id).limit(1).with_for_update()).first()


def _decide(conn: Connection, intake, message, box: BoxConfig):
    from sink.intake import Envelope
    raw = conn.execute(select(t.raw_messages.c.content).where(
        t.raw_messages.c.message_id == message.id)).scalar_one()
    envelope = Envelope(message.channel, message.mail_from, tuple(message.rcpt_to or ()))
    with intake.directory.pinned(conn):
        return intake.decide_held(conn, message.id, bytes(raw), envelope, box, message.dkim)


def _lift(conn: Connection) -> None:
    conn.execute(update(t.operation_state).where(t.operation_state.c.id == 1).values(
        suspended=False, store=False, reason=None, since=None))


def pending_count(conn: Connection) -> int:
    return conn.execute(select(func.count()).select_from(t.messages).where(
        t.messages.c.status == "pending", t.messages.c.parent_id.is_(None))).scalar_one()


def poll_engine(engine: Engine) -> Engine:
    """An engine for reading the state row: on SQLite one without the BEGIN IMMEDIATE of
    :func:`sink.db.engine.make_engine` (a read twice a second must not take the write lock the
    storage workers need); elsewhere the engine itself."""
    if engine.dialect.name != "sqlite":
        return engine
    return create_engine(engine.url, connect_args={"timeout": 5})


class Suspension:
    """This instance's view of the state row (a component: ``start`` reads it once before the
    listeners accept, then a task polls it). When the database cannot be read the last known
    state stays in force; ``last_read`` (monotonic) says when it last answered."""

    def __init__(self, engine: Engine, boxes: Iterable[BoxConfig] = (),
                 interval: float = POLL_INTERVAL):
        self.engine = engine
        self.boxes = tuple(boxes)
        self.interval = interval
        self.state = State()
        self.last_read: float | None = None
        self._reader = poll_engine(engine)
        self._task: asyncio.Task | None = None
        self._stragglers: asyncio.Task | None = None
        self.on_failed: Callable | None = None     # set by sink.operations.Ops: error mails

    @property
    def active(self) -> bool:
        return self.state.suspended

    @property
    def store(self) -> bool:
        return self.state.suspended and self.state.store

    async def start(self) -> None:
        await self._read()
        self._task = asyncio.ensure_future(self._poll())

    async def stop(self) -> None:
        for task in (self._task, self._stragglers):
            if task is not None:
                task.cancel()
        if self._reader is not self.engine:
            self._reader.dispose()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._read()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            state = await loop.run_in_executor(None, self._read_now)
        except Exception as error:       # keep the last known state; say so once a change
            if self.last_read is not None:
                log.warning("suspension.unreadable", error=type(error).__name__)
            return
        self.last_read = time.monotonic()      # /healthz compares with time.monotonic()
        if state != self.state:
            before, self.state = self.state, state
            log.info("suspension.changed", suspended=state.suspended, store=state.store,
                     reason=state.reason)
            if before.store and before.suspended and not state.suspended:
                self._stragglers = asyncio.ensure_future(self._after_store_lifted())

    def _read_now(self) -> State:
        with self._reader.connect() as conn:
            return read_state(conn)

    async def _after_store_lifted(self) -> None:
        await asyncio.sleep(STRAGGLER_DELAY)
        loop = asyncio.get_running_loop()
        try:
            done = await loop.run_in_executor(
                None, lambda: resume(self.engine, self.boxes, lift=False,
                                     on_failed=self.on_failed))
        except Exception as error:
            log.warning("resume.stragglers_failed", error=type(error).__name__)
            return
        if done.decided:
            log.info("resume.stragglers", decided=done.decided)


class NotSuspended:
    """What a part asks when no :class:`Suspension` runs (tests, ``sink ingest``)."""
    active = False
    store = False
    last_read = None
