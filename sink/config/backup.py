"""``[backup]`` (SPEC 3, seed 000 chapter 9): every stored message also written as
``DIRECTORY/YYYY-MM-DD/<uuid>.eml`` after its commit (:mod:`sink.backup`).

```toml
[backup]
directory = "/var/lib/sink/backup"   # relative: from the config file's directory
interval = 1                          # seconds between looks for newly committed messages
retry = 30                            # seconds before trying again after a disk problem
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sink.config.checks import ConfigError, check_keys, resolve, string, whole


@dataclass(frozen=True)
class BackupConfig:
    directory: Path
    interval: int = 1
    retry: int = 30


def parse_backup(raw: Any, base: Path) -> BackupConfig | None:
    """The ``[backup]`` table, or None when the section is absent."""
    if raw is None:
        return None
    table = check_keys("backup", raw, {"directory", "interval", "retry"})
    if "directory" not in table:
        raise ConfigError("backup.directory: required in [backup]")
    return BackupConfig(
        directory=resolve(base, string("backup.directory", table["directory"])),
        interval=whole("backup.interval", table.get("interval", 1)),
        retry=whole("backup.retry", table.get("retry", 30)))
