"""``[notify]``: error notifications by mail (SPEC section 7, seed 000 errorFrom / errorTo /
smtpServer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sink.config.checks import ConfigError, addresses, check_keys, string, whole


@dataclass(frozen=True)
class NotifyConfig:
    host: str
    port: int
    sender: str
    to: tuple[str, ...]
    min_interval: int = 900

    @property
    def smtp_server(self) -> str:
        return f"{self.host}:{self.port}"


def parse_notify(raw: Any) -> NotifyConfig | None:
    """None when the section is absent (no mails: problems are logged only)."""
    if raw is None:
        return None
    table = check_keys("notify", raw, {"smtp_server", "from", "to", "min_interval"})
    server = string("notify.smtp_server", table.get("smtp_server", "localhost:25"))
    host, sep, port = server.rpartition(":")
    if not sep:                          # a bare host name: the SMTP port
        host, port = server, "25"
    digits = port.isascii() and port.isdigit()       # int() would take "²" or "٣"
    if not host.strip("[]") or not digits or not 0 < int(port) < 65536:
        raise ConfigError(f"notify.smtp_server: expected HOST:PORT, got {server!r}")
    host, number = host.strip("[]"), int(port)
    if "from" not in table:
        raise ConfigError("notify.from: required (the sender of the notifications)")
    sender = addresses("notify.from", [string("notify.from", table["from"])])[0]
    to = addresses("notify.to", table.get("to", []))
    if not to:
        raise ConfigError("notify.to: expected at least one address")
    interval = whole("notify.min_interval", table.get("min_interval", 900), 0)
    return NotifyConfig(host, number, sender, to, interval)
