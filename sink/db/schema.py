"""Tables (SQLAlchemy Core). The alembic migrations in ``migrations/`` create exactly these;
a test compares the two so they cannot drift apart."""

from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Boolean, Column, DateTime, ForeignKey, Index, Integer, LargeBinary,
                        MetaData, String, Table, Text, UniqueConstraint)

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

# ----------------------------------------------------------------------------------- directory
directory_meta = Table(
    "directory_meta", metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

roles = Table(
    "roles", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("level", Integer, nullable=False),
)

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("name", String(200), nullable=False, default=""),
    Column("role_id", Integer, ForeignKey("roles.id"), nullable=True),
)

user_aliases = Table(
    "user_aliases", metadata,
    Column("address", String(320), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
)

companies = Table(
    "companies", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(300), nullable=False, unique=True),
    Column("allow_emails", Boolean, nullable=False, default=True),
    Column("allow_bulk_emails", Boolean, nullable=False, default=True),
    Column("non_functional", Boolean, nullable=False, default=False),
)

company_emails = Table(
    "company_emails", metadata,
    Column("company_id", Integer, ForeignKey("companies.id", ondelete="CASCADE"),
           primary_key=True),
    Column("address", String(320), primary_key=True, index=True),
)

company_domains = Table(
    "company_domains", metadata,
    Column("company_id", Integer, ForeignKey("companies.id", ondelete="CASCADE"),
           primary_key=True),
    Column("domain", String(255), primary_key=True, index=True),
)

contacts = Table(
    "contacts", metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("name", String(200), nullable=False, default=""),
    Column("company_id", Integer, ForeignKey("companies.id"), nullable=True),
    Column("allow_emails", Boolean, nullable=False, default=True),
    Column("allow_bulk_emails", Boolean, nullable=False, default=True),
    Column("non_functional", Boolean, nullable=False, default=False),
)

contracts = Table(
    "contracts", metadata,
    Column("id", Integer, primary_key=True),
    Column("number", String(100), nullable=False, unique=True),
    Column("name", String(300), nullable=False, default=""),
    Column("kind", String(20), nullable=False, default="contract"),
)

orders = Table(
    "orders", metadata,
    Column("id", Integer, primary_key=True),
    Column("number", String(100), nullable=False, unique=True),
    Column("name", String(300), nullable=False, default=""),
)

tasks = Table(
    "tasks", metadata,
    Column("id", Integer, primary_key=True),
    Column("number", String(100), nullable=False, unique=True),
    Column("subject", Text, nullable=False, default=""),
    Column("status", String(200), nullable=True),
    # Tasks the rules create or update (SPEC 5 steps 2 and 8); NULL for imported tasks.
    Column("origin", String(20), nullable=True),            # troubleshooting | new-task
    Column("contract_number", String(100), nullable=True),  # a troubleshooting problem's contract
    Column("approver_id", Integer, ForeignKey("users.id"), nullable=True),
)

activity_types = Table(
    "activity_types", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
)

# ------------------------------------------------------------------------------------ messages
messages = Table(
    "messages", metadata,
    Column("id", Integer, primary_key=True),
    Column("uuid", String(36), nullable=False, unique=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("channel", String(10), nullable=False),
    Column("box", String(320), nullable=False),
    Column("mail_from", String(320), nullable=True),
    Column("rcpt_to", JSON, nullable=False),
    Column("sender", String(320), nullable=True),
    Column("to_addrs", JSON, nullable=False),
    Column("cc_addrs", JSON, nullable=False),
    Column("date_header", Text, nullable=False, default=""),
    Column("subject", Text, nullable=False, default=""),
    # At most 500 characters (storable_row cuts longer ones): it is indexed, and PostgreSQL
    # refuses an index entry over ~2.7 kB - a hostile Message-ID must never defer a message.
    Column("message_id", String(500), nullable=True),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("status", String(10), nullable=False),
    Column("verdict", String(40), nullable=True),
    Column("direction", String(10), nullable=True),
    Column("trace", JSON, nullable=False),
    Column("error", Text, nullable=True),
    Column("dkim", String(20), nullable=True),
    Column("processed_at", DateTime(timezone=True), nullable=True),
    # A message carried by a journal report, wrapper or PEC envelope points to that envelope.
    Column("parent_id", Integer, ForeignKey("messages.id", ondelete="CASCADE"), nullable=True,
           index=True),
    # The same bytes for the same box are the same delivery (an MTA retry after a lost 250):
    # stored once, however many times they arrive, across every sink instance.
    UniqueConstraint("box", "sha256"),
    Index(None, "status", "id"),
    Index(None, "verdict", "id"),
)

# On PostgreSQL the content is compressed with lz4, not the default pglz (migration 0010: pglz
# cost 2-2.5 ms of server CPU per 100 KB message and saved nothing; lz4 costs what storing it
# uncompressed does).
raw_messages = Table(
    "raw_messages", metadata,
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="CASCADE"),
           primary_key=True),
    Column("content", LargeBinary, nullable=False),
)

