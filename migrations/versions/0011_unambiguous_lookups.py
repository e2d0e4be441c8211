"""lookups whose index is the only one that fits: (sender, box, received_at), (message_id, box)

A message's two hot lookups by box went through an index that only had ``box`` in common with
them. PostgreSQL plans a prepared statement once (psycopg prepares after five runs) when the
tables are nearly empty, and on a new database without statistics every index with a ``box``
prefix cost the same: the "already stored?" lookup (box, sha256) and the thread lookup
(Message-ID, box) were planned on ix_messages_box_sender_received_at, a scan of every message
of the box per message, kept for the connection's life (no ANALYZE invalidates it while
autovacuum has not run). In the storage harness (bench.storepath, 4 KB mail) that was
0.37 + 0.12 ms of server time per message at 2,000 messages, growing with the table.

Now the loop guard's index starts with the sender and the Message-ID index carries the box:
each lookup has one index that matches all its equalities, chosen with or without statistics.
Both still serve what they served (the loop guard asks for sender and box; a Message-ID alone
is a prefix).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""
from alembic import op


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_box_sender_received_at')
        batch_op.drop_index('ix_messages_message_id')
        batch_op.create_index('ix_messages_sender_box_received_at',
                              ['sender', 'box', 'received_at'], unique=False)
        batch_op.create_index('ix_messages_message_id_box', ['message_id', 'box'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_message_id_box')
        batch_op.drop_index('ix_messages_sender_box_received_at')
        batch_op.create_index('ix_messages_message_id', ['message_id'], unique=False)
        batch_op.create_index('ix_messages_box_sender_received_at',
                              ['box', 'sender', 'received_at'], unique=False)
