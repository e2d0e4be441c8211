"""alembic environment: run by ``sink db upgrade`` (sink.db.migrate), never by hand-edited ini."""

from alembic import context

from sink.db.schema import metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:      # the URL (and its password) is never put in alembic's config
        raise RuntimeError("run migrations with `sink db upgrade`, not the alembic command")
    _run(connection)


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
