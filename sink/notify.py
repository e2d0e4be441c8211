"""Error notifications by mail (SPEC section 7, ``[notify]``).

API, for any part of ``sink serve``::

    app.notifier.notify(kind, subject, body)

- callable from any thread (the event loop, a storage thread, a poller's thread); it never
  blocks and never raises: the mail is queued and sent by this component's task, never on a
  message's path to its reply;
- ``kind`` is one of :data:`KINDS` (a short stable word; the rate limit is per kind): at most
  one mail per kind every ``min_interval`` seconds, the rest are counted and the next mail of
  that kind says how many were held back and since when;
- ``subject`` one line (prefixed ``[crm-sink]``), ``body`` plain text: say what happened, since
  when and what to run (``sink show ID``, ``sink replay ID``, ``sink status``). Never a
  message's body or a secret.

Storage worker processes do not call it: the listener process sees their outcomes (a message
stored ``failed``, 4xx answers, :mod:`sink.sources.smtp_handler`) and their restarts
(:class:`sink.storage.pool.WorkerPool` ``on_restart``) and notifies from there.

Who notifies what: a message stored failed (the listener, and resume), a source failing
(:mod:`sink.sources.poller`), storage answering 4xx for a minute (:mod:`sink.operations`), a
worker restarted (:mod:`sink.app`), a message too large left on a server (the sources), a
certificate about to expire (:mod:`sink.expiry`) or a secret refused (the calendar):
``credential``; the backup directory failing (:mod:`sink.backup`).

Sending: aiosmtplib to ``smtp_server``, :data:`ATTEMPTS` tries with a pause between; a mail
that cannot be sent is logged (``notify.failed``) and dropped - never retried for ever, never a
reason to defer mail. Without ``[notify]`` the component logs ``notify.skipped`` only.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import time
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from sink.config.notify import NotifyConfig
from sink.log import get_logger

log = get_logger("sink.notify")

KINDS = ("message_failed", "source_failing", "storage_deferring", "credential",
         "worker_restarted", "message_too_big")
ATTEMPTS = 3
RETRY_PAUSE = 5.0
QUEUE_LIMIT = 1000              # notifications waiting; beyond that they are counted, not kept
SEND_TIMEOUT = 15.0


class _Kind:
    def __init__(self):
        self.last_sent: float | None = None
        self.held = 0
        self.held_since: datetime | None = None


class Notifier:
    def __init__(self, config: NotifyConfig | None, *, retry_pause: float = RETRY_PAUSE):
        self.config = config
        self.retry_pause = retry_pause
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._kinds: dict[str, _Kind] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.sent = 0
        self.failed = 0

    # ------------------------------------------------------------------------------ public
    def notify(self, kind: str, subject: str, body: str) -> None:
        """Queue one notification; see the module docstring. Never blocks, never raises."""
        try:
            if self._queue.qsize() >= QUEUE_LIMIT:
                return
            self._queue.put((kind, subject, body, datetime.now(timezone.utc)))
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._wake.set)
        except Exception:           # a notification must never break its caller
            pass

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self, grace: float = 5.0) -> None:
        """Send what is queued for up to ``grace`` seconds, then give up (logged)."""
        if self._task is None:
            return
        self._queue.put(None)
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except asyncio.TimeoutError:
            self._task.cancel()
            log.warning("notify.abandoned", waiting=self._queue.qsize())

    # ------------------------------------------------------------------------------ task
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    return
                await self._handle(*item)

    async def _handle(self, kind: str, subject: str, body: str, at: datetime) -> None:
        state = self._kinds.setdefault(kind, _Kind())
        interval = self.config.min_interval if self.config else 0
        now = time.monotonic()
        if state.last_sent is not None and now - state.last_sent < interval:
            state.held += 1
            state.held_since = state.held_since or at
            log.info("notify.held", kind=kind, held=state.held)
            return
        if state.held:
            body += (f"\n\n{state.held} more notification(s) of this kind were held back "
                     f"since {state.held_since:%Y-%m-%d %H:%M:%S} UTC (at most one every "
                     f"{interval} s).")
        state.last_sent, state.held, state.held_since = now, 0, None
        if self.config is None:
            log.info("notify.skipped", kind=kind, subject=subject, reason="no [notify] section")
            return
        await self._send(kind, self._message(kind, subject, body, at))

    def _message(self, kind: str, subject: str, body: str, at: datetime) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.config.sender
        message["To"] = ", ".join(self.config.to)
        message["Subject"] = f"[crm-sink] {subject}".replace("\r", " ").replace("\n", " ")
        message["Date"] = format_datetime(at)
        message["Message-ID"] = make_msgid("crm-sink")
        message["X-Sink-Notification"] = kind
        message["Auto-Submitted"] = "auto-generated"     # RFC 3834: no auto-replies to it
        message.set_content(f"{body}\n\nhost: {socket.gethostname()}\nat: "
                            f"{at:%Y-%m-%d %H:%M:%S} UTC\n")
        return message

    async def _send(self, kind: str, message: EmailMessage) -> None:
        import aiosmtplib
        for attempt in range(1, ATTEMPTS + 1):
            try:
                await aiosmtplib.send(message, hostname=self.config.host, port=self.config.port,
                                      timeout=SEND_TIMEOUT, start_tls=False)
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as error:
                log.warning("notify.retry" if attempt < ATTEMPTS else "notify.failed",
                            kind=kind, attempt=attempt, server=self.config.smtp_server,
                            error=f"{type(error).__name__}: {error}"[:200])
                if attempt < ATTEMPTS:
                    await asyncio.sleep(self.retry_pause * attempt)
                continue
            self.sent += 1
            log.info("notify.sent", kind=kind, to=list(self.config.to))
            return
        self.failed += 1
