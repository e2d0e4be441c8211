"""The one TOML configuration file (SPEC section 6), validated strictly.

An unknown key or a value of the wrong type is a :class:`ConfigError` whose message names the
key (``boxes[0].ignore_subjects: expected a list of strings``), so an operator fixes it in one go.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sink.ruledata import LIST_NAMES, default_list
from sink.textnorm import domain_of, fold, fold_address


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class BoxConfig:
    address: str
    internal_domains: tuple[str, ...]
    ignore_subjects: tuple[str, ...] = ()
    system_senders: tuple[str, ...] = ()
    save_originals_from: tuple[str, ...] = ()
    incoming_as_pending: bool = False
    exception_addresses: tuple[str, ...] = ()
    exception_domains: tuple[str, ...] = ()
    block_free_mail: bool = False
    support_addresses: tuple[str, ...] = ()
    spam_senders: tuple[str, ...] = ()
    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def rule_list(self, name: str) -> tuple[str, ...]:
        """A keyword/phrase list: the box's override, else the shipped default."""
        return self.keywords.get(name) or default_list(name)


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

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    file: str | None = None


@dataclass(frozen=True)
class Config:
    database_url: str
    listeners: tuple[ListenerConfig, ...]
    boxes: tuple[BoxConfig, ...]
    log: LogConfig = LogConfig()
    storage_threads: int | None = None
    storage_workers: int | None = None
    path: Path | None = None

    def box(self, address: str | None) -> BoxConfig:
        """The box with this address, or the first box when ``address`` is None."""
        if not self.boxes:
            raise ConfigError("boxes: at least one [[boxes]] entry is required")
        if address is None:
            return self.boxes[0]
        wanted = fold_address(address)
        for box in self.boxes:
            if box.address == wanted:
                return box
        raise ConfigError(f"--box {address}: no such box in the config")

    def box_addresses(self) -> frozenset[str]:
        return frozenset(b.address for b in self.boxes)


# --------------------------------------------------------------------------- validation helpers

def _check_keys(where: str, table: Any, allowed: set[str]) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key")
    return table


