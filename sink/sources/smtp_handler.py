"""aiosmtpd handler hooks: RCPT admission and DATA -> storage -> the replies of
:mod:`sink.sources.replies`.

The message goes to the storage's ``submit`` (:mod:`sink.storage`); each session is answered
after its own message's commit. The wait is shielded from cancellation: a client that times
out or disconnects after the final dot cannot interrupt a commit half-way (its resend is then
recognised as already stored).
"""

from __future__ import annotations

import asyncio
import time

from aiosmtpd.smtp import Envelope as SmtpEnvelope, Session, TLSSetupException

from sink.config import Config, ListenerConfig
from sink.errors import classify
from sink.intake import Envelope
from sink.log import get_logger
from sink.mail.textnorm import fold_address
from sink.operations import Ops
from sink.sources.replies import REPLY_TOO_MANY_RCPTS, reply_for

log = get_logger("sink.sources.smtp")


class Handler:
    """aiosmtpd handler hooks: RCPT admission and DATA -> storage -> replies."""

    def __init__(self, config: Config, storage, listener: ListenerConfig, tracker: "InFlight",
                 ops: Ops | None = None):
        self.boxes = {b.address: b for b in config.boxes}
        self.storage = storage
        self.listener = listener
        self.lmtp = listener.protocol == "lmtp"
        self.tracker = tracker
        self.ops = ops or Ops()

    async def handle_EHLO(self, server, session: Session, envelope: SmtpEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        """EHLO and LHLO: aiosmtpd's keywords, PIPELINING and ENHANCEDSTATUSCODES (RFC 2033 5:
        an LMTP server MUST implement both; :mod:`sink.sources.smtp_protocol` answers a
        pipelined group in one write and gives every reply its status code). With this hook
        aiosmtpd leaves the client's name to it."""
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server, session: Session, envelope: SmtpEnvelope, address: str,
                          mail_options):
        # suspended without --store: 451 4.3.2, the MTA keeps the mail (SPEC 7)
        if self.ops.suspension.active and not self.ops.suspension.store:
            return self.ops.refused_suspended()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.sink_mail_at = time.perf_counter()     # sink_reply_seconds starts here
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session: Session, envelope: SmtpEnvelope, address: str,
                          rcpt_options):
        if self.ops.suspension.active and not self.ops.suspension.store:
            return self.ops.refused_suspended()     # suspended since this MAIL FROM
        if fold_address(address) not in self.boxes:
            return f"550 5.1.1 <{address}>: Recipient address rejected: not a box of this sink"
        if len(envelope.rcpt_tos) >= self.listener.max_recipients:
            return REPLY_TOO_MANY_RCPTS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session: Session, envelope: SmtpEnvelope):
        started = time.perf_counter()
        rcpts = [fold_address(r) for r in envelope.rcpt_tos]
        boxes = [self.boxes[a] for a in dict.fromkeys(rcpts)]
        meta = Envelope(channel=self.listener.protocol, mail_from=envelope.mail_from,
                        rcpt_tos=tuple(rcpts), hold=self.ops.suspension.store)
        outcomes = await self._store(meta, boxes, _take_content(envelope), started)
        if not self.lmtp:
            replies = [_reply(outcomes)]
        else:
            # LMTP: each box has its own outcome (its own savepoint in the batch) and its own
            # reply, repeated for every RCPT that named it, in RCPT order.
            per_box = {box.address: _reply([outcome]) for box, outcome in zip(boxes, outcomes)}
            replies = [per_box[a] for a in rcpts]
        self.ops.observe(meta.channel, outcomes, replies, getattr(envelope, "sink_mail_at", None))
        return "\r\n".join(replies)

    async def _store(self, meta: Envelope, boxes, raw: bytes, started: float) -> list:
        """One outcome per box: a Delivery (or the worker's account of one), or the error to
        answer 4xx for."""
        try:
            future = self.storage.submit(raw, meta, boxes, started)
            del raw
            self.tracker.add(future)
            return list(await asyncio.shield(future))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if classify(error) is None:
                log.exception("message.store_error", error=type(error).__name__)
            return [error] * len(boxes)

    def handle_STARTTLS(self, server, session: Session, envelope: SmtpEnvelope) -> bool:
        """After the TLS handshake (aiosmtpd calls this synchronously): with
        ``tls_client_ca`` the client must have shown a certificate of that CA (the context
        verified it) whose name is one of ``tls_client_names``; otherwise every further
        command is refused (``554 5.7.1``)."""
        if not self.listener.tls_client_ca:
            return True
        extra = session.ssl or {}
        ok, name = client_certificate_ok(extra.get("peercert"), self.listener.tls_client_names)
        log.info("tls.client", peer=str(session.peer[0]) if session.peer else None,
                 accepted=ok, name=name)
        return ok

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # The client's TLS handshake failed (a scanner, an old client, a client that went
            # away after the 220): the client's doing, not ours - a warning with the cause,
            # never an error line. aiosmtpd closes the connection; no reply reaches it.
            cause = error.__cause__ or error
            log.warning("session.tls_failed",
                        error=f"{type(cause).__name__}: {cause}"[:300])
            return reply_for(error)
        log.error("session.error", error=f"{type(error).__name__}: {error}"[:300])
        return reply_for(error)


def client_certificate_ok(peercert: dict | None, names) -> tuple[bool, str | None]:
    """(accepted, the name that matched or the first one shown). A certificate that the CA
    did not sign never gets here (the TLS context refuses it); none at all is refused."""
    if not peercert:
        return False, None
    shown = [value.lower() for kind, value in peercert.get("subjectAltName", ())
             if kind == "DNS"]
    shown += [value.lower() for rdn in peercert.get("subject", ()) for key, value in rdn
              if key == "commonName"]
    if not names:                    # any certificate of the CA
        return True, shown[0] if shown else None
    for name in shown:
        if name in names:
            return True, name
    return False, shown[0] if shown else None


def _take_content(envelope: SmtpEnvelope) -> bytes:
    """The message's bytes, no longer held by the session: once a storage worker has them this
    process keeps no copy while it waits (a 40 MB message would otherwise be held here and in
    the worker at once)."""
    raw = envelope.original_content
    envelope.content = envelope.original_content = None
    return raw


def _reply(outcomes) -> str:
    """The one reply for these outcomes: 4xx when any failed, else 250 with the ids."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            return reply_for(outcome)
    ids = ", ".join(f"#{d.message_id}" for d in outcomes)
    if any(d.status == "failed" for d in outcomes):
        return f"250 2.0.0 Ok: stored as {ids} (rules failed, kept for replay)"
    if any(d.already_stored for d in outcomes):
        return f"250 2.0.0 Ok: already stored as {ids}"
    return f"250 2.0.0 Ok: stored as {ids}"


class InFlight:
    """Storage futures not yet finished: SIGTERM waits for them before exiting."""

    def __init__(self):
        self.futures: set[asyncio.Future] = set()

    def add(self, future: asyncio.Future) -> None:
        self.futures.add(future)
        future.add_done_callback(self.futures.discard)

    async def drain(self, timeout: float) -> int:
        pending = set(self.futures)
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        return len(pending)


