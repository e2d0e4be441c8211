"""The database: tables (:mod:`~sink.db.schema`, created by the alembic migrations through
:mod:`~sink.db.migrate`), durable engines (:mod:`~sink.db.engine`), compiled hot statements
(:mod:`~sink.db.fastpath`), the directory import and snapshot loader
(:mod:`~sink.db.directory_store`), the rules' read-only view of records
(:mod:`~sink.db.records`) and the operators' queries (:mod:`~sink.db.queries`)."""
