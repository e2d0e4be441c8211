"""side effects: tasks made from mail, forbidden addresses, flag changes, invitations

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('flag_changes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('entity', sa.String(length=10), nullable=False),
    sa.Column('entity_id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('changes', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_flag_changes_message_id_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_flag_changes'))
    )
    with op.batch_alter_table('flag_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_flag_changes_message_id'), ['message_id'], unique=False)

    op.create_table('forbidden_addresses',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('type', sa.String(length=20), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_forbidden_addresses_message_id_messages'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_forbidden_addresses')),
    sa.UniqueConstraint('email', 'type', name=op.f('uq_forbidden_addresses_email_type'))
    )
    with op.batch_alter_table('forbidden_addresses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_forbidden_addresses_message_id'), ['message_id'], unique=False)

    op.create_table('invitations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('uid', sa.String(length=500), nullable=False),
    sa.Column('method', sa.String(length=10), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('dtstamp', sa.String(length=16), nullable=True),
    sa.Column('revision', sa.String(length=40), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('location', sa.Text(), nullable=False),
    sa.Column('dtstart', sa.String(length=40), nullable=True),
    sa.Column('dtstart_tzid', sa.String(length=200), nullable=True),
    sa.Column('dtend', sa.String(length=40), nullable=True),
    sa.Column('dtend_tzid', sa.String(length=200), nullable=True),
    sa.Column('rrule', sa.Text(), nullable=True),
    sa.Column('organizer', sa.String(length=320), nullable=True),
    sa.Column('message_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_invitations_message_id_messages'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_invitations_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invitations')),
    sa.UniqueConstraint('user_id', 'uid', name=op.f('uq_invitations_user_id_uid'))
    )
    with op.batch_alter_table('invitations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_invitations_message_id'), ['message_id'], unique=False)

    op.create_table('invitation_responses',
    sa.Column('invitation_id', sa.Integer(), nullable=False),
    sa.Column('attendee', sa.String(length=320), nullable=False),
    sa.Column('partstat', sa.String(length=40), nullable=False),
    sa.Column('revision', sa.String(length=40), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['invitation_id'], ['invitations.id'], name=op.f('fk_invitation_responses_invitation_id_invitations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_invitation_responses_message_id_messages'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('invitation_id', 'attendee', name=op.f('pk_invitation_responses'))
    )
    with op.batch_alter_table('invitation_responses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_invitation_responses_message_id'), ['message_id'], unique=False)

    op.create_table('task_changes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=10), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=200), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_task_changes_message_id_messages'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_changes_task_id_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_changes'))
    )
    with op.batch_alter_table('task_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_task_changes_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_task_changes_task_id'), ['task_id'], unique=False)

    op.create_table('task_solvers',
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_task_solvers_task_id_tasks'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_task_solvers_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', 'user_id', name=op.f('pk_task_solvers'))
    )
    _add_task_columns()
    # ### end Alembic commands ###


def _add_task_columns() -> None:
    """New task columns. SQLite cannot add a foreign key constraint to an existing table, and
    batch mode would copy and drop ``tasks``, which activities reference (refused with foreign
    keys on), so there approver_id gets an inline REFERENCES clause; elsewhere as usual."""
    columns = [sa.Column('origin', sa.String(length=20), nullable=True),
               sa.Column('contract_number', sa.String(length=100), nullable=True)]
    if op.get_context().dialect.name == 'sqlite':
        for column in columns:
            op.add_column('tasks', column)
        op.execute('ALTER TABLE tasks ADD COLUMN approver_id INTEGER REFERENCES users (id)')
        return
    for column in columns:
        op.add_column('tasks', column)
    op.add_column('tasks', sa.Column('approver_id', sa.Integer(), nullable=True))
    op.create_foreign_key(op.f('fk_tasks_approver_id_users'), 'tasks', 'users',
                          ['approver_id'], ['id'])


def downgrade() -> None:
    op.drop_table('task_changes')
    if op.get_context().dialect.name == 'sqlite':
        # Batch mode rebuilds ``tasks``: that needs no activity to point at a task.
        with op.batch_alter_table('tasks', schema=None) as batch_op:
            batch_op.drop_column('approver_id')
            batch_op.drop_column('contract_number')
            batch_op.drop_column('origin')
    else:
        op.drop_constraint(op.f('fk_tasks_approver_id_users'), 'tasks', type_='foreignkey')
        for column in ('approver_id', 'contract_number', 'origin'):
            op.drop_column('tasks', column)
    op.drop_table('task_solvers')
    with op.batch_alter_table('invitation_responses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_invitation_responses_message_id'))

    op.drop_table('invitation_responses')
    with op.batch_alter_table('invitations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_invitations_message_id'))

    op.drop_table('invitations')
    with op.batch_alter_table('forbidden_addresses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_forbidden_addresses_message_id'))

    op.drop_table('forbidden_addresses')
    with op.batch_alter_table('flag_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_flag_changes_message_id'))

    op.drop_table('flag_changes')
    # ### end Alembic commands ###
