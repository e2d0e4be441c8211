"""bounce records: one per failed address of a delivery report, hard or soft (issue 12)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'bounces',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('message_id', sa.Integer(), nullable=False),
        sa.Column('email', sa.String(length=320), nullable=False),
        sa.Column('kind', sa.String(length=4), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=True),
        sa.Column('diagnostic', sa.Text(), nullable=False),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['message_id'], ['messages.id'],
                                name=op.f('fk_bounces_message_id_messages'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_bounces')),
    )
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bounces_email'), ['email'], unique=False)
        batch_op.create_index(batch_op.f('ix_bounces_message_id'), ['message_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bounces_message_id'))
        batch_op.drop_index(batch_op.f('ix_bounces_email'))
    op.drop_table('bounces')
