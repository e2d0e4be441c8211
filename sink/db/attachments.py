"""Attachment records (SPEC 3, "what a message carries"): written with the message, read by
``sink show`` and the ingest JSON. The content stays in ``raw_messages``: a record says where in
the raw bytes it is (``part``), :func:`sink.mail.attachments.part_bytes` decodes it from there.
"""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from sink.db import schema as t
from sink.db.fastpath import Fast
from sink.log import get_logger
from sink.mail.attachments import Listing, list_attachments

log = get_logger("sink.db.attachments")
_COLUMNS = ("message_id", "position", "part", "name", "content_type", "size", "sha256",
            "content_id", "inline", "nested_subject", "defect")
# compiled once, run on the DBAPI cursor like the message's own INSERTs (sink.db.fastpath);
# deferred to the batch's flush on PostgreSQL
_INSERT = Fast(insert(t.attachments), _COLUMNS, many=True)


def store_attachments(conn: Connection, message_id: int, raw: bytes,
                      listing: Listing | None = None) -> Listing:
    """The attachment records of ``raw`` for message ``message_id``, in the caller's
    transaction. Reading the parts never fails the message (what cannot be read is a defect).
    ``listing``: made beforehand, outside the transaction (:meth:`Intake.prepare`), so that a
    message of 12,000 parts does not hold the write lock while it is read."""
    if listing is None:
        listing = list_attachments(raw)
    if listing.defects:
        log.info("attachments.defects", id=message_id, defects=list(listing.defects[:10]))
    if listing.attachments:
        _INSERT.defer_many(conn, [
            {"message_id": message_id, "position": position, "part": a.part, "name": a.name,
             "content_type": a.content_type, "size": a.size, "sha256": a.sha256,
             "content_id": a.content_id, "inline": a.inline,
             "nested_subject": a.nested_subject, "defect": a.defect}
            for position, a in enumerate(listing.attachments, 1)])
    return listing


def attachments_of(conn: Connection, message_id: int) -> list[dict]:
    """The attachment records of one message, in MIME order."""
    a = t.attachments.c
    return [dict(row._mapping) for row in conn.execute(
        select(a.position, a.part, a.name, a.content_type, a.size, a.sha256, a.content_id,
               a.inline, a.nested_subject, a.defect)
        .where(a.message_id == message_id).order_by(a.position))]


def as_json(records: list[dict]) -> list[dict]:
    """The check/ingest JSON form: ``[{"name", "type", "size"}]``."""
    return [{"name": r["name"], "type": r["content_type"], "size": r["size"]} for r in records]