def _str(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string")
    return value.strip()


def _bool(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false")
    return value


def _int(where: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected a whole number of at least {minimum}")
    return value


def _strs(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings")
    return tuple(v.strip() for v in value if v.strip())


def _addresses(where: str, value: Any) -> tuple[str, ...]:
    items = tuple(fold_address(v) for v in _strs(where, value))
    for item in items:
        if "@" not in item:
            raise ConfigError(f"{where}: {item!r} is not an e-mail address")
    return items


def _domains(where: str, value: Any) -> tuple[str, ...]:
    return tuple(v.lower().lstrip("@") for v in _strs(where, value))


_BOX_KEYS = {
    "address", "internal_domains", "ignore_subjects", "system_senders", "save_originals_from",
    "incoming_as_pending", "exception_addresses", "exception_domains", "block_free_mail",
    "support_addresses", "spam_senders", "keywords",
}


def _box(where: str, raw: Any) -> BoxConfig:
    raw = _check_keys(where, raw, _BOX_KEYS)
    if "address" not in raw:
        raise ConfigError(f"{where}.address: required")
    address = fold_address(_str(f"{where}.address", raw["address"]))
    if "@" not in address:
        raise ConfigError(f"{where}.address: {address!r} is not an e-mail address")
    keywords: dict[str, tuple[str, ...]] = {}
    if "keywords" in raw:
        table = _check_keys(f"{where}.keywords", raw["keywords"], set(LIST_NAMES))
        for name, value in table.items():
            keywords[name] = _strs(f"{where}.keywords.{name}", value)
    domains = raw.get("internal_domains")
    return BoxConfig(
        address=address,
        internal_domains=_domains(f"{where}.internal_domains", domains)
        if domains is not None else (domain_of(address),),
        ignore_subjects=_strs(f"{where}.ignore_subjects", raw.get("ignore_subjects", [])),
        system_senders=_addresses(f"{where}.system_senders", raw.get("system_senders", [])),
        save_originals_from=_addresses(
            f"{where}.save_originals_from", raw.get("save_originals_from", [])),
        incoming_as_pending=_bool(
            f"{where}.incoming_as_pending", raw.get("incoming_as_pending", False)),
        exception_addresses=_addresses(
            f"{where}.exception_addresses", raw.get("exception_addresses", [])),
        exception_domains=_domains(f"{where}.exception_domains", raw.get("exception_domains", [])),
        block_free_mail=_bool(f"{where}.block_free_mail", raw.get("block_free_mail", False)),
        support_addresses=_addresses(
            f"{where}.support_addresses", raw.get("support_addresses", [])),
        spam_senders=_addresses(f"{where}.spam_senders", raw.get("spam_senders", [])),
        keywords=keywords,
    )


_LISTENER_KEYS = {
    "protocol", "address", "max_message_size", "max_recipients", "max_connections", "timeout",
    "allowed_networks", "tls_cert", "tls_key", "hostname",
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


def _listener(where: str, raw: Any, base: Path) -> ListenerConfig:
    raw = _check_keys(where, raw, _LISTENER_KEYS)
    protocol = _str(f"{where}.protocol", raw.get("protocol", "lmtp")).lower()
    if protocol not in ("lmtp", "smtp"):
        raise ConfigError(f"{where}.protocol: expected \"lmtp\" or \"smtp\"")
    if "address" not in raw:
        raise ConfigError(f"{where}.address: required")
    host, port = _split_hostport(f"{where}.address", _str(f"{where}.address", raw["address"]))
    networks = _strs(f"{where}.allowed_networks",
                     raw.get("allowed_networks", list(ListenerConfig.allowed_networks)))
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"{where}.allowed_networks: {net!r} is not a network") from None
    tls = {}
    for key in ("tls_cert", "tls_key"):
        if key in raw:
            tls[key] = str(_resolve(base, _str(f"{where}.{key}", raw[key])))
    if len(tls) == 1:
        raise ConfigError(f"{where}.tls_cert: tls_cert and tls_key go together")
    timeout = raw.get("timeout", ListenerConfig.timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{where}.timeout: expected a positive number of seconds")
    return ListenerConfig(
        protocol=protocol, host=host, port=port,
        max_message_size=_int(f"{where}.max_message_size",
                              raw.get("max_message_size", ListenerConfig.max_message_size)),
        max_recipients=_int(f"{where}.max_recipients",
                            raw.get("max_recipients", ListenerConfig.max_recipients)),
        max_connections=_int(f"{where}.max_connections",
                             raw.get("max_connections", ListenerConfig.max_connections)),
        timeout=float(timeout),
        allowed_networks=networks,
        hostname=_str(f"{where}.hostname", raw["hostname"]) if "hostname" in raw else None,
        **tls,
    )


def _resolve(base: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p)


def _database_url(raw: Any, base: Path) -> str:
    table = _check_keys("database", raw, {"url"})
    url = _str("database.url", table.get("url", "sqlite:///var/sink.db"))
    # A relative SQLite path is taken relative to the config file, not to wherever the
    # service happens to be started from.
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(_resolve(base, url[len(prefix):]))
    return url


def parse_config(data: dict, base: Path = Path.cwd(), path: Path | None = None) -> Config:
    _check_keys("config", data, {"database", "listeners", "boxes", "log", "storage"})
    listeners = data.get("listeners", [])
    if not isinstance(listeners, list):
        raise ConfigError("listeners: expected [[listeners]] tables")
    boxes = data.get("boxes", [])
    if not isinstance(boxes, list):
        raise ConfigError("boxes: expected [[boxes]] tables")
    parsed_boxes = tuple(_box(f"boxes[{i}]", b) for i, b in enumerate(boxes))
    seen: set[str] = set()
    for i, box in enumerate(parsed_boxes):
        if box.address in seen:
            raise ConfigError(f"boxes[{i}].address: {box.address} is configured twice")
        seen.add(box.address)
    log = _check_keys("log", data.get("log", {}), {"level", "file"})
    level = _str("log.level", log.get("level", "info")).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log.level: expected debug, info, warning or error")
    storage = _check_keys("storage", data.get("storage", {}), {"threads", "workers"})
    workers = _int("storage.workers", storage["workers"], 0) if "workers" in storage else None
    if workers is not None and workers > 64:
        raise ConfigError("storage.workers: expected 0 (store in the protocol process) to 64")
    return Config(
        database_url=_database_url(data.get("database", {}), base),
        listeners=tuple(_listener(f"listeners[{i}]", l, base) for i, l in enumerate(listeners)),
        boxes=parsed_boxes,
        log=LogConfig(level=level,
                      file=str(_resolve(base, _str("log.file", log["file"])))
                      if "file" in log else None),
        storage_threads=_int("storage.threads", storage["threads"]) if "threads" in storage
        else None,
        storage_workers=workers,
        path=path,
    )


def load_config(path: str | os.PathLike | None) -> Config:
    """Load ``path`` (or ``$SINK_CONFIG``); raises ConfigError with a one-line reason."""
    if path is None:
        path = os.environ.get("SINK_CONFIG")
    if not path:
        raise ConfigError("no configuration: pass --config FILE or set SINK_CONFIG")
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return parse_config(data, base=file.resolve().parent, path=file)


def folded_set(values) -> frozenset[str]:
    return frozenset(fold(v) for v in values)
