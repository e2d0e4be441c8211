"""Deciding ahead: the rules run before the write lock, and the writer checks their reads.

SQLite has one writer at a time. If the rules ran inside the write transaction (as they did),
every message's rules would hold the lock and nothing else could write meanwhile: more cores
would not mean more messages. So a storage worker decides each message *ahead*, in a read-only
transaction outside the lock, while another worker holds it; the writer then only checks and
writes.

Why a decision made ahead can be trusted: the rule chain is pure
(:func:`sink.pipeline.evaluate`): its decision is a function of the parsed message, the box,
the directory snapshot and the answers to the read-only questions it asked (``seen`` - the
dedup keys - and :class:`sink.pipeline.records.Records`). :class:`Recorder` writes down every
question and its answer. At write time, inside the message's own transaction,
:func:`still_holds` asks the same questions again, in the same order: the rules are
deterministic, so if every answer is the same (and the directory version is), the rules run
there would ask the same questions and reach the same decision - the one made ahead is used.
If any answer moved (a copy of the message, or the message it replies to, was committed in
between, by this batch or another worker; a ticket, task or spam-list entry changed; the
directory was imported again), the writer decides again, as it always did. A decision made
ahead is therefore never a stale one, only a cheaper one.

Only where workers take turns to write (SQLite, :attr:`sink.storage.worker.WriteTurn.shared`):
on PostgreSQL every worker writes while the others do, and deciding ahead there only added a
second transaction's reads (9.2 round trips per 4 KB message instead of 6.5, issue 16).

Not decided ahead: messages that carry others (the carrier's trust needs the writer's
directory and its children their own rows), held messages (``sink suspend --store``), and any
message whose rules raised ahead (the writer runs them again and stores what happens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sink.pipeline.decision import Decision

Call = tuple[str, tuple, Any]        # (question, its arguments, the answer)


@dataclass(frozen=True)
class Ahead:
    """A decision made ahead for one box, and what it was made from."""
    decision: Decision
    directory_version: Any
    calls: tuple[Call, ...]
    parsed: Any = None      # the message as the box sees it (sink.mail.trust.for_box), as decided
    row: Any = None         # its messages row with the decision's outcome, bound (Fast.bind)


class Recorder:
    """The rules' read-only lookups, answered by ``seen`` and ``records``, each question and
    answer written down (in order) for :func:`still_holds`."""

    def __init__(self, seen: Callable, records) -> None:
        self._seen = seen
        self._records = records
        self.calls: list[Call] = []

    def seen(self, keys) -> bool:
        keys = tuple(keys)
        answer = self._seen(keys)
        self.calls.append(("seen", (keys,), answer))
        return answer

    def __getattr__(self, name: str):
        # any Records question (task, ticket, thread, spam_listed, ...): answered and noted
        method = getattr(self._records, name)

        def asked(*args):
            answer = method(*args)
            if isinstance(answer, dict):        # flags(): a plain snapshot, comparable
                answer = dict(answer)
            self.calls.append((name, args, answer))
            return answer
        return asked


def still_holds(ahead: Ahead, directory_version: Any, seen: Callable, records) -> bool:
    """True when every question ``ahead`` was decided on gets the same answer now."""
    if ahead.directory_version != directory_version:
        return False
    for name, args, answer in ahead.calls:
        now = seen(*args) if name == "seen" else getattr(records, name)(*args)
        if isinstance(now, dict):
            now = dict(now)
        if now != answer:
            return False
    return True
