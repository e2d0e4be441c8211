"""raw bytes on PostgreSQL: lz4 instead of pglz (issue 16)

pglz spent 2.0-2.5 ms of server CPU per 100 KB bench message and gave up on most of them
(103.6 KB stored per 103.0 KB message: its default strategy wants 25 % saved); lz4 costs what
storing uncompressed costs (0.65 ms) and still saves 10 % there, 45 % on 4 KB mail
(medians of three rounds, 200 x 100 KB and 1,000 x 4 KB bench-corpus messages, backend CPU from
/proc). Only new values are written with lz4; rows already stored keep pglz, which PostgreSQL
still reads. A server built without lz4 stores the bytes uncompressed out of line instead
(EXTERNAL: the same CPU, no saving). SQLite has no such setting: a no-op there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def _has_lz4(bind) -> bool:
    # PostgreSQL 14+ built --with-lz4 lists it as a value of default_toast_compression.
    values = bind.exec_driver_sql(
        "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'").scalar()
    return bool(values) and "lz4" in values


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if _has_lz4(bind):
        op.execute("ALTER TABLE raw_messages ALTER COLUMN content SET COMPRESSION lz4")
    else:
        op.execute("ALTER TABLE raw_messages ALTER COLUMN content SET STORAGE EXTERNAL")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    if _has_lz4(bind):
        op.execute("ALTER TABLE raw_messages ALTER COLUMN content SET COMPRESSION pglz")
    op.execute("ALTER TABLE raw_messages ALTER COLUMN content SET STORAGE EXTENDED")
