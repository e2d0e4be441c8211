"""Fixtures: databases (SQLite and real PostgreSQL), the directory, an in-process server."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import uuid

import pytest
from sqlalchemy import create_engine, text

from sink.config import Config, parse_config
from sink.db.directory_store import import_directory
from sink.db.engine import make_engine
from sink.db.migrate import upgrade
from sink.intake import Intake
from sink.log import configure
from tests.support import DIRECTORY, require

# JSON log lines at warning and above only: server threads outlive a test's output capture.
configure("warning")

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def postgres_available() -> bool:
    try:
        engine = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_available() -> bool:
    return postgres_available()


def create_pg_database(name: str) -> str:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_pg_database(name: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path, pg_available):
    """A fresh, empty database URL: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/sink.db"
        return
    require(pg_available, "PostgreSQL at 127.0.0.1:5432")
    name = f"sink_test_{uuid.uuid4().hex[:12]}"
    url = create_pg_database(name)
    yield url
    drop_pg_database(name)


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    """The test directory (tests.support.DIRECTORY) as the rules see it: a plain snapshot."""
    from sink.db.directory_store import load_directory
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('directory')}/d.db")
    upgrade(engine)
    with engine.begin() as conn:
        import_directory(conn, DIRECTORY)
        snapshot = load_directory(conn)
    engine.dispose()
    return snapshot


def seeded(url: str):
    """An engine on ``url`` with the current schema and the test directory."""
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        import_directory(conn, DIRECTORY)
    return engine


@pytest.fixture
def pg_engine(pg_available):
    """A fresh PostgreSQL database with the schema and the test directory, for what is about
    PostgreSQL alone (two instances, column compression, two writers at once)."""
    require(pg_available, "PostgreSQL at 127.0.0.1:5432")
    name = f"sink_test_{uuid.uuid4().hex[:12]}"
    engine = seeded(create_pg_database(name))
    yield engine
    engine.dispose()
    drop_pg_database(name)


@pytest.fixture
def sqlite_engine(tmp_path):
    """A seeded SQLite database alone, for tests of what does not depend on the database."""
    engine = seeded(f"sqlite:///{tmp_path}/sink.db")
    yield engine
    engine.dispose()


@pytest.fixture
def engine(db_url):
    engine = seeded(db_url)
    yield engine
    engine.dispose()


def config_for(db_url: str, *, listeners=(), **box) -> "Config":
    data = {"database": {"url": db_url}, "log": {"level": "warning"},
            "listeners": [dict(l) for l in listeners],
            "boxes": [{"address": "crm@firma.cz", **box}]}
    return parse_config(data)


@pytest.fixture
def config(db_url):
    return config_for(db_url, listeners=[{"protocol": "lmtp", "address": "127.0.0.1:0"},
                                         {"protocol": "smtp", "address": "127.0.0.1:0"}])


class RunningServer:
    """A SinkApp on its own event loop in a background thread, bound to free ports: with
    storage worker processes as ``sink serve`` runs it, or, given an ``intake`` (rules that are
    test doubles), storing in this process."""

    def __init__(self, config, intake: Intake | None = None, workers: int = 2,
                 loop_factory=asyncio.new_event_loop, **options):
        from sink.app import SinkApp
        from sink.storage import make_storage
        self.server = SinkApp(config, make_storage(config, intake=intake, workers=workers,
                                                   **options))
        self.loop = loop_factory()      # uvloop.new_event_loop: as `sink serve` runs
        self.ports = self.loop.run_until_complete(self.server.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def lmtp_port(self) -> int:
        return self.port_for("lmtp")

    @property
    def smtp_port(self) -> int:
        return self.port_for("smtp")

    def port_for(self, protocol: str) -> int:
        for listener, (_, port) in zip(self.server.config.listeners, self.ports):
            if listener.protocol == protocol:
                return port
        raise KeyError(protocol)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace=10), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def start_server(engine, config):
    """Call with an optional Intake (e.g. with a rules function that raises: stored in this
    process), config, and the number of storage workers (0: in this process)."""
    running = []

    def start(intake: Intake | None = None, cfg=None, workers: int = 2,
              **options) -> RunningServer:
        if workers == 0 and intake is None:
            intake = Intake(engine)
        server = RunningServer(cfg or config, intake, workers, **options)
        running.append(server)
        return server
    yield start
    for server in running:
        server.stop()


def with_listener_limits(config, **limits):
    return dataclasses.replace(config, listeners=tuple(
        dataclasses.replace(l, **limits) for l in config.listeners))


# ------------------------------------------------------------------ components of several suites

@pytest.fixture
def dovecot():
    """A private Dovecot 2.3 with the sources tests' user (tests.dovecot_harness); stopped
    after the test."""
    from tests.dovecot_harness import Dovecot, dovecot_available
    from tests.sources_support import PASSWORD, USER
    require(dovecot_available(), "Dovecot 2.3 (dovecot-imapd, dovecot-pop3d), run as root")
    server = Dovecot({USER: PASSWORD})
    yield server
    server.cleanup()


@pytest.fixture
def fake(tmp_path):
    """The faithful fake of Microsoft Entra ID and Graph over local HTTPS (tests.graph_fake)."""
    from tests.graph_fake import FakeMicrosoft
    fake = FakeMicrosoft(tmp_path)
    yield fake
    fake.close()


@pytest.fixture
def cal(fake, engine, tmp_path, db_url):
    """A calendar sync against ``fake`` on the test database (tests.calendar_support)."""
    from tests.calendar_support import Harness
    harness = Harness(fake, engine, tmp_path, db_url)
    yield harness
    harness.close()
