"""Certificates about to expire (SPEC 7: "a token or certificate about to expire"), a background
component of ``sink serve``.

A listener's ``tls_cert`` that expires makes every STARTTLS fail: Exchange Online then holds
the mail, Postfix with ``smtp_tls_security_level = encrypt`` too, and nobody notices until the
CRM has been empty for a day. Its ``tls_client_ca`` (Microsoft's chain) and the CA files of the
sources and the calendar fail the same way. So once at start and then every
:data:`CHECK_EVERY`, each configured PEM file is read, and a certificate in it that expires
within :data:`WARN_BEFORE` (or has expired) is logged (``credential.expiring``) and notified
(kind ``credential``: at most one mail per ``min_interval``). The OAuth2 tokens renew
themselves; a refused secret is notified where it is refused (sources, calendar).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from cryptography import x509

from sink.config import Config
from sink.log import get_logger

log = get_logger("sink.expiry")

WARN_BEFORE = timedelta(days=14)
CHECK_EVERY = 12 * 3600.0
MAX_PEM = 1024 * 1024           # a certificate file is kilobytes; a bundle a few hundred


def watched_files(config: Config) -> list[tuple[str, str]]:
    """``(what, path)`` of every certificate file the configuration names."""
    files = []
    for i, listener in enumerate(config.listeners):
        if listener.tls_cert:
            files.append((f"listeners[{i}].tls_cert ({listener.address})", listener.tls_cert))
        if listener.tls_client_ca:
            files.append((f"listeners[{i}].tls_client_ca ({listener.address})",
                          listener.tls_client_ca))
    for source in config.sources:
        if getattr(source, "ca_file", None):
            files.append((f"sources[{source.index}].ca_file", source.ca_file))
    calendar = config.calendar
    if calendar is not None and getattr(calendar, "ca_file", None):
        files.append(("calendar.ca_file", calendar.ca_file))
    return files


def expiring(path: str, now: datetime, warn_before: timedelta = WARN_BEFORE
             ) -> datetime | None:
    """The earliest end of validity of a certificate in ``path`` when it is within
    ``warn_before`` of ``now`` (or past), else None; None too for a file that cannot be read
    (``sink serve`` refused an unusable listener file at start already)."""
    try:
        data = Path(path).read_bytes()[:MAX_PEM]
        certificates = x509.load_pem_x509_certificates(data)
    except (OSError, ValueError):
        return None
    ends = [c.not_valid_after_utc for c in certificates]
    earliest = min(ends) if ends else None
    return earliest if earliest is not None and earliest - now <= warn_before else None


class CertificateWatch:
    """A component (``start``/``stop``) checking :func:`watched_files` now and then."""

    def __init__(self, config: Config, notify: Callable[[str, str, str], None], *,
                 every: float = CHECK_EVERY, clock=lambda: datetime.now(timezone.utc)):
        self.files = watched_files(config)
        self.notify, self.every, self.clock = notify, every, clock
        self._task: asyncio.Task | None = None

    def check(self) -> list[str]:
        """One look at every file; what is expiring, as said in the log and the mail."""
        now, found, first = self.clock(), [], None
        for what, path in self.files:
            end = expiring(path, now)
            if end is None:
                continue
            days = (end - now).total_seconds() / 86400
            state = "has expired" if days < 0 else f"expires in {days:.0f} days"
            found.append(f"{what}: {path} {state} ({end:%Y-%m-%d %H:%M} UTC)")
            first = first or f"{what} {state}"
            log.warning("credential.expiring", what=what, path=path,
                        not_after=end.isoformat(), days_left=round(days, 1))
        if found:
            self.notify("credential", f"certificate: {first}",
                        "A certificate the sink uses is about to expire or has expired; TLS "
                        "with it fails then (the MTA keeps the mail, the CRM gets none).\n\n"
                        + "\n".join(found) + "\n\nRenew it, then restart the sink.")
        return found

    async def start(self) -> None:
        if self.files:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(None, self.check)
            except Exception as error:        # a check must never stop the service
                log.warning("credential.check_failed", error=type(error).__name__)
            await asyncio.sleep(self.every)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
