"""The validators every configuration section uses: each raises :class:`ConfigError` with a
message that names the key (``boxes[0].ignore_subjects: expected a list of strings``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sink.mail.textnorm import fold_address


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


def check_keys(where: str, table: Any, allowed: set[str]) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key")
    return table


def string(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string")
    return value.strip()


def boolean(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false")
    return value


def whole(where: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected a whole number of at least {minimum}")
    return value


def strings(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of strings")
    return tuple(v.strip() for v in value if v.strip())


def addresses(where: str, value: Any) -> tuple[str, ...]:
    items = tuple(fold_address(v) for v in strings(where, value))
    for item in items:
        if "@" not in item:
            raise ConfigError(f"{where}: {item!r} is not an e-mail address")
    return items


def domains(where: str, value: Any) -> tuple[str, ...]:
    return tuple(v.lower().lstrip("@") for v in strings(where, value))


def resolve(base: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p)
