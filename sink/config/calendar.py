"""``[calendar]`` (SPEC 7): the Microsoft Graph application that syncs users' calendars.

The secret is read from ``client_secret_file`` at each login, never kept in the config object
(so it is never printed with it) and never logged. ``authority``, ``graph_url`` and ``ca_file``
exist for national clouds, TLS-inspecting proxies and the test fake; admins leave them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sink.config.checks import ConfigError, check_keys, resolve, string, whole

KEYS = {"tenant_id", "client_id", "client_secret_file", "interval", "authority", "graph_url",
        "ca_file", "days_back", "days_ahead", "activity_type"}


@dataclass(frozen=True)
class CalendarConfig:
    tenant_id: str
    client_id: str
    client_secret_file: Path
    interval: int = 300
    authority: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com/v1.0"
    ca_file: Path | None = None
    days_back: int = 30
    days_ahead: int = 365
    activity_type: str = "Meeting"

    @property
    def authority_url(self) -> str:
        return f"{self.authority.rstrip('/')}/{self.tenant_id}"

    def read_secret(self) -> str:
        try:
            secret = self.client_secret_file.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"calendar.client_secret_file: cannot read "
                              f"{self.client_secret_file}: {type(exc).__name__}") from None
        if not secret:
            raise ConfigError(f"calendar.client_secret_file: {self.client_secret_file} is empty")
        return secret


def _https(where: str, value: Any) -> str:
    url = string(where, value).rstrip("/")
    if not url.startswith("https://"):
        raise ConfigError(f"{where}: expected an https:// URL")
    return url


def parse_calendar(raw: Any, base: Path) -> CalendarConfig:
    table = check_keys("calendar", raw, KEYS)
    for key in ("tenant_id", "client_id", "client_secret_file"):
        if key not in table:
            raise ConfigError(f"calendar.{key}: required")
    tenant = string("calendar.tenant_id", table["tenant_id"])
    if "/" in tenant or "?" in tenant:
        raise ConfigError("calendar.tenant_id: expected a tenant id or domain")
    days_ahead = whole("calendar.days_ahead", table.get("days_ahead", 365))
    if days_ahead > 1825:
        raise ConfigError("calendar.days_ahead: at most 1825 (five years)")
    days_back = whole("calendar.days_back", table.get("days_back", 30), 0)
    if days_back > 3650:
        raise ConfigError("calendar.days_back: at most 3650 (ten years)")
    return CalendarConfig(
        tenant_id=tenant,
        client_id=string("calendar.client_id", table["client_id"]),
        client_secret_file=resolve(base, string("calendar.client_secret_file",
                                                table["client_secret_file"])),
        interval=whole("calendar.interval", table.get("interval", 300), 10),
        authority=_https("calendar.authority",
                         table.get("authority", "https://login.microsoftonline.com")),
        graph_url=_https("calendar.graph_url",
                         table.get("graph_url", "https://graph.microsoft.com/v1.0")),
        ca_file=resolve(base, string("calendar.ca_file", table["ca_file"]))
        if "ca_file" in table else None,
        days_back=days_back,
        days_ahead=days_ahead,
        activity_type=string("calendar.activity_type", table.get("activity_type", "Meeting")),
    )