dedup_keys = Table(
    "dedup_keys", metadata,
    Column("box", String(320), primary_key=True),
    Column("kind", String(20), primary_key=True),
    Column("digest", String(64), primary_key=True),
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
)

# ------------------------------------------------------------------------------------- records
activities = Table(
    "activities", metadata,
    Column("id", Integer, primary_key=True),
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("direction", String(10), nullable=False),
    Column("responsible_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("type_id", Integer, ForeignKey("activity_types.id"), nullable=True),
    Column("type_name", String(200), nullable=False),
    Column("scope", String(220), nullable=False),
    Column("subject", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("date", DateTime(timezone=True), nullable=True),
    Column("contract_id", Integer, ForeignKey("contracts.id"), nullable=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=True),
    Column("task_id", Integer, ForeignKey("tasks.id"), nullable=True),
    Column("ticket_id", Integer, nullable=True),
    Column("completed", Boolean, nullable=False),
    Column("due", Boolean, nullable=False),
    Column("original_filename", String(100), nullable=True),
)

activity_contacts = Table(
    "activity_contacts", metadata,
    Column("activity_id", Integer, ForeignKey("activities.id", ondelete="CASCADE"),
           primary_key=True),
    Column("contact_id", Integer, ForeignKey("contacts.id"), primary_key=True),
)

activity_companies = Table(
    "activity_companies", metadata,
    Column("activity_id", Integer, ForeignKey("activities.id", ondelete="CASCADE"),
           primary_key=True),
    Column("company_id", Integer, ForeignKey("companies.id"), primary_key=True),
)

# ------------------------------------------------------------------------- side-effect records
# (SPEC 5 step 8 and step 2; written by sink.executor in the message's transaction)

task_solvers = Table(
    "task_solvers", metadata,
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
)

task_changes = Table(
    # What each message did to a task (the task keeps only its current values).
    "task_changes", metadata,
    Column("id", Integer, primary_key=True),
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("task_id", Integer, ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("action", String(10), nullable=False),           # created | updated
    Column("subject", Text, nullable=False),
    Column("status", String(200), nullable=True),
)

forbidden_addresses = Table(
    "forbidden_addresses", metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(320), nullable=False),
    Column("type", String(20), nullable=False),             # do-not-send | broken
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="SET NULL"), nullable=True,
           index=True),
    UniqueConstraint("email", "type"),
)

flag_changes = Table(
    "flag_changes", metadata,
    Column("id", Integer, primary_key=True),
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("entity", String(10), nullable=False),           # contact | company
    Column("entity_id", Integer, nullable=False),
    Column("email", String(320), nullable=False),
    Column("changes", JSON, nullable=False),                # {"allow_emails": false, ...}
)

invitations = Table(
    "invitations", metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("uid", String(500), nullable=False),
    Column("method", String(10), nullable=False),           # REQUEST | CANCEL | REPLY
    Column("status", String(20), nullable=False),           # CONFIRMED, TENTATIVE, CANCELLED
    Column("sequence", Integer, nullable=False),
    Column("dtstamp", String(16), nullable=True),           # UTC, 20261101T090000Z
    # Sortable (SEQUENCE, DTSTAMP, CANCEL-wins) key: a write never replaces a larger one.
    Column("revision", String(40), nullable=False),
    Column("summary", Text, nullable=False, default=""),
    Column("location", Text, nullable=False, default=""),
    Column("dtstart", String(40), nullable=True),           # ISO 8601, with offset when known
    Column("dtstart_tzid", String(200), nullable=True),     # TZID as the calendar names it
    Column("dtend", String(40), nullable=True),
    Column("dtend_tzid", String(200), nullable=True),
    Column("rrule", Text, nullable=True),
    Column("organizer", String(320), nullable=True),
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="SET NULL"), nullable=True,
           index=True),
    UniqueConstraint("user_id", "uid"),
)

invitation_responses = Table(
    "invitation_responses", metadata,
    Column("invitation_id", Integer, ForeignKey("invitations.id", ondelete="CASCADE"),
           primary_key=True),
    Column("attendee", String(320), primary_key=True),
    Column("partstat", String(40), nullable=False),         # ACCEPTED, DECLINED, TENTATIVE, ...
    Column("revision", String(40), nullable=False),
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="SET NULL"), nullable=True,
           index=True),
)

# ------------------------------------------------------------------------------------ calendar
# Issue 15 (SPEC 7 "Calendar"): activities kept in step with each user's Office 365 calendar.
# docs/CALENDAR.md documents every column for the CRM side.

