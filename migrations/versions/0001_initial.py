"""initial schema: directory, messages, raw bytes, records

Revision ID: 0001
Revises: 
Create Date: 2026-11-22
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('activity_types',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_activity_types')),
    sa.UniqueConstraint('name', name=op.f('uq_activity_types_name'))
    )
    op.create_table('companies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=300), nullable=False),
    sa.Column('allow_emails', sa.Boolean(), nullable=False),
    sa.Column('allow_bulk_emails', sa.Boolean(), nullable=False),
    sa.Column('non_functional', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_companies')),
    sa.UniqueConstraint('name', name=op.f('uq_companies_name'))
    )
    op.create_table('contracts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('number', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=300), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contracts')),
    sa.UniqueConstraint('number', name=op.f('uq_contracts_number'))
    )
    op.create_table('directory_meta',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_directory_meta'))
    )
    op.create_table('messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uuid', sa.String(length=36), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('channel', sa.String(length=10), nullable=False),
    sa.Column('box', sa.String(length=320), nullable=False),
    sa.Column('mail_from', sa.String(length=320), nullable=True),
    sa.Column('rcpt_to', sa.JSON(), nullable=False),
    sa.Column('sender', sa.String(length=320), nullable=True),
    sa.Column('to_addrs', sa.JSON(), nullable=False),
    sa.Column('cc_addrs', sa.JSON(), nullable=False),
    sa.Column('date_header', sa.Text(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('message_id', sa.Text(), nullable=True),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('verdict', sa.String(length=40), nullable=True),
    sa.Column('direction', sa.String(length=10), nullable=True),
    sa.Column('trace', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('dkim', sa.String(length=20), nullable=True),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_messages')),
    sa.UniqueConstraint('box', 'sha256', name=op.f('uq_messages_box_sha256')),
    sa.UniqueConstraint('uuid', name=op.f('uq_messages_uuid'))
    )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_messages_status_id'), ['status', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_messages_verdict_id'), ['verdict', 'id'], unique=False)

    op.create_table('orders',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('number', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=300), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('number', name=op.f('uq_orders_number'))
    )
    op.create_table('roles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_roles')),
    sa.UniqueConstraint('name', name=op.f('uq_roles_name'))
    )
    op.create_table('tasks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('number', sa.String(length=100), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks')),
    sa.UniqueConstraint('number', name=op.f('uq_tasks_number'))
    )
    op.create_table('company_domains',
    sa.Column('company_id', sa.Integer(), nullable=False),
    sa.Column('domain', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['company_id'], ['companies.id'], name=op.f('fk_company_domains_company_id_companies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('company_id', 'domain', name=op.f('pk_company_domains'))
    )
    with op.batch_alter_table('company_domains', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_company_domains_domain'), ['domain'], unique=False)

    op.create_table('company_emails',
    sa.Column('company_id', sa.Integer(), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.ForeignKeyConstraint(['company_id'], ['companies.id'], name=op.f('fk_company_emails_company_id_companies'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('company_id', 'address', name=op.f('pk_company_emails'))
    )
    with op.batch_alter_table('company_emails', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_company_emails_address'), ['address'], unique=False)

    op.create_table('contacts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('company_id', sa.Integer(), nullable=True),
    sa.Column('allow_emails', sa.Boolean(), nullable=False),
    sa.Column('allow_bulk_emails', sa.Boolean(), nullable=False),
    sa.Column('non_functional', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['company_id'], ['companies.id'], name=op.f('fk_contacts_company_id_companies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contacts')),
    sa.UniqueConstraint('email', name=op.f('uq_contacts_email'))
    )
    op.create_table('dedup_keys',
    sa.Column('box', sa.String(length=320), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_dedup_keys_message_id_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('box', 'kind', 'digest', name=op.f('pk_dedup_keys'))
    )
    op.create_table('raw_messages',
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_raw_messages_message_id_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('message_id', name=op.f('pk_raw_messages'))
    )
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('role_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['role_id'], ['roles.id'], name=op.f('fk_users_role_id_roles')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email'))
    )
    op.create_table('activities',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('direction', sa.String(length=10), nullable=False),
    sa.Column('responsible_id', sa.Integer(), nullable=False),
    sa.Column('type_id', sa.Integer(), nullable=True),
    sa.Column('type_name', sa.String(length=200), nullable=False),
    sa.Column('scope', sa.String(length=220), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('date', sa.DateTime(timezone=True), nullable=True),
    sa.Column('contract_id', sa.Integer(), nullable=True),
    sa.Column('order_id', sa.Integer(), nullable=True),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('ticket_id', sa.Integer(), nullable=True),
    sa.Column('completed', sa.Boolean(), nullable=False),
    sa.Column('due', sa.Boolean(), nullable=False),
    sa.Column('original_filename', sa.String(length=100), nullable=True),
    sa.ForeignKeyConstraint(['contract_id'], ['contracts.id'], name=op.f('fk_activities_contract_id_contracts')),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_activities_message_id_messages'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_activities_order_id_orders')),
    sa.ForeignKeyConstraint(['responsible_id'], ['users.id'], name=op.f('fk_activities_responsible_id_users')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_activities_task_id_tasks')),
    sa.ForeignKeyConstraint(['type_id'], ['activity_types.id'], name=op.f('fk_activities_type_id_activity_types')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_activities'))
    )
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_activities_message_id'), ['message_id'], unique=False)

    op.create_table('user_aliases',
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_aliases_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('address', name=op.f('pk_user_aliases'))
    )
    op.create_table('activity_companies',
    sa.Column('activity_id', sa.Integer(), nullable=False),
    sa.Column('company_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['activity_id'], ['activities.id'], name=op.f('fk_activity_companies_activity_id_activities'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['company_id'], ['companies.id'], name=op.f('fk_activity_companies_company_id_companies')),
    sa.PrimaryKeyConstraint('activity_id', 'company_id', name=op.f('pk_activity_companies'))
    )
    op.create_table('activity_contacts',
    sa.Column('activity_id', sa.Integer(), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['activity_id'], ['activities.id'], name=op.f('fk_activity_contacts_activity_id_activities'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_activity_contacts_contact_id_contacts')),
    sa.PrimaryKeyConstraint('activity_id', 'contact_id', name=op.f('pk_activity_contacts'))
    )
    # ### end Alembic commands ###
    # SPEC 4: the activity type "E-mail" always exists; the directory version starts at 1.
    op.bulk_insert(sa.table('activity_types', sa.column('name', sa.String)), [{'name': 'E-mail'}])
    op.bulk_insert(sa.table('directory_meta', sa.column('id', sa.Integer),
                            sa.column('version', sa.Integer)), [{'id': 1, 'version': 1}])


def downgrade() -> None:
    op.drop_table('activity_contacts')
    op.drop_table('activity_companies')
    op.drop_table('user_aliases')
    with op.batch_alter_table('activities', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_activities_message_id'))

    op.drop_table('activities')
    op.drop_table('users')
    op.drop_table('raw_messages')
    op.drop_table('dedup_keys')
    op.drop_table('contacts')
    with op.batch_alter_table('company_emails', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_company_emails_address'))

    op.drop_table('company_emails')
    with op.batch_alter_table('company_domains', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_company_domains_domain'))

    op.drop_table('company_domains')
    op.drop_table('tasks')
    op.drop_table('roles')
    op.drop_table('orders')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_messages_verdict_id'))
        batch_op.drop_index(batch_op.f('ix_messages_status_id'))

    op.drop_table('messages')
    op.drop_table('directory_meta')
    op.drop_table('contracts')
    op.drop_table('companies')
    op.drop_table('activity_types')
    # ### end Alembic commands ###
