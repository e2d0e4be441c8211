"""Issue 16, storage: what makes a message cheaper to store keeps every row and every promise
- the raw column's compression, statements deferred to one executemany per table per batch,
locks taken in one order across workers, the fast path around the DBAPI cursor."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from sink.config import parse_config
from sink.db import schema as t
from sink.intake import Envelope, Intake
from tests.support import make_mail

BOX = parse_config({"boxes": [{"address": "crm@firma.cz"}]}).boxes[0]
LMTP = Envelope("lmtp", "mta@firma.cz", ("crm@firma.cz",))


def test_raw_bytes_are_stored_with_lz4_on_postgresql(engine):
    """Migration 0010: new raw bytes are lz4-compressed on PostgreSQL, and read back exact."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only (SQLite has no column compression)")
    raw = make_mail(body="Dobrý den, " * 400)           # > 2 KB: PostgreSQL compresses it
    [delivery] = Intake(engine).deliver(raw, LMTP, [BOX])
    with engine.connect() as conn:
        method = conn.execute(text(
            "SELECT pg_column_compression(content) FROM raw_messages WHERE message_id = :id"),
            {"id": delivery.message_id}).scalar()
        stored = conn.execute(select(t.raw_messages.c.content).where(
            t.raw_messages.c.message_id == delivery.message_id)).scalar()
    assert method == "lz4"
    assert stored == raw