calendar_activities = Table(
    "calendar_activities", metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    # The CRM sets this to put an activity in the user's calendar; rows from Outlook have it.
    Column("outlook", Boolean, nullable=False, default=False),
    # The CRM sets this (instead of deleting the row) to delete the event in Outlook too.
    Column("crm_deleted", Boolean, nullable=False, default=False),
    # When the CRM last edited the row (conflicts: the later change wins).
    Column("crm_modified_at", DateTime(timezone=True), nullable=True),
    Column("graph_id", String(500), nullable=True),
    Column("change_key", String(200), nullable=True),
    Column("graph_modified_at", DateTime(timezone=True), nullable=True),
    Column("ical_uid", String(500), nullable=True, index=True),
    Column("event_type", String(20), nullable=False, default="singleInstance"),
    Column("series_master_id", String(500), nullable=True, index=True),
    Column("original_start", DateTime(timezone=True), nullable=True),
    Column("recurrence", JSON, nullable=True),              # Graph's patternedRecurrence
    Column("cancelled", Boolean, nullable=False, default=False),
    Column("type_name", String(200), nullable=False),
    Column("type_id", Integer, ForeignKey("activity_types.id"), nullable=True),
    Column("subject", Text, nullable=False, default=""),
    Column("location", Text, nullable=False, default=""),
    Column("start", DateTime(timezone=True), nullable=True),
    Column("end", DateTime(timezone=True), nullable=True),
    Column("all_day", Boolean, nullable=False, default=False),
    Column("organizer", String(320), nullable=True),
    Column("attendees", JSON, nullable=False),               # [{"email", "name", "type"}]
    Column("invitation_id", Integer, ForeignKey("invitations.id", ondelete="SET NULL"),
           nullable=True, index=True),
    # Digest of the synchronised fields as last agreed with Outlook: a CRM edit changes them.
    Column("synced_hash", String(64), nullable=True),
    Column("synced_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("user_id", "graph_id"),
)

calendar_activity_contacts = Table(
    "calendar_activity_contacts", metadata,
    Column("activity_id", Integer, ForeignKey("calendar_activities.id", ondelete="CASCADE"),
           primary_key=True),
    Column("contact_id", Integer, ForeignKey("contacts.id", ondelete="CASCADE"),
           primary_key=True),
)

calendar_activity_companies = Table(
    "calendar_activity_companies", metadata,
    Column("activity_id", Integer, ForeignKey("calendar_activities.id", ondelete="CASCADE"),
           primary_key=True),
    Column("company_id", Integer, ForeignKey("companies.id", ondelete="CASCADE"),
           primary_key=True),
)

calendar_sync_state = Table(
    # Per user: the Graph user, the deltaLink of the window, the last pass's outcome.
    "calendar_sync_state", metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("graph_user_id", String(200), nullable=True),
    Column("delta_link", Text, nullable=True),
    Column("window", String(40), nullable=True),             # "30/365": days back/ahead
    Column("last_success", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("error_kind", String(40), nullable=True),
)

calendar_trace = Table(
    # What each pass did, conflicts included ("outlook wins: later change"), newest last.
    "calendar_trace", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("activity_id", Integer, nullable=True),
    Column("graph_id", String(500), nullable=True),
    Column("action", String(40), nullable=False),
    Column("detail", Text, nullable=False, default=""),
)

# --------------------------------------------------------------- operations (issue 14)
# One row (id 1): whether the instances sharing this database are suspended (SPEC 7). Every
# running instance reads it twice a second; `sink suspend` / `sink resume` write it.
operation_state = Table(
    "operation_state", metadata,
    Column("id", Integer, primary_key=True),
    Column("suspended", Boolean, nullable=False, default=False),
    Column("store", Boolean, nullable=False, default=False),    # suspend --store: keep mail
    Column("reason", Text, nullable=True),
    Column("since", DateTime(timezone=True), nullable=True),
)

# What each source (poller, eml directory) last managed: `sink status` and the metric
# sink_source_last_success_timestamp_seconds read it; the sources write it.
source_status = Table(
    "source_status", metadata,
    Column("name", String(200), primary_key=True),
    Column("last_success", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", DateTime(timezone=True), nullable=True),
)

# ------------------------------------------------------------------------------------ sources
# What a source in keep mode has taken (SPEC 2.2), keyed by the source's stable key
# (SourceConfig.key, a hash of kind/host/user/box/folders - not its position in the file).
# IMAP: one row per (folder, UIDVALIDITY, UID); a new UIDVALIDITY drops the folder's rows and
# the mail is fetched again, recognised as already stored by the box's sha256.
source_imap_uids = Table(
    "source_imap_uids", metadata,
    Column("source_key", String(32), primary_key=True),
    Column("folder", String(500), primary_key=True),
    Column("uidvalidity", BigInteger, primary_key=True),
    Column("uid", BigInteger, primary_key=True),
)

source_pop3_uidls = Table(
    "source_pop3_uidls", metadata,
    Column("source_key", String(32), primary_key=True),
    Column("uidl", String(70), primary_key=True),           # RFC 1939: 1 to 70 characters
)

# ------------------------------------------------------------------ what a message carries
# (SPEC 3; issue 17.) One row per attachment or inline part that is not the body, written in
# the message's transaction (sink.db.attachments). The content is not copied: it is decoded
# from the stored raw bytes on demand (sink.mail.attachments.part_bytes), found by ``part``.
# Activities and tickets reach a message's attachments through their message_id.
attachments = Table(
    "attachments", metadata,
    Column("id", Integer, primary_key=True),
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),              # 1, 2, ... in MIME order
    Column("part", String(400), nullable=False),              # IMAP part number, "2.1", "2/1"
    Column("name", String(255), nullable=False),
    Column("content_type", String(500), nullable=False),
    Column("size", Integer, nullable=False),                  # of the decoded content
    Column("sha256", String(64), nullable=False),
    Column("content_id", String(500), nullable=True),
    Column("inline", Boolean, nullable=False),
    Column("nested_subject", String(500), nullable=True),     # an attached message's subject
    Column("defect", String(200), nullable=True),             # e.g. an unreadable TNEF
    UniqueConstraint("message_id", "part"),
)

# [backup] directory (SPEC 3): when the message's copy was written there (NULL: not yet). The
# backup task finds its work by this index, so a restart or a full disk catches up later.
messages.append_column(Column("backed_up_at", DateTime(timezone=True), nullable=True))
Index("ix_messages_backed_up_at", messages.c.backed_up_at)


# --------------------------------------------------------------------------- bounces (issue 12)
# One row per failed address of a delivery report, hard or soft (SPEC 5 step 8): the CRM side
# sees repeated soft bounces here; only hard ones also flag (flag_changes, forbidden_addresses).
bounces = Table(
    "bounces", metadata,
    Column("id", Integer, primary_key=True),
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("email", String(320), nullable=False, index=True),
    Column("kind", String(4), nullable=False),              # hard | soft
    Column("status", String(16), nullable=True),            # enhanced status code, 5.1.1
    Column("diagnostic", Text, nullable=False, default=""),
    Column("created", DateTime(timezone=True), nullable=False),
)

# -------------------------------------------------------------------------------- help desk
# (issue 11: tickets, the stored spam list, threads; written by sink.executor)

# Replies name earlier messages by Message-ID (threads, ticket follow-ups); the loop guard
# counts a sender's recent messages to a box. Neither begins with the box: the lookups by box
# and sha256 or Message-ID must have one index that fits, statistics or not (migration 0011).
Index("ix_messages_message_id_box", messages.c.message_id, messages.c.box)
Index("ix_messages_sender_box_received_at", messages.c.sender, messages.c.box,
      messages.c.received_at)

counters = Table(
    # Numbers the sink assigns (tickets: 1, 2, 3 ... per database). The row is locked
    # (SELECT ... FOR UPDATE; SQLite's write lock) by whoever takes the next number, so every
    # instance sharing the database counts on the same row and no number is given twice.
    "counters", metadata,
    Column("name", String(40), primary_key=True),
    Column("value", Integer, nullable=False),
)

tickets = Table(
    "tickets", metadata,
    Column("id", Integer, primary_key=True),
    Column("number", Integer, nullable=False, unique=True),
    Column("box", String(320), nullable=False),
    Column("title", Text, nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("status", String(20), nullable=False, default="open"),
    Column("contact_email", String(320), nullable=True),
    Column("company_name", String(300), nullable=True),
    Column("rule", String(120), nullable=False),
    # The root Message-ID of the thread that created it: two messages of one new thread (at
    # once, in two instances) make one ticket, the second updates it.
    Column("thread", String(500), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("box", "thread"),
)

ticket_messages = Table(
    # Which messages created and updated a ticket (its history).
    "ticket_messages", metadata,
    Column("id", Integer, primary_key=True),
    Column("ticket_id", Integer, ForeignKey("tickets.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False,
           index=True),
    Column("action", String(10), nullable=False),           # created | updated
    Column("rule", String(120), nullable=False),
)

spam_list = Table(
    # The stored spam list (seed 002 "Mark as spam"), per box, beside the configured
    # spam_senders.
    "spam_list", metadata,
    Column("box", String(320), primary_key=True),
    Column("email", String(320), primary_key=True),
    Column("message_id", Integer, ForeignKey("messages.id", ondelete="SET NULL"), nullable=True,
           index=True),
    Column("added_at", DateTime(timezone=True), nullable=False),
)
