"""operations: the suspension state row and what each source last managed (issue 14)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'operation_state',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('suspended', sa.Boolean(), nullable=False),
        sa.Column('store', sa.Boolean(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('since', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_operation_state')),
    )
    op.create_table(
        'source_status',
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('last_success', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('last_error_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_source_status')),
    )
    # the one state row exists from the start: suspend/resume only update it, and a resume
    # locks it (FOR UPDATE) to decide pending messages one instance at a time
    op.bulk_insert(sa.table('operation_state', sa.column('id', sa.Integer),
                            sa.column('suspended', sa.Boolean), sa.column('store', sa.Boolean)),
                   [{'id': 1, 'suspended': False, 'store': False}])


def downgrade() -> None:
    op.drop_table('source_status')
    op.drop_table('operation_state')
