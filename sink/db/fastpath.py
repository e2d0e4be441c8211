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

Deferred rows (:func:`deferring`, a storage batch): an INSERT nobody in the transaction
reads back and whose id nobody needs (raw bytes, attachments, dedup keys, activity links) is
kept in memory and sent at :func:`flush`, all the rows of a statement together, instead of
one execute per row:

- on PostgreSQL as ONE statement that takes each column as an array (``INSERT ... SELECT *
  FROM unnest(...)``, :func:`_columns_of`), every table's in one pipeline (one round trip).
  psycopg's executemany costs ~35 us of client CPU per row (a prepared execute and a poll of
  the socket each); the arrays ~6 us per column (issue 16, ``python -m bench.pg_flush``);
- on SQLite as one ``executemany``: it saves the Python of ~6 executes per 4 KB message.

A deferred row belongs to the savepoints open when it was asked for: rolling one back drops it
too, so it never outlives the message it was written for.

Queued commands (PostgreSQL batches, issue 16): a command without parameters whose answer
nobody reads - SAVEPOINT, RELEASE, the batch's advisory locks - is not sent on its own (a round
trip each, four per message) but kept, and sent with the others queued, as one simple query
("A; B; C": one round trip, one execute), just before the next statement run on the
connection; the last of a batch go in the flush's pipeline. The database runs exactly the
commands it ran before, in the same order, before the same statements; only the round trips
between them are gone. A SAVEPOINT released with nothing run since is no command at all (both
dropped). A statement SQLAlchemy runs on the connection (``Connection.execute``) sends the
queue first (:func:`send_queued`, an engine event); so does anything that uses the DBAPI
connection on its own (COPY). ROLLBACK TO is sent at once, with the queue before it. A queued
command's error (the connection lost) is raised, as SQLAlchemy's, by the statement it went
before, and fails what that statement's failure fails. (A psycopg pipeline would carry the
commands with the statement itself, one round trip fewer; it costs the client more CPU than
the round trips it saves.)
"""

from __future__ import annotations

import operator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from sqlalchemy import bindparam, event, exc as sa_exc, insert, types as sa_types
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]                          # bind names, in statement order
    take: Callable[[Mapping[str, Any]], tuple]      # params -> their values, in names order
    processed: tuple[tuple[int, Callable], ...]     # (index in names, bind processor)
    positional: bool
    returns_id: bool                                # PostgreSQL: INSERT ... RETURNING id
    error: type                                     # the DBAPI's base Error


class Fast:
    """A Core statement run on the DBAPI cursor; ``keys`` are the parameter names of an
    INSERT or UPDATE (the columns it sets), as ``compile(column_keys=...)`` takes them."""

    def __init__(self, statement, keys: Sequence[str] | None = None, *, many: bool = False,
                 ordered: bool = False):
        self.statement = statement
        self.keys = list(keys) if keys is not None else None
        self.many = many
        # Deferred rows are sent sorted by their values (in ``keys`` order): two transactions
        # inserting the same unique keys then lock them in one order and cannot deadlock.
        self.ordered = ordered
        self._by_dialect: dict[str, _Compiled] = {}
        self._as_columns: _Columns | None | bool = False     # False: not looked at yet
        self._rows_statements: dict[int, Fast] = {}          # insert_rows: n -> VALUES of n

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
        processors = (dialect.type_descriptor(compiled.binds[n].type).bind_processor(dialect)
                      for n in names)
        processed = tuple((i, p) for i, p in enumerate(processors) if p is not None)
        # Values the statement itself carries (e.g. a LIMIT); a required bind is the caller's.
        fixed = {name: bind.effective_value for name, bind in compiled.binds.items()
                 if not bind.required and (bind.value is not None or bind.callable is not None)}
        found = _Compiled(compiled.string, names,
                          _taker(names, fixed, self._column_defaults(compiled)), processed,
                          dialect.positional,
                          bool(getattr(compiled, "effective_returning", None)),
                          dialect.loaded_dbapi.Error)
        self._by_dialect[dialect.name] = found
        return found

    def _column_defaults(self, compiled) -> dict[str, Any]:
        """An INSERT's scalar column defaults, for the columns a caller may leave out."""
        if not isinstance(self.statement, Insert):
            return {}
        defaults = {}
        for column in self.statement.table.columns:
            default = column.default
            if default is None or column.key not in compiled.binds:
                continue
            if not getattr(default, "is_scalar", False):
                raise ValueError(f"{column}: only scalar column defaults are supported")
            defaults[column.key] = default.arg
        return defaults

    # ------------------------------------------------------------------------------ run
    def _bind(self, c: _Compiled, params: Mapping[str, Any]):
        values = _processed(c, c.take(params))
        return values if c.positional else dict(zip(c.names, values))

    def _run(self, conn: Connection, params: Mapping[str, Any]):
        c = self._by_dialect.get(conn.dialect.name) or self._compiled(conn)
        return c, _execute(conn, c, self._bind(c, params))

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> None:
        self._run(conn, params)

    def bind(self, conn: Connection, params: Mapping[str, Any]) -> "Bound":
        """``params`` bound for ``conn``'s dialect now (bind processors: JSON, dates), to be
        run later on a connection of the same database by :meth:`insert_bound` - work done
        before a lock instead of inside it."""
        c = self._by_dialect.get(conn.dialect.name) or self._compiled(conn)
        return Bound(self, conn.dialect.name, self._bind(c, params))

    def insert_bound(self, conn: Connection, bound: "Bound") -> int:
        """:meth:`insert` with values bound by :meth:`bind`."""
        if bound.statement is not self or bound.dialect != conn.dialect.name:
            raise ValueError("values bound for another statement or database")
        c = self._by_dialect[bound.dialect]
        return _new_id(c, _execute(conn, c, bound.values))

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

    def all(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple]:
        """Every row of a SELECT, as tuples."""
        return self._run(conn, params)[1].fetchall()

    def insert(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run an INSERT of one row; return its new integer primary key."""
        return _new_id(*self._run(conn, params))

    def execute_many(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        c = self._compiled(conn)
        bound = [self._bind(c, row) for row in rows]
        if not bound:
            return
        # psycopg's executemany (a pipeline) costs more CPU than a few executes
        _send(conn, c, bound, pipeline=c.positional or len(bound) > 8)

    def defer(self, conn: Connection, params: Mapping[str, Any]) -> None:
        """Insert this row at the batch's :func:`flush` when rows are being deferred on
        ``conn``, else now."""
        state = _deferred(conn)
        if state is None:
            self.execute(conn, params)
        else:
            state.rows.append((self, params))

    def defer_many(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        state = _deferred(conn)
        if state is None:
            self.execute_many(conn, rows)
        else:
            state.rows.extend((self, row) for row in rows)

    def _send_deferred(self, conn: Connection, rows: list[Mapping[str, Any]]) -> None:
        c = self._compiled(conn)
        if len(rows) > 1 and self._columns(conn) is not None:
            self._insert_columns(conn, c, rows)
            return
        bound = [self._bind(c, row) for row in rows]
        if self.ordered:
            bound.sort(key=tuple if c.positional else lambda row: tuple(row.values()))
        _send(conn, c, bound, pipeline=len(bound) > 1)   # a pipeline of one costs a sync more

    # ------------------------------------------------------------------ rows as column arrays
    def insert_rows(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """INSERT ``rows`` and return their new integer primary keys, in the order of
        ``rows``: on PostgreSQL in one statement (or one per COLUMNS_AT_ONCE_BYTES), elsewhere
        one by one."""
        columns = self._columns(conn)
        if len(rows) < 2 or columns is None or columns.returning is None:
            return [self.insert(conn, row) for row in rows]
        c = self._compiled(conn)
        # The rows are inserted in the order of the VALUES, or of the arrays, each taking its
        # id from the sequence as it is: ids ascend with the rows. RETURNING itself promises
        # no order, so the ids are sorted.
        if len(rows) * len(c.names) <= PSYCOPG_CACHED_PARAMS:
            params = {f"{name}_{i}": value for i, row in enumerate(rows)
                      for name, value in zip(c.names, c.take(row))}   # bound by that statement
            found = self._rows_statement(len(rows), c.names).all(conn, params)
        else:
            found = self._insert_columns(conn, c, rows, returning=True)
        return sorted(row_id for (row_id,) in found)

    def _rows_statement(self, n: int, names: tuple[str, ...]) -> "Fast":
        """INSERT ... VALUES of ``n`` rows, RETURNING the primary key (values bound already)."""
        found = self._rows_statements.get(n)
        if found is None:
            table = self.statement.table
            key, = table.primary_key.columns
            found = self._rows_statements[n] = Fast(insert(table).values([
                {name: bindparam(f"{name}_{i}", type_=table.c[name].type) for name in names}
                for i in range(n)]).returning(key))
        return found

    def _columns(self, conn: Connection) -> "_Columns | None":
        """The statement as one INSERT of column arrays, for PostgreSQL, or None (another
        database, or a statement it does not fit: see :func:`_columns_of`)."""
        if conn.dialect.name != "postgresql":
            return None
        if self._as_columns is False:
            self._as_columns = _columns_of(self, conn)
        return self._as_columns

    def _insert_columns(self, conn: Connection, c: _Compiled, rows, *, returning=False):
        cols = self._columns(conn)
        # each row with its size, counted on the values as given (a bind processor may wrap
        # bytes: psycopg.Binary)
        values = [(_processed(c, taken), _size(taken)) for taken in map(c.take, rows)]
        if self.ordered:
            values.sort(key=operator.itemgetter(0))
        sql = cols.returning if returning else cols.sql
        cursor = _cursor(conn)
        send_queued(conn)
        found = []
        for chunk in _by_size(values):
            try:
                cursor.execute(sql, [list(column) for column in zip(*chunk)])
            except c.error as error:
                _raise(conn, sql, (), error)
            if returning:
                found += cursor.fetchall()
        return found


@dataclass(frozen=True)
class Bound:
    """Values of one row bound for one statement and dialect (:meth:`Fast.bind`)."""
    statement: Fast
    dialect: str
    values: Any


@dataclass(frozen=True)
class _Columns:
    sql: str                        # INSERT INTO t (a, b) SELECT * FROM unnest(%b, %b)
    returning: str | None           # the same, RETURNING its one-column primary key


# psycopg converts a statement's placeholders once and keeps the result only for a statement of
# at most this many parameters (psycopg._queries.MAX_CACHED_STATEMENT_PARAMS); above, it parses
# the SQL again on every execute (~500 us for 64). Below, the arrays' dumping (~6 us a column)
# costs more than a VALUES row's scalars.
PSYCOPG_CACHED_PARAMS = 50

# The column types an array can carry as psycopg dumps them (binary), each cast to the base
# type: a string to TEXT, so that a value too long for its column fails the INSERT as it did
# (a CAST to VARCHAR(n) would cut it without a word). In this order: an Enum is a String, but
# no TEXT is assigned to a native enum; a BigInteger is an Integer.
_ARRAY_TYPES = ((sa_types.Enum, None), (sa_types.LargeBinary, "BYTEA"),
                (sa_types.Boolean, "BOOLEAN"), (sa_types.Integer, "BIGINT"),
                (sa_types.String, "TEXT"))


def _columns_of(fast: Fast, conn: Connection) -> _Columns | None:
    """``INSERT INTO t (cols) SELECT * FROM unnest(CAST(%b AS T[]), ...)``: every row in one
    statement of one parameter per column, whatever the number of rows - one prepared
    statement, where a multi-row VALUES is another statement per row count (and psycopg
    parses one of over 50 parameters again on every execute). None for a statement that is
    not a plain INSERT of its table's columns, or has a column type not in _ARRAY_TYPES."""
    statement = fast.statement
    if not isinstance(statement, Insert) or fast.keys is None:   # its own VALUES, RETURNING
        return None
    c = fast._compiled(conn)
    table = statement.table
    casts = []
    for name in c.names:
        if name not in table.c:
            return None
        cast = _array_type(table.c[name].type)
        if cast is None:
            return None
        casts.append(f"CAST(%b AS {cast}[])")
    quote = conn.dialect.identifier_preparer
    sql = (f"INSERT INTO {quote.format_table(table)} "
           f"({', '.join(quote.format_column(table.c[n]) for n in c.names)}) "
           f"SELECT * FROM unnest({', '.join(casts)})")
    key = list(table.primary_key.columns)
    returning = f"{sql} RETURNING {quote.format_column(key[0])}" if len(key) == 1 else None
    return _Columns(sql, returning)


# An array parameter is built whole in memory, and copied whole into libpq's output buffer: the
# rows of one statement hold at most this many bytes of values (a batch may hold 64 MB of raw
# messages below STREAM_RAW_FROM), the rest go in the statements after it.
COLUMNS_AT_ONCE_BYTES = 4 * 1024 * 1024


def _size(row: tuple) -> int:
    return sum(len(v) for v in row if isinstance(v, (bytes, str)))


def _by_size(values: list[tuple[tuple, int]]) -> Iterable[list[tuple]]:
    """The rows of ``(row, its size)`` in consecutive runs of at most COLUMNS_AT_ONCE_BYTES
    (a row larger than that alone)."""
    chunk, size = [], 0
    for row, weight in values:
        if chunk and size + weight > COLUMNS_AT_ONCE_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += weight
    if chunk:
        yield chunk


def _array_type(kind) -> str | None:
    if isinstance(kind, sa_types.DateTime):
        return "TIMESTAMP WITH TIME ZONE" if kind.timezone else "TIMESTAMP"
    for cls, sql in _ARRAY_TYPES:
        if isinstance(kind, cls):
            return sql
    return None


def _processed(c: _Compiled, values: tuple) -> tuple:
    """One row's values (``c.take``: one C-level lookup of all of them) through the dialect's
    processors - only those there are (JSON, DateTime on SQLite, ...): the per-row cost of
    every statement."""
    if c.processed:
        values = list(values)
        for i, processor in c.processed:
            values[i] = processor(values[i])
        return tuple(values)
    return values


def _taker(names: tuple[str, ...], fixed: Mapping[str, Any], defaults: Mapping[str, Any]
           ) -> Callable[[Mapping[str, Any]], tuple]:
    """``params -> values in names order``: an itemgetter when the caller gives every value
    (the hot path); otherwise the statement's own values, then column defaults, fill in."""
    def fill(params: Mapping[str, Any]) -> tuple:
        values = []
        for name in names:
            if name in params:
                values.append(params[name])
            elif name in fixed:
                values.append(fixed[name])
            elif name in defaults:
                values.append(defaults[name])
            else:
                raise sa_exc.InvalidRequestError(
                    f"A value is required for bind parameter {name!r}")
        return tuple(values)
    if fixed or not names:
        return fill
    get = operator.itemgetter(*names)
    single = len(names) == 1

    def take(params: Mapping[str, Any]) -> tuple:
        try:
            found = get(params)
        except KeyError:
            return fill(params)
        return (found,) if single else found
    return take


def _execute(conn: Connection, c: _Compiled, bound):
    """One row's statement on the cursor (DBAPI errors raised as SQLAlchemy's); the cursor."""
    cursor = _cursor(conn)
    send_queued(conn)
    try:
        cursor.execute(c.sql, bound)
    except c.error as error:
        _raise(conn, c.sql, bound, error)
    return cursor


def _new_id(c: _Compiled, cursor) -> int:
    """The primary key an INSERT just made (PostgreSQL: its RETURNING id)."""
    return cursor.fetchone()[0] if c.returns_id else cursor.lastrowid


def _send(conn: Connection, c: _Compiled, bound: list, *, pipeline: bool) -> None:
    cursor = _cursor(conn)
    send_queued(conn)
    try:
        if pipeline:
            cursor.executemany(c.sql, bound)
        else:
            for row in bound:
                cursor.execute(c.sql, row)
    except c.error as error:
        _raise(conn, c.sql, bound, error)


# ---------------------------------------------------------------------------- deferred rows
_DEFERRED = "sink.fastpath.deferred"


class _Deferred:
    """The deferred rows of one transaction, in the order they were asked for, and for each
    open savepoint how many rows came before it."""

    def __init__(self, queues: bool) -> None:
        self.rows: list[tuple[Fast, Mapping[str, Any]]] = []
        self.marks: list[tuple[str, int]] = []
        self.queues = queues                          # commands are queued (PostgreSQL)
        self.queued: list[str] = []                   # commands not sent yet, in order

    def mark(self, name: str) -> None:
        self.marks.append((name, len(self.rows)))

    def undo_to(self, name: str, *, drop: bool) -> None:
        """Forget the rows asked for since savepoint ``name`` (and, with ``drop``, the
        savepoint and every one opened after it)."""
        for i in range(len(self.marks) - 1, -1, -1):
            if self.marks[i][0] == name:
                del self.rows[self.marks[i][1]:]
                del self.marks[i + (0 if drop else 1):]
                return

    def forget(self, name: str) -> None:
        """RELEASE ``name``: its rows now belong to the savepoint (or transaction) around it."""
        for i in range(len(self.marks) - 1, -1, -1):
            if self.marks[i][0] == name:
                del self.marks[i:]
                return


@contextmanager
def deferring(conn: Connection):
    """Within the block, ``Fast.defer``/``defer_many`` on ``conn`` keep their rows until
    :func:`flush`; the caller flushes before it commits (rows not flushed are dropped)."""
    engine = conn.engine
    queues = conn.dialect.name == "postgresql"
    # only where commands are queued: elsewhere the event would be a call per statement with
    # nothing to send
    if queues and not getattr(engine, "_sink_sends_queued", False):     # once per engine
        event.listen(engine, "before_cursor_execute", before_cursor_execute)
        engine._sink_sends_queued = True
    info = conn.connection.info
    info[_DEFERRED] = _Deferred(queues)
    try:
        yield
    finally:
        info.pop(_DEFERRED, None)


def flush(conn: Connection) -> None:
    """Send every deferred row: a statement's rows together (see the module's docstring), the
    statements in the order they were first asked for (a row is never sent before one it
    refers to)."""
    state = _deferred(conn)
    if state is None:
        return
    if not state.rows:
        send_queued(conn)
        return
    by_statement: dict[Fast, list[Mapping[str, Any]]] = {}
    for fast, params in state.rows:
        by_statement.setdefault(fast, []).append(params)
    state.rows.clear()
    if (len(by_statement) == 1 and not state.queued) or not state.queues:
        for fast, rows in by_statement.items():     # SQLite: in-process, nothing to pipeline
            fast._send_deferred(conn, rows)
        return
    # Every statement's rows (and the queued commands before them) in one pipeline: one round
    # trip instead of one per statement. An error (a dedup key another worker committed first)
    # skips the rest of the pipeline, and fails the whole transaction, as it always did.
    queued, state.queued = state.queued, []

    def send() -> None:
        for fast, rows in by_statement.items():
            fast._send_deferred(conn, rows)
    _pipelined(conn, queued, "flush", send)


def pending(conn: Connection, fast: Fast) -> list[Mapping[str, Any]]:
    """The parameters of ``fast``'s rows deferred on ``conn`` and not yet sent."""
    state = _deferred(conn)
    return [] if state is None else [params for f, params in state.rows if f is fast]


def _deferred(conn: Connection) -> _Deferred | None:
    return conn.connection.info.get(_DEFERRED)


def savepoint(conn: Connection, name: str):
    """SAVEPOINT ``name``; returns what :func:`rollback_to` needs to undo to it."""
    outer = conn.get_nested_transaction()
    queue(conn, f"SAVEPOINT {name}")
    state = _deferred(conn)
    if state is not None:
        state.mark(name)
    return outer


def release(conn: Connection, name: str) -> None:
    state = _deferred(conn)
    if state is not None and state.queued and state.queued[-1] == f"SAVEPOINT {name}":
        state.queued.pop()          # nothing ran inside it: neither command is needed
    else:
        queue(conn, f"RELEASE SAVEPOINT {name}")
    if state is not None:
        state.forget(name)


def rollback_to(conn: Connection, name: str, outer=None, *, release: bool = False) -> None:
    """Undo everything since SAVEPOINT ``name`` (``outer``: what :func:`savepoint` returned);
    with ``release``, also drop the savepoint.

    A SQLAlchemy nested transaction left open inside it (code that failed half-way) is rolled
    back first, so that SQLAlchemy's bookkeeping follows the database's."""
    inner = conn.get_nested_transaction()
    while inner is not None and inner is not outer and inner.is_active:
        inner.rollback()
        inner = conn.get_nested_transaction()
    state = _deferred(conn)
    if state is None or not state.queues:
        _raw(conn, f"ROLLBACK TO SAVEPOINT {name}")
        if state is not None:
            state.undo_to(name, drop=release)
        if release:
            _raw(conn, f"RELEASE SAVEPOINT {name}")
        return
    state.queued.append(f"ROLLBACK TO SAVEPOINT {name}")
    if release:
        state.queued.append(f"RELEASE SAVEPOINT {name}")
    _send_queued(conn, state)          # now, as ever: it is what recovers a failed statement
    state.undo_to(name, drop=release)


def run(conn: Connection, sql: str, params=None) -> None:
    """Driver-level SQL (the DBAPI's own parameter style) on the fast path's cursor."""
    _raw(conn, sql, params)


def queue(conn: Connection, sql: str) -> None:
    """:func:`run` for a command without parameters whose result nobody reads: in a
    PostgreSQL batch it is sent with the next statement (see the module's docstring),
    elsewhere now."""
    state = _deferred(conn)
    if state is None or not state.queues:
        _raw(conn, sql)
    else:
        state.queued.append(sql)


def send_queued(conn: Connection) -> None:
    """Send the queued commands now (before SQLAlchemy or COPY uses the connection)."""
    state = _deferred(conn)
    if state is not None and state.queued:
        _send_queued(conn, state)


def before_cursor_execute(conn, _cursor, _statement, _parameters, _context, _executemany):
    """Engine event (registered by :func:`deferring`): the queue goes before any statement
    SQLAlchemy sends."""
    send_queued(conn)


def _send_queued(conn: Connection, state: _Deferred) -> None:
    """The queued commands as one simple query: one round trip. The first that fails stops
    the rest, as it stopped those sent after it one by one."""
    sql = "; ".join(state.queued)
    state.queued = []
    try:
        _cursor(conn).execute(sql)
    except conn.dialect.loaded_dbapi.Error as error:
        _raise(conn, sql, (), error)


def _pipelined(conn: Connection, commands: list[str], what: str, send) -> None:
    """``commands``, then ``send()``, in one psycopg pipeline: sent without waiting, answered
    at its sync - one round trip. The first error is raised (the rest of the pipeline is
    skipped, as a failed statement stopped what followed it) as SQLAlchemy's."""
    dbapi = conn.connection.dbapi_connection
    cursor = _cursor(conn)
    try:
        with dbapi.pipeline():
            for command in commands:
                cursor.execute(command)
            send()
    except conn.dialect.loaded_dbapi.Error as error:
        _raise(conn, what, (), error)


def _raw(conn: Connection, sql: str, params=None) -> None:
    send_queued(conn)
    try:
        if params is None:
            _cursor(conn).execute(sql)
        else:
            _cursor(conn).execute(sql, params)
    except conn.dialect.loaded_dbapi.Error as error:
        _raise(conn, sql, params or (), error)


def raise_dbapi(conn: Connection, what: str, params, error: Exception):
    """Raise a DBAPI error of work done on the DBAPI connection (a blob write, ...) as
    SQLAlchemy's, as :class:`Fast` does, so that it is classified as ever."""
    _raise(conn, what, params, error)


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
