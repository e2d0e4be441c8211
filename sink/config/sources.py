"""``[[sources]]``: mailboxes fetched over IMAP or POP3, and the .eml directory (SPEC 2.2).

Secrets (``password_file``, ``oauth.client_secret_file``) are read once at start, relative to the
config file, and kept out of every repr: a config printed into a log or a traceback shows
``password=<set>``, never the value.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any

from sink.config.checks import ConfigError, boolean, check_keys, resolve, string, strings, whole
from sink.mail.textnorm import fold_address

KINDS = ("imap", "pop3", "emldir")
TLS_MODES = ("ssl", "starttls", "none")
DEFAULT_MAX_SIZE = 64 * 1024 * 1024
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class Secret:
    """A string that never shows itself in repr/str (so never in a log or an error)."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class OAuthConfig:
    tenant_id: str
    client_id: str
    client_secret: Secret = field(repr=False)
    authority: str = "https://login.microsoftonline.com"
    scope: str = "https://outlook.office365.com/.default"


@dataclass(frozen=True)
class SourceConfig:
    index: int
    kind: str
    box: str
    host: str = ""
    port: int = 0
    tls: str = "ssl"
    ca_file: str | None = None
    user: str = ""
    password: Secret | None = field(default=None, repr=False)
    oauth: OAuthConfig | None = field(default=None, repr=False)
    folders: tuple[str, ...] = ("INBOX",)
    fetch: str = "all"
    after: str = "delete"
    interval: float = 300
    idle: bool = True
    stop_from: time | None = None
    stop_to: time | None = None
    max_message_size: int = DEFAULT_MAX_SIZE
    path: str = ""

    @property
    def key(self) -> str:
        """Stable identity of the source (not its position in the file): where its state and
        its lease live. Changing the host, user, box or folders makes it a new source."""
        if self.kind == "emldir":
            ident = f"emldir\0{self.box}\0{self.path}"
        else:
            ident = "\0".join((self.kind, self.host.lower(), str(self.port), self.user,
                               self.box, *self.folders))
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    @property
    def move_to(self) -> str | None:
        return self.after[5:] if self.after.startswith("move:") else None

    def describe(self) -> str:
        """Where it fetches from, for logs (no secret)."""
        return self.path if self.kind == "emldir" else f"{self.kind}://{self.user}@{self.host}:{self.port}"


_KEYS = {"kind", "box", "host", "port", "tls", "ca_file", "user", "password", "password_file",
         "oauth", "folders", "fetch", "after", "interval", "idle", "stop_from", "stop_to",
         "max_message_size", "path"}
_EMLDIR_KEYS = {"kind", "box", "path", "interval", "stop_from", "stop_to", "max_message_size"}


def clock_time(where: str, value: Any) -> time:
    text = string(where, value)
    try:
        hours, minutes = text.split(":")
        if len(hours) != 2 or len(minutes) != 2:
            raise ValueError
        return time(int(hours), int(minutes))
    except ValueError:
        raise ConfigError(f"{where}: expected HH:MM (00:00 to 23:59)") from None


