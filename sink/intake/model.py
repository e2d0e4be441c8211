"""The values that travel between an ingress, the storage and the log: what arrived
(:class:`Envelope`), what is ready to store (:class:`Prepared`), what was stored
(:class:`Delivery`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from sink.intake.ahead import Ahead
from sink.mail.parse import ParsedMessage
from sink.mail.unwrap import Unwrapped
from sink.pipeline.decision import Decision

UNWRAPPED = "UNWRAPPED"     # verdict of a journal report, wrapper or PEC envelope


@dataclass(frozen=True)
class Envelope:
    channel: str                      # lmtp, smtp, pop3, imap, emldir, cli
    mail_from: str | None = None
    rcpt_tos: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()         # recipients known from a journal envelope or own copy
    hold: bool = False                # `sink suspend --store`: store as pending, decide nothing


@dataclass(frozen=True)
class Delivery:
    box: str
    message_id: int
    status: str                       # processed | failed
    verdict: str | None
    decision: Decision | None         # as stored (sink.executor.apply's answer)
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
    dkim: str = "none"                # dkimpy's verdict on the message's own signatures
    attachments: object = None        # sink.mail.attachments.Listing of ``raw``, read before
                                      # the transaction (None: read when the row is written)
    ahead: Mapping[str, Ahead] | None = None   # box address -> the rules' decision made
                                      # before the write lock (sink.intake.ahead), or None
