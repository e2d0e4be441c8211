"""Engines with durable settings, asserted rather than assumed.

An acknowledged message must survive a power cut. SQLite: WAL and ``synchronous=FULL`` on every
connection (NORMAL in WAL mode can lose the last commits on power loss). PostgreSQL:
``synchronous_commit`` must not be off. :func:`check_durability` reads the settings back and
refuses to run when they are not what we set.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url


class DurabilityError(Exception):
    """The database would acknowledge commits it could lose."""


def is_sqlite(engine_or_url) -> bool:
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    return url.get_backend_name() == "sqlite"


def _sqlite_connect(dbapi_conn, _record):
    # Let SQLAlchemy, not pysqlite, decide when transactions begin, so BEGIN IMMEDIATE works.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn):
    # Take the write lock up front: a read-then-write transaction upgraded later can fail with
    # SQLITE_BUSY without waiting; IMMEDIATE waits for busy_timeout instead.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                         pool_pre_ping=True, pool_recycle=1800)


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
