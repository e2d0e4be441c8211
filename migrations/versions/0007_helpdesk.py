"""help desk: tickets and their messages, the stored spam list, counters, Message-ID index

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        # indexed from now on: cut what PostgreSQL could not index (real ones are < 250)
        batch_op.alter_column('message_id', existing_type=sa.Text(),
                              type_=sa.String(length=500), existing_nullable=True,
                              postgresql_using='substr(message_id, 1, 500)')
        batch_op.create_index('ix_messages_message_id', ['message_id'], unique=False)
        batch_op.create_index('ix_messages_box_sender_received_at',
                              ['box', 'sender', 'received_at'], unique=False)

    op.create_table('counters',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('value', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_counters'))
    )
    op.bulk_insert(sa.table('counters', sa.column('name', sa.String), sa.column('value', sa.Integer)),
                   [{'name': 'tickets', 'value': 0}])

    op.create_table('tickets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('box', sa.String(length=320), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('contact_email', sa.String(length=320), nullable=True),
    sa.Column('company_name', sa.String(length=300), nullable=True),
    sa.Column('rule', sa.String(length=120), nullable=False),
    sa.Column('thread', sa.String(length=500), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tickets')),
    sa.UniqueConstraint('number', name=op.f('uq_tickets_number')),
    sa.UniqueConstraint('box', 'thread', name=op.f('uq_tickets_box_thread'))
    )

    op.create_table('ticket_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ticket_id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=10), nullable=False),
    sa.Column('rule', sa.String(length=120), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_ticket_messages_message_id_messages'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['ticket_id'], ['tickets.id'], name=op.f('fk_ticket_messages_ticket_id_tickets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ticket_messages'))
    )
    with op.batch_alter_table('ticket_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ticket_messages_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ticket_messages_ticket_id'), ['ticket_id'], unique=False)

    op.create_table('spam_list',
    sa.Column('box', sa.String(length=320), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=True),
    sa.Column('added_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_spam_list_message_id_messages'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('box', 'email', name=op.f('pk_spam_list'))
    )
    with op.batch_alter_table('spam_list', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_spam_list_message_id'), ['message_id'], unique=False)


def downgrade() -> None:
    op.drop_table('spam_list')
    op.drop_table('ticket_messages')
    op.drop_table('tickets')
    op.drop_table('counters')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_box_sender_received_at')
        batch_op.drop_index('ix_messages_message_id')
        batch_op.alter_column('message_id', existing_type=sa.String(length=500),
                              type_=sa.Text(), existing_nullable=True)
