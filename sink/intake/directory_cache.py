"""The directory snapshot the rules read, reloaded when its version row changes (every
directory import bumps it)."""

from __future__ import annotations

import threading
from contextlib import contextmanager

from sqlalchemy.engine import Connection

from sink.db.directory_store import current_version, load_directory
from sink.directory import Directory


class DirectoryCache:
    """The directory snapshot, reloaded when its version row changes (every import bumps it)."""

    def __init__(self) -> None:
        self._snapshot: Directory | None = None
        self._lock = threading.Lock()
        self._pinned = threading.local()

    @property
    def current(self) -> Directory | None:
        """The snapshot loaded last (None before the first ``get``)."""
        return self._snapshot

    def get(self, conn: Connection) -> Directory:
        pinned = getattr(self._pinned, "snapshot", None)
        if pinned is not None:
            return pinned
        version = current_version(conn)
        snapshot = self._snapshot
        if snapshot is not None and snapshot.version == version:
            return snapshot
        with self._lock:
            if self._snapshot is None or self._snapshot.version != version:
                self._snapshot = load_directory(conn)
            return self._snapshot

    @contextmanager
    def pinned(self, conn: Connection):
        """Within the block, this thread's ``get`` answers one snapshot without asking the
        version row again: a batch of messages reads the directory version once."""
        self._pinned.snapshot = None
        self._pinned.snapshot = self.get(conn)
        try:
            yield self._pinned.snapshot
        finally:
            self._pinned.snapshot = None