def read_secret(where: str, path: Path) -> Secret:
    try:
        value = path.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        # the path, never the content
        raise ConfigError(f"{where}: cannot read {path}: "
                          f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    if not value:
        raise ConfigError(f"{where}: {path} is empty")
    return Secret(value)


def _oauth(where: str, raw: Any, base: Path) -> OAuthConfig:
    table = check_keys(where, raw, {"tenant_id", "client_id", "client_secret_file",
                                    "client_secret", "authority"})
    for key in ("tenant_id", "client_id"):
        if key not in table:
            raise ConfigError(f"{where}.{key}: required")
    if "client_secret_file" in table:
        secret = read_secret(f"{where}.client_secret_file",
                             resolve(base, string(f"{where}.client_secret_file",
                                                  table["client_secret_file"])))
    elif "client_secret" in table:
        secret = Secret(string(f"{where}.client_secret", table["client_secret"]))
    else:
        raise ConfigError(f"{where}.client_secret_file: required")
    authority = string(f"{where}.authority", table.get("authority",
                                                       "https://login.microsoftonline.com"))
    if not authority.startswith("https://"):
        raise ConfigError(f"{where}.authority: expected an https:// URL")
    return OAuthConfig(string(f"{where}.tenant_id", table["tenant_id"]),
                       string(f"{where}.client_id", table["client_id"]), secret,
                       authority.rstrip("/"))


def _credentials(where: str, raw: dict, base: Path) -> tuple[Secret | None, OAuthConfig | None]:
    given = [k for k in ("password", "password_file", "oauth") if k in raw]
    if len(given) != 1:
        raise ConfigError(f"{where}.password_file: give exactly one of password, password_file "
                          f"or oauth")
    if "oauth" in raw:
        return None, _oauth(f"{where}.oauth", raw["oauth"], base)
    if "password_file" in raw:
        return read_secret(f"{where}.password_file",
                           resolve(base, string(f"{where}.password_file",
                                                raw["password_file"]))), None
    return Secret(string(f"{where}.password", raw["password"])), None


def _after(where: str, kind: str, value: Any) -> str:
    after = string(where, value)
    allowed = ("delete", "keep") if kind == "pop3" else ("delete", "keep", "seen")
    if after in allowed or (kind == "imap" and after.startswith("move:") and after[5:].strip()):
        return after if not after.startswith("move:") else "move:" + after[5:].strip()
    extra = ", seen or move:FOLDER" if kind == "imap" else ""
    raise ConfigError(f"{where}: expected delete, keep{extra}")


def _common(where: str, raw: dict, boxes: set[str]) -> dict:
    box = fold_address(string(f"{where}.box", raw.get("box", "")) if "box" in raw else "")
    if not box:
        raise ConfigError(f"{where}.box: required")
    if box not in boxes:
        raise ConfigError(f"{where}.box: {box} is not a configured [[boxes]] address")
    window = [k for k in ("stop_from", "stop_to") if k in raw]
    if len(window) == 1:
        raise ConfigError(f"{where}.{'stop_to' if window == ['stop_from'] else 'stop_from'}: "
                          f"required with {window[0]}")
    return dict(
        box=box,
        stop_from=clock_time(f"{where}.stop_from", raw["stop_from"]) if window else None,
        stop_to=clock_time(f"{where}.stop_to", raw["stop_to"]) if window else None,
        max_message_size=whole(f"{where}.max_message_size",
                               raw.get("max_message_size", DEFAULT_MAX_SIZE)),
    )


def _interval(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{where}: expected a number of seconds above 0")
    return float(value)


def parse_source(where: str, index: int, raw: Any, base: Path, boxes: set[str]) -> SourceConfig:
    raw = check_keys(where, raw, _KEYS)
    kind = string(f"{where}.kind", raw.get("kind", "")) if "kind" in raw else ""
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: expected imap, pop3 or emldir")
    common = _common(where, raw, boxes)
    if kind == "emldir":
        check_keys(where, raw, _EMLDIR_KEYS)
        if "path" not in raw:
            raise ConfigError(f"{where}.path: required")
        return SourceConfig(index=index, kind=kind, path=str(resolve(base, string(
            f"{where}.path", raw["path"]))), interval=_interval(
            f"{where}.interval", raw.get("interval", 1)), **common)
    if kind == "pop3":
        for key in ("folders", "fetch", "idle"):
            if key in raw:
                raise ConfigError(f"{where}.{key}: only for kind = \"imap\"")
    if "path" in raw:
        raise ConfigError(f"{where}.path: only for kind = \"emldir\"")
    for key in ("host", "user"):
        if key not in raw:
            raise ConfigError(f"{where}.{key}: required")
    host = string(f"{where}.host", raw["host"])
    tls = string(f"{where}.tls", raw.get("tls", "ssl"))
    if tls not in TLS_MODES:
        raise ConfigError(f"{where}.tls: expected ssl, starttls or none")
    if tls == "none" and host not in LOOPBACK:
        raise ConfigError(f"{where}.tls: \"none\" only for a loopback host")
    implicit = {"imap": 993, "pop3": 995}[kind] if tls == "ssl" else {"imap": 143, "pop3": 110}[kind]
    port = whole(f"{where}.port", raw.get("port", implicit))
    if port > 65535:
        raise ConfigError(f"{where}.port: expected 1 to 65535")
    password, oauth = _credentials(where, raw, base)
    fetch = string(f"{where}.fetch", raw.get("fetch", "all"))
    if fetch not in ("all", "unseen"):
        raise ConfigError(f"{where}.fetch: expected all or unseen")
    folders = strings(f"{where}.folders", raw.get("folders", ["INBOX"]))
    if not folders:
        raise ConfigError(f"{where}.folders: expected at least one folder")
    return SourceConfig(
        index=index, kind=kind, host=host, port=port, tls=tls,
        ca_file=str(resolve(base, string(f"{where}.ca_file", raw["ca_file"])))
        if "ca_file" in raw else None,
        user=string(f"{where}.user", raw["user"]), password=password, oauth=oauth,
        folders=folders, fetch=fetch, after=_after(f"{where}.after", kind,
                                                   raw.get("after", "delete")),
        interval=_interval(f"{where}.interval", raw.get("interval", 300)),
        idle=boolean(f"{where}.idle", raw.get("idle", True)), **common)


def parse_sources(raw: Any, base: Path, boxes: set[str]) -> tuple[SourceConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("sources: expected [[sources]] tables")
    parsed = tuple(parse_source(f"sources[{i}]", i, s, base, boxes) for i, s in enumerate(raw))
    keys: dict[str, int] = {}
    for source in parsed:
        if source.key in keys:
            raise ConfigError(f"sources[{source.index}]: the same source as "
                              f"sources[{keys[source.key]}]")
        keys[source.key] = source.index
    return parsed
