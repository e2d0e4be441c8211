"""what IMAP and POP3 sources in keep mode have taken

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'source_imap_uids',
        sa.Column('source_key', sa.String(length=32), nullable=False),
        sa.Column('folder', sa.String(length=500), nullable=False),
        sa.Column('uidvalidity', sa.BigInteger(), nullable=False),
        sa.Column('uid', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('source_key', 'folder', 'uidvalidity', 'uid',
                                name=op.f('pk_source_imap_uids')),
    )
    op.create_table(
        'source_pop3_uidls',
        sa.Column('source_key', sa.String(length=32), nullable=False),
        sa.Column('uidl', sa.String(length=70), nullable=False),
        sa.PrimaryKeyConstraint('source_key', 'uidl', name=op.f('pk_source_pop3_uidls')),
    )


def downgrade() -> None:
    op.drop_table('source_pop3_uidls')
    op.drop_table('source_imap_uids')
