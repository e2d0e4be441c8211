"""what a message carries: attachment records; the backup directory's progress

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('attachments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('part', sa.String(length=400), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('content_type', sa.String(length=500), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('content_id', sa.String(length=500), nullable=True),
    sa.Column('inline', sa.Boolean(), nullable=False),
    sa.Column('nested_subject', sa.String(length=500), nullable=True),
    sa.Column('defect', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_attachments_message_id_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attachments')),
    sa.UniqueConstraint('message_id', 'part', name=op.f('uq_attachments_message_id_part'))
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('backed_up_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_messages_backed_up_at', ['backed_up_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_backed_up_at')
        batch_op.drop_column('backed_up_at')
    op.drop_table('attachments')
