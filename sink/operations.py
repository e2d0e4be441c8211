"""What the listeners report to operations after each reply: the metrics, the error mails of
a failed message and of storage answering 4xx for more than a minute. One object per app
(``app.ops``), used from the event loop only; cheap (counters and a comparison), it never
waits: a notification is queued (:mod:`sink.notify`)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from sink.log import get_logger
from sink.metrics import Metrics
from sink.notify import Notifier
from sink.suspension import NotSuspended

log = get_logger("sink.operations")
DEFERRING_ALERT_AFTER = 60.0        # seconds of nothing but 4xx from storage (SPEC 7)
REPLY_SUSPENDED = "451 4.3.2 Service suspended by the operator, try again later"


class Ops:
    def __init__(self, suspension=None, metrics: Metrics | None = None,
                 notifier: Notifier | None = None, *, clock=time.monotonic):
        self.suspension = suspension or NotSuspended()
        self.metrics = metrics or Metrics()
        self.notifier = notifier or Notifier(None)
        self.clock = clock
        self.deferring_since: float | None = None        # monotonic, first 4xx of a streak
        self.deferring_wall: datetime | None = None
        self.deferring_reason: str | None = None
        self.deferring_reported = False
        if hasattr(self.suspension, "on_failed"):   # resumed messages the rules fail on
            self.suspension.on_failed = self._failed

    def refused_suspended(self) -> str:
        self.metrics.count_reply(REPLY_SUSPENDED, None)
        return REPLY_SUSPENDED

    def observe(self, channel: str, outcomes: list, replies: list[str],
                started: float | None) -> None:
        """After a DATA reply: ``outcomes`` one per box, ``replies`` one per reply line."""
        for outcome in outcomes:
            self.metrics.count_outcome(channel, outcome)
            self._failed(outcome)
        for reply in replies:
            self.metrics.count_reply(reply, started)
        transient = [o for o in outcomes if isinstance(o, BaseException)]
        if transient:
            self._deferred(str(transient[0]))
        else:
            self.deferring_since = self.deferring_wall = self.deferring_reason = None
            self.deferring_reported = False

    def deferring_problem(self) -> str | None:
        """What ``/healthz`` says while storage has answered nothing but 4xx for more than
        DEFERRING_ALERT_AFTER (the streak the ``storage_deferring`` mail reports; the next
        stored message ends it): listeners that accept in front of a storage that answers
        451 to every message are not healthy. None otherwise: a single 451 before a quiet
        night is no outage."""
        # (read from the metrics thread while the loop may end the streak: one read each)
        reported, wall, reason = (self.deferring_reported, self.deferring_wall,
                                  self.deferring_reason)
        if not reported or wall is None:
            return None
        return f"storage: answering 4xx since {wall:%Y-%m-%d %H:%M:%S} UTC ({reason})"

    def _failed(self, outcome) -> None:
        if isinstance(outcome, BaseException) or outcome.already_stored:
            return
        for item in (outcome, *(getattr(outcome, "carried", ()) or ())):
            if item.status == "failed" and not item.already_stored:
                error = getattr(item, "error", None) or "(see sink show)"
                self.notifier.notify(
                    "message_failed", f"message #{item.message_id} failed in the rules",
                    f"Message #{item.message_id} (box {item.box}) was stored with status "
                    f"failed; its reply was 250 and it is kept for replay.\n\n"
                    f"Error: {error}\n\nSee it:    sink show {item.message_id}\n"
                    f"Once the rule is fixed: sink replay {item.message_id}\n"
                    f"All of them:            sink messages --status failed; "
                    f"sink replay --all-failed")

    def _deferred(self, reason: str) -> None:
        now = self.clock()
        self.deferring_reason = reason
        if self.deferring_since is None:
            self.deferring_since = now
            self.deferring_wall = datetime.now(timezone.utc)
            return
        if not self.deferring_reported and now - self.deferring_since > DEFERRING_ALERT_AFTER:
            self.deferring_reported = True
            log.error("storage.deferring", since=self.deferring_wall.isoformat(), reason=reason)
            self.notifier.notify(
                "storage_deferring", "storage answering 4xx for more than a minute",
                f"Since {self.deferring_wall:%Y-%m-%d %H:%M:%S} UTC every message was answered "
                f"4xx (the MTAs keep the mail and retry).\nLast reason: {reason}\n\n"
                f"Check the database and the disk, then: sink status")
