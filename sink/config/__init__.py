"""The one TOML configuration file (SPEC section 6), validated strictly.

An unknown key or a value of the wrong type is a :class:`ConfigError` whose message names the
key (``boxes[0].ignore_subjects: expected a list of strings``), so an operator fixes it in one go.
Each section has its module (:mod:`sink.config.boxes`, :mod:`sink.config.listeners`); the
validators they share are in :mod:`sink.config.checks`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sink.config.backup import BackupConfig, parse_backup
from sink.config.boxes import BoxConfig, parse_box
from sink.config.calendar import CalendarConfig, parse_calendar
from sink.config.checks import ConfigError, check_keys, resolve, string, whole
from sink.config.listeners import ListenerConfig, parse_listener
from sink.config.metrics import MetricsConfig, parse_metrics
from sink.config.notify import NotifyConfig, parse_notify
from sink.config.sources import SourceConfig, parse_sources
from sink.mail.textnorm import fold_address

__all__ = ["BackupConfig", "BoxConfig", "CalendarConfig", "Config", "ConfigError",
           "ListenerConfig", "LogConfig", "SourceConfig", "load_config", "parse_config"]


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
    calendar: CalendarConfig | None = None
    notify: NotifyConfig | None = None
    metrics: MetricsConfig | None = None
    sources: tuple[SourceConfig, ...] = ()
    backup: BackupConfig | None = None

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


def _database_url(raw: Any, base: Path) -> str:
    table = check_keys("database", raw, {"url"})
    url = string("database.url", table.get("url", "sqlite:///var/sink.db"))
    # A relative SQLite path is taken relative to the config file, not to wherever the
    # service happens to be started from.
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(resolve(base, url[len(prefix):]))
    return url


def parse_config(data: dict, base: Path | None = None, path: Path | None = None) -> Config:
    """``data`` (a parsed TOML document) as a Config; relative paths are taken from ``base``
    (the config file's directory; default: the working directory at the call)."""
    base = Path.cwd() if base is None else base
    check_keys("config", data, {"database", "listeners", "boxes", "log", "storage",
                                "sources", "calendar", "notify", "metrics", "backup"})
    listeners = data.get("listeners", [])
    if not isinstance(listeners, list):
        raise ConfigError("listeners: expected [[listeners]] tables")
    boxes = data.get("boxes", [])
    if not isinstance(boxes, list):
        raise ConfigError("boxes: expected [[boxes]] tables")
    parsed_boxes = tuple(parse_box(f"boxes[{i}]", b) for i, b in enumerate(boxes))
    seen: set[str] = set()
    for i, box in enumerate(parsed_boxes):
        if box.address in seen:
            raise ConfigError(f"boxes[{i}].address: {box.address} is configured twice")
        seen.add(box.address)
    log = check_keys("log", data.get("log", {}), {"level", "file"})
    level = string("log.level", log.get("level", "info")).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log.level: expected debug, info, warning or error")
    storage = check_keys("storage", data.get("storage", {}), {"threads", "workers"})
    workers = whole("storage.workers", storage["workers"], 0) if "workers" in storage else None
    if workers is not None and workers > 64:
        raise ConfigError("storage.workers: expected 0 (store in the protocol process) to 64")
    return Config(
        database_url=_database_url(data.get("database", {}), base),
        listeners=tuple(parse_listener(f"listeners[{i}]", l, base) for i, l in enumerate(listeners)),
        boxes=parsed_boxes,
        log=LogConfig(level=level,
                      file=str(resolve(base, string("log.file", log["file"])))
                      if "file" in log else None),
        storage_threads=whole("storage.threads", storage["threads"]) if "threads" in storage
        else None,
        storage_workers=workers,
        path=path,
        sources=parse_sources(data.get("sources", []), base, seen),
        calendar=parse_calendar(data["calendar"], base) if "calendar" in data else None,
        notify=parse_notify(data.get("notify")),
        metrics=parse_metrics(data.get("metrics")),
        backup=parse_backup(data.get("backup"), base),
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
