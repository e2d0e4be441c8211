"""Engines with durable settings, asserted rather than assumed.

An acknowledged message must survive a power cut. SQLite: WAL and ``synchronous=FULL`` on every
connection (NORMAL in WAL mode can lose the last commits on power loss). PostgreSQL:
``synchronous_commit`` must not be off. :func:`check_durability` reads the settings back and
refuses to run when they are not what we set.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import orjson
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url


class DurabilityError(Exception):
    """The database would acknowledge commits it could lose."""


def is_sqlite(engine_or_url) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


class SQLiteFile:
    """The SQLite file an engine opened, to tell when it was unlinked or replaced under us.

    SQLite keeps writing into the inode it opened: after ``rm sink.db`` (or a restore that
    renamed another file over it) every commit "succeeds" into a file nobody will ever read,
    and the MTA is answered 250 for mail that is gone. We keep a descriptor of the file the
    first connection opened and compare, per batch, its link count (0: unlinked) and the
    inode now at the path with it."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None
        self.identity: tuple[int, int] | None = None

    def opened(self) -> None:
        if self.fd is None and os.path.exists(self.path):
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            st = os.fstat(self.fd)
            self.identity = (st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        """None while the path is still the file we write into, else what happened."""
        if self.fd is None:
            return None
        if os.fstat(self.fd).st_nlink == 0:
            return "the database file was deleted"
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "the database file was moved away"
        if (st.st_dev, st.st_ino) != self.identity:
            return "the database file was replaced by another file"
        return None


def check_database_file(engine: Engine) -> None:
    """Raise TransientStorageError (451) when the SQLite file is no longer the one opened."""
    guard = getattr(engine, "sink_file", None)
    problem = guard.problem() if guard is not None else None
    if problem:
        from sink.errors import TransientStorageError
        from sink.log import get_logger
        get_logger("sink.db").error("storage.database_file_lost", path=guard.path,
                                    problem=problem, action="answering 451 until restarted")
        raise TransientStorageError(f"storage unavailable: {problem} ({guard.path}); "
                                    f"restart the sink")


SQLITE_MMAP_BYTES = 256 * 1024 * 1024


def _sqlite_connect(dbapi_conn, _record):
    # Let SQLAlchemy, not pysqlite, decide when transactions begin, so BEGIN IMMEDIATE works.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    # Read pages through a memory map instead of copying them into each connection's page
    # cache: every COMMIT of another connection (a second storage worker, the rules deciding
    # ahead) empties that cache, and re-reading it cost the next batch more than its writes.
    # Writes still go through the WAL and its fsync; a crash loses nothing.
    cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
    # Every message is stored in its own SAVEPOINT, and SQLite keeps the original of each page
    # a savepoint changes in a statement journal, spilled to a new file in /var/tmp once it
    # holds 64 KiB: a 4 KB message wrote ~90 KB there in ~30 pwrites, and each batch created
    # and deleted a file. In memory it costs nothing of the sort (and never reaches the disk
    # that a crash could find: it only ever undoes a savepoint of a live transaction).
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.close()


def _sqlite_begin(conn):
    # Take the write lock up front: a read-then-write transaction upgraded later can fail with
    # SQLITE_BUSY without waiting; IMMEDIATE waits for busy_timeout instead. A connection that
    # only reads (``execution_options(sink_read_only=True)``: the rules deciding ahead,
    # sink.intake.ahead) takes a WAL snapshot instead and never waits for a writer.
    if conn.get_execution_options().get("sink_read_only"):
        conn.exec_driver_sql("BEGIN DEFERRED")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """An engine for ``url``; a URL SQLAlchemy cannot use is a ConfigError naming
    ``database.url`` (one line, exit 2 - never a traceback, never the URL: it may hold a
    password)."""
    from sink.config.checks import ConfigError
    from sqlalchemy import exc as sa_exc
    try:
        return _make_engine(url, pool_size)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError, ValueError) as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ConfigError(f"database.url: not a usable database URL ({reason})") from None


def json_text(value) -> str:
    """A JSON column's text: orjson's where it takes the value (4.5 x faster than json.dumps
    on the trace, recipients and addresses a message row holds: ~21 us of a 4 KB message's
    ~1.4 ms in a storage worker, issue 16), else json.dumps' (lone surrogates, integers
    beyond 64 bits, keys that are not text: orjson refuses them). Either text reads back
    to the same value; orjson leaves out the blanks after ``,`` and ``:``, writes non-ASCII
    characters as they are, and NaN and infinities as ``null`` (json.dumps' ``NaN`` is not
    JSON, and PostgreSQL refuses it)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:                   # orjson.JSONEncodeError is one
        return json.dumps(value)


def _make_engine(url: str, pool_size: int) -> Engine:
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               json_serializer=json_text)
        event.listen(engine, "connect", _sqlite_connect)
        if database and database != ":memory:":
            guard = engine.sink_file = SQLiteFile(database)
            event.listen(engine, "connect", lambda *_: guard.opened())
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                         pool_pre_ping=True, pool_recycle=1800, json_serializer=json_text)


def check_durability(engine: Engine) -> dict:
    """Read back the durability settings; raise DurabilityError when they are unsafe."""
    with engine.connect() as conn:
        if is_sqlite(engine):
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            settings = {"journal_mode": mode, "synchronous": {0: "OFF", 1: "NORMAL", 2: "FULL",
                                                               3: "EXTRA"}.get(sync, sync)}
            if str(mode).lower() != "wal" or sync not in (2, 3):
                raise DurabilityError(f"SQLite is not WAL + synchronous=FULL: {settings}")
        else:
            sync = conn.execute(text("SHOW synchronous_commit")).scalar()
            fsync = conn.execute(text("SHOW fsync")).scalar()
            settings = {"synchronous_commit": sync, "fsync": fsync}
            if sync == "off" or fsync == "off":
                raise DurabilityError(f"PostgreSQL would acknowledge unflushed commits: "
                                      f"{settings}")
    return settings
