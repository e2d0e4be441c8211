"""``[metrics]``: where ``/metrics`` and ``/healthz`` are served (SPEC section 7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sink.config.checks import ConfigError, check_keys, string


@dataclass(frozen=True)
class MetricsConfig:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_metrics(raw: Any) -> MetricsConfig | None:
    """None when the section is absent (nothing is served)."""
    if raw is None:
        return None
    table = check_keys("metrics", raw, {"address"})
    address = string("metrics.address", table.get("address", "127.0.0.1:9464"))
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) < 65536:
        raise ConfigError(f"metrics.address: expected HOST:PORT, got {address!r}")
    return MetricsConfig(host.strip("[]") or "127.0.0.1", int(port))
