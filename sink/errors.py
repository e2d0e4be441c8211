"""Which failures are transient (the MTA must keep the message and retry) — decided here only.

The server maps :class:`TransientStorageError` to ``451 4.3.0`` or, when the disk or database
is out of space, ``452 4.3.1``. Anything else that escapes storage is a bug in the sink, not in
the message, and is answered 451 as well: never a 5xx for content.
"""

from __future__ import annotations

import errno
import sqlite3

from sqlalchemy import exc as sa_exc

_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_NO_SPACE_SQLSTATES = {"53100"}             # disk_full
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57", "58", "40")  # connection, resources, operator


class TransientStorageError(Exception):
    def __init__(self, reason: str, *, no_space: bool = False):
        super().__init__(reason)
        self.no_space = no_space


def _sqlstate(error: BaseException) -> str | None:
    return getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)


def is_no_space(error: BaseException) -> bool:
    inner = getattr(error, "orig", None) or error
    if isinstance(inner, OSError) and inner.errno in _NO_SPACE_ERRNOS:
        return True
    if _sqlstate(inner) in _NO_SPACE_SQLSTATES:
        return True
    text = str(inner).lower()
    return "database or disk is full" in text or "no space left" in text


def classify(error: BaseException) -> TransientStorageError | None:
    """A TransientStorageError for ``error`` when retrying later can succeed, else None."""
    if isinstance(error, TransientStorageError):
        return error
    if is_no_space(error):
        return TransientStorageError(f"out of space: {_short(error)}", no_space=True)
    if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError,
                          sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return TransientStorageError(f"database unavailable: {_short(error)}")
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return TransientStorageError(f"database connection lost: {_short(error)}")
    inner = getattr(error, "orig", None)
    state = _sqlstate(inner) if inner is not None else None
    if state and state.startswith(_TRANSIENT_SQLSTATE_CLASSES):
        return TransientStorageError(f"database unavailable: {_short(error)}")
    if isinstance(inner, sqlite3.OperationalError) or isinstance(error, OSError):
        return TransientStorageError(f"storage unavailable: {_short(error)}")
    return None


def _short(error: BaseException) -> str:
    inner = getattr(error, "orig", None) or error
    return (str(inner).strip().splitlines() or [type(inner).__name__])[0][:200]
