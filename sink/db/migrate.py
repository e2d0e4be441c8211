"""Schema creation and migration through alembic, from the installed package."""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine


def alembic_config(engine: Engine) -> AlembicConfig:
    """The scripts' location only. The connection is handed over in ``cfg.attributes``
    (:func:`upgrade`), never the URL: alembic's ConfigParser reads a ``%`` (SQLAlchemy
    percent-encodes ``@ : / %`` ... in a password) as interpolation, so a URL there made
    every command fail with a traceback that showed the password."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(resources.files("sink.migrations")))
    return cfg


class MigrationError(Exception):
    """A migration would leave the database inconsistent; it was rolled back."""


def upgrade(engine: Engine, revision: str = "head") -> str:
    cfg = alembic_config(engine)
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            # SQLite changes a table by rebuilding it (create, copy, drop the old one, rename).
            # With foreign keys on, dropping the old table cascades into every table pointing at
            # it - raw messages and activities would vanish. SQLite's documented procedure turns
            # enforcement off around the change (the pragma only works outside a transaction)
            # and checks the keys before committing.
            conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise MigrationError(f"foreign keys broken by the migration: {broken[:5]}")
        finally:
            if sqlite:
                conn.connection.dbapi_connection.execute("PRAGMA foreign_keys=ON")
    return current_revision(engine) or ""


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision(engine: Engine) -> str:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def schema_is_current(engine: Engine) -> bool:
    return current_revision(engine) == head_revision(engine)
