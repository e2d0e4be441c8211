"""``[[listeners]]``: the LMTP/SMTP listeners (SPEC section 2.1)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sink.config.checks import (ConfigError, boolean, check_keys, resolve, string, strings,
                                whole)


@dataclass(frozen=True)
class ListenerConfig:
    protocol: str
    host: str
    port: int
    max_message_size: int = 64 * 1024 * 1024
    max_recipients: int = 100
    max_connections: int = 200
    timeout: float = 300.0
    allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    tls_cert: str | None = None
    tls_key: str | None = None
    hostname: str | None = None
    # issue 13: who may speak to a listener that faces more than loopback
    require_tls: bool = False
    auth: str = "off"                          # "off" | "required"
    auth_users_file: str | None = None
    tls_client_ca: str | None = None
    tls_client_names: tuple[str, ...] = ()
    max_connections_per_client: int = 20
    data_deadline: float = 600.0

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_LISTENER_KEYS = {
    "protocol", "address", "max_message_size", "max_recipients", "max_connections", "timeout",
    "allowed_networks", "tls_cert", "tls_key", "hostname",
    "require_tls", "auth", "auth_users_file", "tls_client_ca", "tls_client_names",
    "max_connections_per_client", "data_deadline",
}


def _split_hostport(where: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{where}: expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    number = int(port)
    if not 0 <= number <= 65535:
        raise ConfigError(f"{where}: port {number} out of range")
    return host, number


def parse_listener(where: str, raw: Any, base: Path) -> ListenerConfig:
    raw = check_keys(where, raw, _LISTENER_KEYS)
    protocol = string(f"{where}.protocol", raw.get("protocol", "lmtp")).lower()
    if protocol not in ("lmtp", "smtp"):
        raise ConfigError(f"{where}.protocol: expected \"lmtp\" or \"smtp\"")
    if "address" not in raw:
        raise ConfigError(f"{where}.address: required")
    host, port = _split_hostport(f"{where}.address", string(f"{where}.address", raw["address"]))
    networks = strings(f"{where}.allowed_networks",
                     raw.get("allowed_networks", list(ListenerConfig.allowed_networks)))
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"{where}.allowed_networks: {net!r} is not a network") from None
    tls = {}
    for key in ("tls_cert", "tls_key"):
        if key in raw:
            tls[key] = str(resolve(base, string(f"{where}.{key}", raw[key])))
    if len(tls) == 1:
        raise ConfigError(f"{where}.tls_cert: tls_cert and tls_key go together")
    timeout = _seconds(f"{where}.timeout", raw.get("timeout", ListenerConfig.timeout))
    return ListenerConfig(
        protocol=protocol, host=host, port=port,
        max_message_size=whole(f"{where}.max_message_size",
                              raw.get("max_message_size", ListenerConfig.max_message_size)),
        max_recipients=whole(f"{where}.max_recipients",
                            raw.get("max_recipients", ListenerConfig.max_recipients)),
        max_connections=whole(f"{where}.max_connections",
                             raw.get("max_connections", ListenerConfig.max_connections)),
        timeout=float(timeout),
        allowed_networks=networks,
        hostname=string(f"{where}.hostname", raw["hostname"]) if "hostname" in raw else None,
        **tls,
        **_door(where, raw, base, bool(tls)),
    )


def _seconds(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{where}: expected a positive number of seconds")
    return float(value)


def _door(where: str, raw: dict, base: Path, has_tls: bool) -> dict:
    """TLS, AUTH and per-client limits (SPEC 2.1); each needs what makes it work."""
    door: dict = {
        "require_tls": boolean(f"{where}.require_tls", raw.get("require_tls", False)),
        "max_connections_per_client": whole(f"{where}.max_connections_per_client",
                                            raw.get("max_connections_per_client", 20)),
        "data_deadline": _seconds(f"{where}.data_deadline", raw.get("data_deadline", 600)),
    }
    auth = string(f"{where}.auth", raw.get("auth", "off")).lower()
    if auth not in ("off", "required"):
        raise ConfigError(f"{where}.auth: expected \"off\" or \"required\"")
    door["auth"] = auth
    for key in ("auth_users_file", "tls_client_ca"):
        if key in raw:
            door[key] = str(resolve(base, string(f"{where}.{key}", raw[key])))
    door["tls_client_names"] = tuple(n.lower() for n in strings(
        f"{where}.tls_client_names", raw.get("tls_client_names", [])))
    needs_tls = [k for k in ("require_tls", "tls_client_ca") if door.get(k)]
    if auth == "required":
        needs_tls.append("auth")
        if "auth_users_file" not in door:
            raise ConfigError(f"{where}.auth_users_file: required when auth = \"required\"")
    if needs_tls and not has_tls:
        raise ConfigError(f"{where}.{needs_tls[0]}: needs tls_cert and tls_key")
    if "tls_client_ca" in door:
        # a certificate check that plaintext could walk around would prove nothing
        door["require_tls"] = True
    if door["tls_client_names"] and "tls_client_ca" not in door:
        raise ConfigError(f"{where}.tls_client_names: needs tls_client_ca")
    return door
