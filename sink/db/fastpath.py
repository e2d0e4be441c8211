"""The statements every message runs, executed on the DBAPI cursor.

``Connection.execute`` costs SQLAlchemy some 40-100 µs of Python per statement (cache keys,
execution context, events, result set-up) - more than SQLite takes to run the statement, and
the largest single cost of storing a message once commits are grouped. A :class:`Fast`
statement is still a SQLAlchemy Core statement, compiled by SQLAlchemy once per dialect with
its own type processors (JSON, DateTime on SQLite, ...) and casts, so what reaches the database
is exactly what ``Connection.execute`` would send; only the per-call machinery is skipped:

- parameters are bound with the processors SQLAlchemy chose for the dialect, column defaults
  fill what the caller left out (as SQLAlchemy does for an INSERT);
- it runs on the connection's own DBAPI connection, inside the caller's transaction and
  savepoints;
- DBAPI errors are raised as SQLAlchemy's (``IntegrityError``, ``OperationalError``, ...), so
  ``sink.errors.classify`` and the unique-race handling see what they always saw.

Only for the hot path of storage; everything else goes through ``Connection.execute``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]                          # bind names, in statement order
    processors: tuple[Callable | None, ...]
    defaults: Mapping[str, Any]                     # insert: scalar column defaults
    positional: bool
    returns_id: bool                                # PostgreSQL: INSERT ... RETURNING id
    error: type                                     # the DBAPI's base Error


class Fast:
    """A Core statement run on the DBAPI cursor; ``keys`` are the parameter names of an
    INSERT or UPDATE (the columns it sets), as ``compile(column_keys=...)`` takes them."""

    def __init__(self, statement, keys: Sequence[str] | None = None, *, many: bool = False):
        self.statement = statement
        self.keys = list(keys) if keys is not None else None
        self.many = many
        self._by_dialect: dict[str, _Compiled] = {}

    # ------------------------------------------------------------------------------ compile
    def _compiled(self, conn: Connection) -> _Compiled:
        dialect = conn.dialect
        found = self._by_dialect.get(dialect.name)
        if found is not None:
            return found
        compiled = self.statement.compile(dialect=dialect, column_keys=self.keys,
                                          for_executemany=self.many)
        if getattr(compiled, "escaped_bind_names", None):
            raise ValueError("parameter names that need escaping are not supported")
        names = tuple(compiled.positiontup) if dialect.positional else tuple(compiled.binds)
        processors = tuple(dialect.type_descriptor(compiled.binds[n].type)
                           .bind_processor(dialect) for n in names)
        # Values the statement itself carries (e.g. a LIMIT), then column defaults.
        defaults = {name: bind.effective_value for name, bind in compiled.binds.items()
                    if bind.value is not None or bind.callable is not None}
        if isinstance(self.statement, Insert):
            for column in self.statement.table.columns:
                default = column.default
                if default is None or column.key not in compiled.binds:
                    continue
                if not getattr(default, "is_scalar", False):
                    raise ValueError(f"{column}: only scalar column defaults are supported")
                defaults[column.key] = default.arg
        found = _Compiled(compiled.string, names, processors, defaults, dialect.positional,
                          bool(getattr(compiled, "effective_returning", None)),
                          dialect.loaded_dbapi.Error)
        self._by_dialect[dialect.name] = found
        return found

    # ------------------------------------------------------------------------------ run
    def _bind(self, c: _Compiled, params: Mapping[str, Any]):
        values = []
        for name, processor in zip(c.names, c.processors):
            value = params[name] if name in params else c.defaults.get(name)
            values.append(processor(value) if processor is not None else value)
        return tuple(values) if c.positional else dict(zip(c.names, values))

    def _run(self, conn: Connection, params: Mapping[str, Any]):
        c = self._compiled(conn)
        bound = self._bind(c, params)
        cursor = _cursor(conn)
        try:
            cursor.execute(c.sql, bound)
        except c.error as error:
            _raise(conn, c.sql, bound, error)
        return c, cursor

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> None:
        self._run(conn, params)

    def first(self, conn: Connection, params: Mapping[str, Any]) -> tuple | None:
        """The first row of a SELECT, as a tuple, or None. The statement is read to its end:
        since Python 3.11 a commit or rollback no longer resets it, and a SELECT left half-read
        keeps its read transaction open on SQLite - the next BEGIN IMMEDIATE of that
        connection then fails with SQLITE_BUSY_SNAPSHOT once another connection has written
        (the rules deciding ahead end on a SELECT: sink.intake.ahead). Every such SELECT is by
        a key, or limited to one row."""
        _, cursor = self._run(conn, params)
        rows = cursor.fetchall()
        return rows[0] if rows else None

    def insert(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run an INSERT of one row; return its new integer primary key."""
        c, cursor = self._run(conn, params)
        return cursor.fetchone()[0] if c.returns_id else cursor.lastrowid

    def execute_many(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        c = self._compiled(conn)
        bound = [self._bind(c, row) for row in rows]
        if not bound:
            return
        cursor = _cursor(conn)
        try:
            if c.positional or len(bound) > 8:
                cursor.executemany(c.sql, bound)
            else:       # psycopg's executemany (a pipeline) costs more than a few executes
                for row in bound:
                    cursor.execute(c.sql, row)
        except c.error as error:
            _raise(conn, c.sql, bound, error)


def savepoint(conn: Connection, name: str):
    """SAVEPOINT ``name``; returns what :func:`rollback_to` needs to undo to it."""
    outer = conn.get_nested_transaction()
    _raw(conn, f"SAVEPOINT {name}")
    return outer


def release(conn: Connection, name: str) -> None:
    _raw(conn, f"RELEASE SAVEPOINT {name}")


def rollback_to(conn: Connection, name: str, outer=None, *, release: bool = False) -> None:
    """Undo everything since SAVEPOINT ``name`` (``outer``: what :func:`savepoint` returned);
    with ``release``, also drop the savepoint.

    A SQLAlchemy nested transaction left open inside it (code that failed half-way) is rolled
    back first, so that SQLAlchemy's bookkeeping follows the database's."""
    inner = conn.get_nested_transaction()
    while inner is not None and inner is not outer and inner.is_active:
        inner.rollback()
        inner = conn.get_nested_transaction()
    _raw(conn, f"ROLLBACK TO SAVEPOINT {name}")
    if release:
        _raw(conn, f"RELEASE SAVEPOINT {name}")


def _raw(conn: Connection, sql: str) -> None:
    try:
        _cursor(conn).execute(sql)
    except conn.dialect.loaded_dbapi.Error as error:
        _raise(conn, sql, (), error)


def _raise(conn: Connection, sql: str, params, error: Exception):
    raise sa_exc.DBAPIError.instance(sql, params, error, conn.dialect.loaded_dbapi.Error,
                                     dialect=conn.dialect) from error


def _cursor(conn: Connection):
    """One DBAPI cursor per DBAPI connection, kept in the connection's ``info`` (which
    SQLAlchemy empties when it replaces the DBAPI connection)."""
    info = conn.connection.info
    cursor = info.get("sink.fastpath.cursor")
    if cursor is None:
        cursor = info["sink.fastpath.cursor"] = conn.connection.dbapi_connection.cursor()
    return cursor
